-- Scheduled sends: a row from `notification.scheduled` until `notification.accepted` at send_at.
ALTER TABLE notifications ADD COLUMN send_at TIMESTAMPTZ;
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('scheduled', 'accepted', 'fanned_out', 'completed'));
