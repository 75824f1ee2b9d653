-- A token belongs to one device: registered again (by another customer, or under another
-- device id), it moves, and the device that held it before no longer receives its pushes.
WITH moved AS (
    DELETE FROM devices WHERE token = $3 AND device_id <> $1
)
INSERT INTO devices (device_id, customer_id, token, platform, app_id, status, registered_at, updated_at, app_version, locale)
VALUES ($1, $2, $3, $4, $5, 'active', $6, $6, $7, $8)
ON CONFLICT (device_id) DO UPDATE
SET customer_id = EXCLUDED.customer_id,
    token       = EXCLUDED.token,
    platform    = EXCLUDED.platform,
    app_id      = EXCLUDED.app_id,
    app_version = EXCLUDED.app_version,
    locale      = EXCLUDED.locale,
    status      = 'active',
    updated_at  = EXCLUDED.updated_at
