-- One page of a customer's inbox, newest first, strictly below the cursor's position.
SELECT i.notification_id, i.position, n.title, n.body, n.data, n.category, n.priority,
       i.received_at, i.read_at
FROM inbox i
JOIN notifications n USING (notification_id)
WHERE i.customer_id = $1
  AND ($2::BIGINT IS NULL OR i.position < $2)
  AND (NOT $3 OR i.read_at IS NULL)
ORDER BY i.position DESC
LIMIT $4
