SELECT device_id, customer_id, platform, app_id, app_version, locale, status, registered_at, updated_at
FROM devices
WHERE customer_id = $1
ORDER BY device_id
