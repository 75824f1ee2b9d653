-- The customers' devices first (index devices_active_by_customer), then the page: walking the
-- primary key in device order and filtering would read the whole registry for a short list.
WITH theirs AS MATERIALIZED (
    SELECT device_id, customer_id, token, platform, app_id
    FROM devices
    WHERE status = 'active' AND customer_id = ANY($1)
)
SELECT device_id, customer_id, token, platform, app_id
FROM theirs
WHERE device_id > $2
ORDER BY device_id
LIMIT $3
