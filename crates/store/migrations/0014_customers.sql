-- What the customer system holds of each customer (from `customer.attributes_changed`), for
-- segment audiences and the customer's language.
CREATE TABLE customers (
    customer_id TEXT PRIMARY KEY,
    commune     TEXT,
    zone        TEXT,
    contract    TEXT CHECK (contract IN ('prepaid', 'postpaid')),
    language    TEXT,
    updated_at  TIMESTAMPTZ NOT NULL
);
-- A segment names one or more attributes; communes and zones are the usual ones.
CREATE INDEX customers_by_commune ON customers (commune);
CREATE INDEX customers_by_zone ON customers (zone);
