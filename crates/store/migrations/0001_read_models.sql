-- Read models: folds of XIBAAR_EVENTS. Every table can be rebuilt from sequence 1.

CREATE TABLE projection_checkpoints (
    projection    TEXT PRIMARY KEY,
    -- Stream sequence of the last event applied; written in the same transaction as the rows.
    last_sequence BIGINT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY,
    customer_id   TEXT NOT NULL,
    token         TEXT NOT NULL,
    platform      TEXT NOT NULL,
    app_id        TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'invalidated')),
    registered_at TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX devices_active_by_customer ON devices (customer_id, device_id) WHERE status = 'active';

CREATE TABLE notifications (
    notification_id UUID PRIMARY KEY,
    priority        TEXT NOT NULL,
    title           TEXT NOT NULL,
    audience        JSONB NOT NULL,
    requested_by    TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('accepted', 'fanned_out', 'completed')),
    -- Unknown until the fan-out has finished.
    targeted        BIGINT,
    sent            BIGINT NOT NULL DEFAULT 0,
    failed          BIGINT NOT NULL DEFAULT 0,
    invalid         BIGINT NOT NULL DEFAULT 0,
    accepted_at     TIMESTAMPTZ NOT NULL,
    fanned_out_at   TIMESTAMPTZ,
    completed_at    TIMESTAMPTZ
);

CREATE TABLE deliveries (
    notification_id UUID NOT NULL,
    device_id       TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    reason          TEXT,
    error_code      TEXT,
    attempts        INT NOT NULL,
    fcm_message_id  TEXT,
    occurred_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (notification_id, device_id)
);
