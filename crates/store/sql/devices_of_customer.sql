SELECT device_id, customer_id, platform, app_id, status, registered_at, updated_at
FROM devices
WHERE customer_id = $1
ORDER BY device_id
