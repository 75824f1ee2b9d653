-- $2: the category whose opt-outs apply (NULL: none); $3: its default for customers who never chose.
-- A device without a locale reads its customer's language from the customer system.
SELECT d.device_id, d.customer_id, d.token, d.platform, d.app_id, coalesce(d.locale,
       (SELECT c.language FROM customers c WHERE c.customer_id = d.customer_id)) AS locale
FROM devices d
-- $4: the device's customer; NULL only in commands accepted before devices belonged to their
-- customer, which reach every device of that id.
WHERE d.status = 'active' AND d.device_id = $1 AND ($4::text IS NULL OR d.customer_id = $4)
  AND ($2::text IS NULL OR coalesce(
        (SELECT p.opted_in FROM preferences p
         WHERE p.customer_id = d.customer_id AND p.category = $2), $3))
