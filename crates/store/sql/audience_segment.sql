-- The active devices of the customers whose attributes match every criterion given (NULL: any).
-- Pages follow (device_id, customer_id) after ($5, $9), the last device and its customer.
-- $1 commune, $2 zone, $3 contract, $4 language; $6: the limit; $7: the category whose opt-outs
-- apply (NULL: none); $8: its default for customers who never chose.
-- A device without a locale reads its customer's language from the customer system.
SELECT d.device_id, d.customer_id, d.token, d.platform, d.app_id, coalesce(d.locale, c.language) AS locale
FROM customers c
JOIN devices d ON d.customer_id = c.customer_id
WHERE d.status = 'active'
  AND ($1::text IS NULL OR c.commune = $1)
  AND ($2::text IS NULL OR c.zone = $2)
  AND ($3::text IS NULL OR c.contract = $3)
  AND ($4::text IS NULL OR c.language = $4)
  AND (d.device_id, d.customer_id) > ($5, $9)
  AND ($7::text IS NULL OR coalesce(
        (SELECT p.opted_in FROM preferences p
         WHERE p.customer_id = d.customer_id AND p.category = $7), $8))
ORDER BY d.device_id, d.customer_id
LIMIT $6
