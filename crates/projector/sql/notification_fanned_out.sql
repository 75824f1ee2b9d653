-- Outcomes may already have been counted (jobs are sent while the fan-out is still running).
UPDATE notifications
SET targeted      = $2,
    fanned_out_at = $3,
    status        = CASE WHEN sent + failed + invalid + expired >= $2 THEN 'completed' ELSE 'fanned_out' END,
    completed_at  = CASE WHEN sent + failed + invalid + expired >= $2 THEN $3 ELSE NULL END
WHERE notification_id = $1 AND targeted IS NULL
