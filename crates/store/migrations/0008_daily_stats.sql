-- Delivery outcomes per UTC day, priority and outcome (succeeded, failed, invalid, expired):
-- what the operators' daily report and the capacity plan read. Kept exact with the
-- deliveries table: an outcome that replaces a failure moves its count from the failure's day.
CREATE TABLE daily_stats (
    day        DATE   NOT NULL,
    priority   TEXT   NOT NULL,
    outcome    TEXT   NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'invalid', 'expired')),
    deliveries BIGINT NOT NULL,
    PRIMARY KEY (day, priority, outcome)
);

-- What the log has already produced.
INSERT INTO daily_stats (day, priority, outcome, deliveries)
SELECT (d.occurred_at AT TIME ZONE 'UTC')::date,
       n.priority,
       CASE WHEN d.outcome = 'failed' AND d.reason = 'invalid_token' THEN 'invalid' ELSE d.outcome END,
       count(*)
FROM deliveries d
JOIN notifications n USING (notification_id)
GROUP BY 1, 2, 3;
