SELECT category, opted_in
FROM preferences
WHERE customer_id = $1
