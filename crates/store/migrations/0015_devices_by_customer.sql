-- A customer's devices, active or not: the language an inbox reads in comes from the most
-- recently updated device with a locale. Without it each inbox read scanned every device
-- (devices are keyed by device id first), and a broadcast to ten thousand open live streams
-- took seconds per thousand.
CREATE INDEX devices_by_customer ON devices (customer_id, updated_at DESC);
