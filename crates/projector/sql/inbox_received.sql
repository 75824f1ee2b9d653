-- The first outcome of a notification on one of the customer's devices puts it in the inbox.
INSERT INTO inbox (customer_id, notification_id, position, received_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (customer_id, notification_id) DO NOTHING
