UPDATE inbox SET read_at = $3
WHERE customer_id = $1 AND notification_id = $2 AND read_at IS NULL
