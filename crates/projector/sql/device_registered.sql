INSERT INTO devices (device_id, customer_id, token, platform, app_id, status, registered_at, updated_at)
VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)
ON CONFLICT (device_id) DO UPDATE
SET customer_id = EXCLUDED.customer_id,
    token       = EXCLUDED.token,
    platform    = EXCLUDED.platform,
    app_id      = EXCLUDED.app_id,
    status      = 'active',
    updated_at  = EXCLUDED.updated_at
