-- The item is an `inbox` row, or a broadcast's item (its read mark in `inbox_reads`); either
-- way only once it is in the inbox, and the first read counts.
WITH row_item AS (
    UPDATE inbox SET read_at = $3
    WHERE customer_id = $1 AND notification_id = $2 AND read_at IS NULL
)
INSERT INTO inbox_reads (customer_id, notification_id, read_at)
SELECT customer_id, notification_id, $3
FROM inbox_broadcast_items
WHERE customer_id = $1 AND notification_id = $2 AND read_at IS NULL
