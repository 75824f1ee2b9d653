-- Pushes dropped because their notification's TTL passed before they could be sent.
ALTER TABLE notifications ADD COLUMN expired BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_outcome_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_outcome_check
    CHECK (outcome IN ('succeeded', 'failed', 'expired'));
