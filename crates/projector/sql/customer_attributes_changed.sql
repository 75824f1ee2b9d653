-- Every attribute as the customer system now holds it; the log's order is the system's order.
INSERT INTO customers (customer_id, commune, zone, contract, language, updated_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (customer_id) DO UPDATE
SET commune = excluded.commune, zone = excluded.zone, contract = excluded.contract,
    language = excluded.language, updated_at = excluded.updated_at
