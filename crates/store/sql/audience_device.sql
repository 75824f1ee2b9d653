-- $2: the category whose opt-outs apply (NULL: none); $3: its default for customers who never chose.
SELECT d.device_id, d.customer_id, d.token, d.platform, d.app_id
FROM devices d
WHERE d.status = 'active' AND d.device_id = $1
  AND ($2::text IS NULL OR coalesce(
        (SELECT p.opted_in FROM preferences p
         WHERE p.customer_id = d.customer_id AND p.category = $2), $3))
