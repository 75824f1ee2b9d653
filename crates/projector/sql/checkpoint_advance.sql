-- Compare-and-set: succeeds only if nobody else moved the checkpoint since we read it.
INSERT INTO projection_checkpoints AS c (projection, last_sequence, updated_at)
VALUES ($1, $3, now())
ON CONFLICT (projection) DO UPDATE
SET last_sequence = EXCLUDED.last_sequence, updated_at = now()
WHERE c.last_sequence = $2
