-- One final outcome per notification and device. A repeated event cannot count twice: the
-- counters move only when the row is new, or when a later outcome replaces a failure (a job
-- retried from the DLQ that then succeeded or expired); the counters then move by the
-- difference, so the totals stay exact. daily_stats moves the same way ($10 is the priority).
WITH previous AS (
    SELECT outcome, reason, occurred_at
    FROM deliveries
    WHERE notification_id = $1 AND device_id = $2
), written AS (
    INSERT INTO deliveries (notification_id, device_id, customer_id, outcome, reason, error_code,
                            attempts, fcm_message_id, occurred_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (notification_id, device_id) DO UPDATE
    SET outcome        = excluded.outcome,
        reason         = excluded.reason,
        error_code     = excluded.error_code,
        attempts       = excluded.attempts,
        fcm_message_id = excluded.fcm_message_id,
        occurred_at    = excluded.occurred_at
    WHERE deliveries.outcome = 'failed'
      AND deliveries.reason IS DISTINCT FROM 'invalid_token'
      AND excluded.outcome <> 'failed'
    RETURNING outcome, reason, occurred_at
), changes AS (
    SELECT outcome, reason, occurred_at, 1 AS sign FROM written
    UNION ALL
    SELECT outcome, reason, occurred_at, -1 AS sign FROM previous WHERE EXISTS (SELECT 1 FROM written)
), daily AS (
    INSERT INTO daily_stats (day, priority, outcome, deliveries)
    SELECT (occurred_at AT TIME ZONE 'UTC')::date,
           $10,
           CASE WHEN outcome = 'failed' AND reason = 'invalid_token' THEN 'invalid' ELSE outcome END,
           sum(sign)
    FROM changes
    GROUP BY 1, 3
    ON CONFLICT (day, priority, outcome) DO UPDATE
    SET deliveries = daily_stats.deliveries + excluded.deliveries
), counted AS (
    SELECT coalesce(sum(sign) FILTER (WHERE outcome = 'succeeded'), 0)                                      AS sent,
           coalesce(sum(sign) FILTER (WHERE outcome = 'failed' AND reason IS DISTINCT FROM 'invalid_token'), 0) AS failed,
           coalesce(sum(sign) FILTER (WHERE outcome = 'failed' AND reason = 'invalid_token'), 0)             AS invalid,
           coalesce(sum(sign) FILTER (WHERE outcome = 'expired'), 0)                                        AS expired,
           (SELECT count(*) FROM written)                                                                   AS written
    FROM changes
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
WHERE n.notification_id = $1 AND c.written > 0
