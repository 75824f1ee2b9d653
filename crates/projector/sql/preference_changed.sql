INSERT INTO preferences (customer_id, category, opted_in, updated_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (customer_id, category) DO UPDATE
SET opted_in = excluded.opted_in, updated_at = excluded.updated_at
