-- Items up to the position the customer had seen; later ones stay unread.
UPDATE inbox SET read_at = $3
WHERE customer_id = $1 AND position <= $2 AND read_at IS NULL
