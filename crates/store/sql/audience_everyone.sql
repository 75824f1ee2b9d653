-- Every active device, or (category audiences and categorised notifications) those of customers
-- opted in. Pages follow the key (device_id, customer_id) after ($1, $5), the last device and its
-- customer (a row comparison, so the scan starts there). $3: the category whose opt-outs apply
-- (NULL: none); $4: its default for customers who never chose.
-- A device without a locale reads its customer's language from the customer system.
SELECT d.device_id, d.customer_id, d.token, d.platform, d.app_id, coalesce(d.locale,
       (SELECT c.language FROM customers c WHERE c.customer_id = d.customer_id)) AS locale
FROM devices d
WHERE d.status = 'active'
  AND (d.device_id, d.customer_id) > ($1, $5)
  AND ($3::text IS NULL OR coalesce(
        (SELECT p.opted_in FROM preferences p
         WHERE p.customer_id = d.customer_id AND p.category = $3), $4))
ORDER BY d.device_id, d.customer_id
LIMIT $2
