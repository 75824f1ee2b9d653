-- Scheduled or queued notifications withdrawn before their fan-out.
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('scheduled', 'accepted', 'fanned_out', 'completed', 'canceled'));
