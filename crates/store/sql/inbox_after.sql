-- A customer's items newer than a position, oldest first (the live stream's catch-up).
-- (`inbox_items.sql` comes first.)
WHERE i.customer_id = $1 AND i.position > $2
ORDER BY i.position
LIMIT $3
