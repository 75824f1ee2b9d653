-- A customer's items newer than a position, oldest first (the live stream's catch-up).
SELECT i.notification_id, i.position, n.title, n.body, n.data, n.category, n.priority,
       i.received_at, i.read_at
FROM inbox i
JOIN notifications n USING (notification_id)
WHERE i.customer_id = $1 AND i.position > $2
ORDER BY i.position
LIMIT $3
