-- Items up to the position the customer had seen; later ones stay unread. `inbox` rows keep
-- their read mark; broadcast items get theirs in `inbox_reads`.
WITH row_items AS (
    UPDATE inbox SET read_at = $3
    WHERE customer_id = $1 AND position <= $2 AND read_at IS NULL
)
INSERT INTO inbox_reads (customer_id, notification_id, read_at)
SELECT customer_id, notification_id, $3
FROM inbox_broadcast_items
WHERE customer_id = $1 AND position <= $2 AND read_at IS NULL
