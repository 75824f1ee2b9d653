-- A broadcast (audience `everyone` or `category`) no longer writes an `inbox` row per customer.
-- Each of those rows cost an entry in `inbox_by_position`, which leads with the customer: a
-- broadcast's items landed on as many index pages as it had customers, and that insert was
-- half of what Postgres spent projecting a broadcast. A broadcast's items are now found where
-- they are read, from its `deliveries` rows: `inbox_items` below gives every customer's inbox,
-- whatever the audience. See docs/decisions.md, "A broadcast's inbox items are read from its
-- deliveries".

-- Whether the notification went to a broadcast audience. The audience never changes once
-- stored, so neither does this.
ALTER TABLE notifications
    ADD COLUMN broadcast BOOLEAN NOT NULL
    GENERATED ALWAYS AS (audience->>'kind' IN ('everyone', 'category')) STORED;
CREATE INDEX notifications_broadcasts ON notifications (notification_id) WHERE broadcast;

-- For an outcome of a broadcast known as such when the outcome was projected: the stream
-- sequence and time of the first outcome for the notification on the device, never changed
-- by a later outcome. The customer's item is at the first of their devices' positions. Other
-- rows leave both empty: their customers' items are rows of `inbox`.
ALTER TABLE deliveries
    ADD COLUMN position    BIGINT,
    ADD COLUMN received_at TIMESTAMPTZ;
-- A customer's item of one broadcast, found by notification then customer: a broadcast's
-- entries sit side by side here, as in the key.
CREATE INDEX deliveries_broadcast_items ON deliveries (notification_id, customer_id, position)
    WHERE position IS NOT NULL;

-- When customers read broadcast items (other items keep `read_at` on their `inbox` row).
CREATE TABLE inbox_reads (
    customer_id     TEXT NOT NULL,
    notification_id UUID NOT NULL,
    read_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, notification_id)
);

-- Broadcast items stored as `inbox` rows before this migration move to the new form: every
-- device row of the customer gets the item's position and time (the first of them is the
-- item's), the read marks go to `inbox_reads`, and the rows go.
UPDATE deliveries d
SET position = i.position, received_at = i.received_at
FROM inbox i
JOIN notifications n ON n.notification_id = i.notification_id AND n.broadcast
WHERE d.notification_id = i.notification_id AND d.customer_id = i.customer_id;
INSERT INTO inbox_reads (customer_id, notification_id, read_at)
SELECT i.customer_id, i.notification_id, i.read_at
FROM inbox i
JOIN notifications n ON n.notification_id = i.notification_id AND n.broadcast
WHERE i.read_at IS NOT NULL;
DELETE FROM inbox i
USING notifications n
WHERE n.notification_id = i.notification_id AND n.broadcast;

-- Each customer's items of broadcasts: the first outcome on any of their devices. An item that
-- is also an `inbox` row (an outcome projected before its notification was known as a
-- broadcast) is that row.
CREATE VIEW inbox_broadcast_items AS
SELECT f.customer_id, f.notification_id, f.position, f.received_at, r.read_at
FROM (
    SELECT DISTINCT ON (d.notification_id, d.customer_id)
           d.customer_id, d.notification_id, d.position, d.received_at
    FROM notifications n
    JOIN deliveries d ON d.notification_id = n.notification_id
    WHERE n.broadcast AND d.position IS NOT NULL AND d.customer_id IS NOT NULL
    ORDER BY d.notification_id, d.customer_id, d.position
) f
LEFT JOIN inbox_reads r
       ON r.customer_id = f.customer_id AND r.notification_id = f.notification_id
WHERE NOT EXISTS (SELECT 1 FROM inbox i
                  WHERE i.notification_id = f.notification_id AND i.customer_id = f.customer_id);

-- Every customer's inbox: one item per notification that went to one of their devices,
-- whatever became of the push.
CREATE VIEW inbox_items AS
SELECT customer_id, notification_id, position, received_at, read_at FROM inbox
UNION ALL
SELECT customer_id, notification_id, position, received_at, read_at FROM inbox_broadcast_items;
