-- Customers' category choices (`preferences.changed`). A missing row means the category's
-- default: billing, outage and prepaid are received unless opted out, marketing only after
-- opting in.
CREATE TABLE preferences (
    customer_id TEXT NOT NULL,
    category    TEXT NOT NULL,
    opted_in    BOOLEAN NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (customer_id, category)
);

-- What a notification is about, when it says.
ALTER TABLE notifications ADD COLUMN category TEXT;

-- A topic or condition notification has one delivery row, device `~topic`, with no customer:
-- FCM expands it.
ALTER TABLE deliveries ALTER COLUMN customer_id DROP NOT NULL;
