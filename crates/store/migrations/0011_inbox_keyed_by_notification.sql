-- The inbox's key led with the customer, like `inbox_by_position`: a broadcast's items landed
-- all over both indexes, one leaf page per customer, and the items' insert was the projector's
-- costliest statement. Keyed by notification first, a broadcast's items sit side by side in the
-- key (notification ids grow with time), and only `inbox_by_position` is written per customer.
-- Lookups of one item give both columns, so they use the key either way; a customer's items are
-- found through `inbox_by_position`.
ALTER TABLE inbox DROP CONSTRAINT inbox_pkey;
ALTER TABLE inbox ADD PRIMARY KEY (notification_id, customer_id);
