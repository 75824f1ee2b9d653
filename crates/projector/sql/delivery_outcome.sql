-- One final outcome per notification and device: the counters move only when the outcome row is
-- new, so a repeated event cannot count twice.
WITH inserted AS (
    INSERT INTO deliveries (notification_id, device_id, customer_id, outcome, reason, error_code,
                            attempts, fcm_message_id, occurred_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (notification_id, device_id) DO NOTHING
    RETURNING outcome, reason
), counted AS (
    SELECT count(*) FILTER (WHERE outcome = 'succeeded')                                      AS sent,
           count(*) FILTER (WHERE outcome = 'failed' AND reason IS DISTINCT FROM 'invalid_token') AS failed,
           count(*) FILTER (WHERE outcome = 'failed' AND reason = 'invalid_token')             AS invalid,
           count(*) FILTER (WHERE outcome = 'expired')                                        AS expired
    FROM inserted
)
UPDATE notifications n
SET sent    = n.sent + c.sent,
    failed  = n.failed + c.failed,
    invalid = n.invalid + c.invalid,
    expired = n.expired + c.expired,
    status  = CASE WHEN n.targeted IS NOT NULL
                    AND n.sent + n.failed + n.invalid + n.expired
                        + c.sent + c.failed + c.invalid + c.expired >= n.targeted
                   THEN 'completed' ELSE n.status END,
    completed_at = CASE WHEN n.targeted IS NOT NULL
                         AND n.sent + n.failed + n.invalid + n.expired
                             + c.sent + c.failed + c.invalid + c.expired >= n.targeted
                        THEN coalesce(n.completed_at, $9) ELSE n.completed_at END
FROM counted c
WHERE n.notification_id = $1 AND c.sent + c.failed + c.invalid + c.expired > 0
