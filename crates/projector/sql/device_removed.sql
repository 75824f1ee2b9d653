-- Only the owner's removal counts: a device that has moved to another customer stays.
DELETE FROM devices WHERE device_id = $1 AND customer_id = $2
