-- One page of a customer's inbox, newest first, strictly below the cursor's position.
-- (`inbox_items.sql` comes first.)
WHERE i.customer_id = $1
  AND ($2::BIGINT IS NULL OR i.position < $2)
  AND (NOT $3 OR i.read_at IS NULL)
ORDER BY i.position DESC
LIMIT $4
