-- A device id is the app's name for a phone within one customer: two customers may both have a
-- `phone-1`, and registering one never touches the other's. Devices are keyed by
-- (device_id, customer_id): fan-out walks the registry in that order (a fan-out recorded by an
-- earlier version, after a device id alone, resumes exactly where it was), and a customer's
-- devices are found through devices_active_by_customer.
ALTER TABLE devices DROP CONSTRAINT devices_pkey;
ALTER TABLE devices ADD PRIMARY KEY (device_id, customer_id);

-- One outcome per notification and device of a customer. Topic rows (device `~topic`) have no
-- customer; NULLS NOT DISTINCT keeps them one per notification.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
CREATE UNIQUE INDEX deliveries_key ON deliveries (notification_id, device_id, customer_id)
    NULLS NOT DISTINCT;

-- A registration touches only the caller's device; a token still moves to whoever registers it
-- last (one phone, a new login), so the device that held it before loses it, whoever owns it.
CREATE OR REPLACE FUNCTION xibaar_devices_registered(
    device_ids   TEXT[],
    customer_ids TEXT[],
    tokens       TEXT[],
    platforms    TEXT[],
    app_ids      TEXT[],
    ats          TIMESTAMPTZ[],
    app_versions TEXT[],
    locales      TEXT[]
) RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(device_ids, 1), 0) LOOP
        DELETE FROM devices
        WHERE token = tokens[i]
          AND (device_id, customer_id) IS DISTINCT FROM (device_ids[i], customer_ids[i]);
        INSERT INTO devices (device_id, customer_id, token, platform, app_id, status,
                             registered_at, updated_at, app_version, locale)
        VALUES (device_ids[i], customer_ids[i], tokens[i], platforms[i], app_ids[i], 'active',
                ats[i], ats[i], app_versions[i], locales[i])
        ON CONFLICT (device_id, customer_id) DO UPDATE
        SET token       = EXCLUDED.token,
            platform    = EXCLUDED.platform,
            app_id      = EXCLUDED.app_id,
            app_version = EXCLUDED.app_version,
            locale      = EXCLUDED.locale,
            status      = 'active',
            updated_at  = EXCLUDED.updated_at;
    END LOOP;
END
$$;
