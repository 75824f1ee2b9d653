SELECT device_id, customer_id, token, platform, app_id
FROM devices
WHERE status = 'active' AND device_id = $1
