-- The customers' devices first (index devices_active_by_customer), then the page: walking the
-- primary key in device order and filtering would read the whole registry for a short list.
-- Pages follow (device_id, customer_id) after ($2, $6), the last device and its customer.
-- $4: the category whose opt-outs apply (NULL: none); $5: its default for customers who never chose.
WITH theirs AS MATERIALIZED (
    -- A device without a locale reads its customer's language from the customer system.
SELECT d.device_id, d.customer_id, d.token, d.platform, d.app_id, coalesce(d.locale,
       (SELECT c.language FROM customers c WHERE c.customer_id = d.customer_id)) AS locale
    FROM devices d
    WHERE d.status = 'active' AND d.customer_id = ANY($1)
      AND ($4::text IS NULL OR coalesce(
            (SELECT p.opted_in FROM preferences p
             WHERE p.customer_id = d.customer_id AND p.category = $4), $5))
)
SELECT device_id, customer_id, token, platform, app_id, locale
FROM theirs
WHERE (device_id, customer_id) > ($2, $6)
ORDER BY device_id, customer_id
LIMIT $3
