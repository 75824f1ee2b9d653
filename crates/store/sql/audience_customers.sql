SELECT device_id, customer_id, token, platform, app_id
FROM devices
WHERE status = 'active' AND customer_id = ANY($1) AND device_id > $2
ORDER BY device_id
LIMIT $3
