-- Only the token FCM refused: a device that registered a new token since stays active.
UPDATE devices
SET status = 'invalidated', updated_at = $3
WHERE device_id = $1 AND token = $2
