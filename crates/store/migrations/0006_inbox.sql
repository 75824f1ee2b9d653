-- The customer's inbox: one row per notification that went to one of their devices, whatever
-- became of the push, with the content kept on the notification.
ALTER TABLE notifications
    ADD COLUMN body TEXT NOT NULL DEFAULT '',
    ADD COLUMN data JSONB NOT NULL DEFAULT '{}'::jsonb;

CREATE TABLE inbox (
    customer_id     TEXT NOT NULL,
    notification_id UUID NOT NULL,
    -- Stream sequence of the event that put the item here: the order (newest first), the
    -- pagination cursor and the live stream's event id. New items always sort above old ones.
    position        BIGINT NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL,
    read_at         TIMESTAMPTZ,
    PRIMARY KEY (customer_id, notification_id)
);
CREATE INDEX inbox_by_position ON inbox (customer_id, position DESC);
CREATE INDEX inbox_unread ON inbox (customer_id, position DESC) WHERE read_at IS NULL;
