-- Device registrations, applied one after the other in one call (the projector passes a run of
-- them, or a single one): a token belongs to one device, so registering it again (by another
-- customer, or under another device id) moves it, and the device that held it before no longer
-- receives its pushes. (A set-based statement would see every registration's delete before any
-- upsert, which differs when one device of the run takes another's old token.) Tables are found
-- through the caller's search_path, so a rebuild's shadow schema works alike.
CREATE FUNCTION xibaar_devices_registered(
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
        DELETE FROM devices WHERE token = tokens[i] AND device_id <> device_ids[i];
        INSERT INTO devices (device_id, customer_id, token, platform, app_id, status,
                             registered_at, updated_at, app_version, locale)
        VALUES (device_ids[i], customer_ids[i], tokens[i], platforms[i], app_ids[i], 'active',
                ats[i], ats[i], app_versions[i], locales[i])
        ON CONFLICT (device_id) DO UPDATE
        SET customer_id = EXCLUDED.customer_id,
            token       = EXCLUDED.token,
            platform    = EXCLUDED.platform,
            app_id      = EXCLUDED.app_id,
            app_version = EXCLUDED.app_version,
            locale      = EXCLUDED.locale,
            status      = 'active',
            updated_at  = EXCLUDED.updated_at;
    END LOOP;
END
$$;
