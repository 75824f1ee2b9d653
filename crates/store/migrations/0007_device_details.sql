-- What the app reports about itself at registration.
ALTER TABLE devices
    ADD COLUMN app_version TEXT,
    ADD COLUMN locale      TEXT;
CREATE INDEX devices_by_token ON devices (token);
