-- Only the token FCM refused: a device that registered a new token since stays active.
UPDATE devices
SET status = 'invalidated', updated_at = $3
-- Events recorded before devices belonged to their customer have none ($4 NULL): the token
-- names the device then, as a token is held by one device at a time.
WHERE device_id = $1 AND token = $2 AND ($4::text IS NULL OR customer_id = $4)
