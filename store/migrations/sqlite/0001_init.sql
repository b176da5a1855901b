-- Switchyard schema, version 1.
-- Portable on purpose: integer ids, TEXT for JSON, integer milliseconds for time, integer paise
-- for money, so the same statements run on PostgreSQL with only the id column type changed.

CREATE TABLE orders (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    customer      TEXT    NOT NULL,
    partner       TEXT,
    status        TEXT    NOT NULL,
    items         TEXT    NOT NULL, -- JSON array of {sku, qty, unit_price_paise}
    address       TEXT    NOT NULL,
    total_paise   BIGINT  NOT NULL CHECK (total_paise >= 0),
    paid          INTEGER NOT NULL DEFAULT 0,
    last_location TEXT,             -- JSON {lat, lng, heading, speed, ts, received_at}
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);
CREATE INDEX orders_by_customer ON orders (customer, id);
CREATE INDEX orders_by_partner ON orders (partner, id);

CREATE TABLE payments (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id        BIGINT NOT NULL UNIQUE REFERENCES orders (id),
    amount_paise    BIGINT NOT NULL CHECK (amount_paise >= 0),
    payer           TEXT   NOT NULL,
    idempotency_key TEXT   NOT NULL,
    created_at      BIGINT NOT NULL
);

-- Completed payment requests by (caller, Idempotency-Key): a repeat gets the stored answer.
CREATE TABLE idempotency_keys (
    actor       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL, -- what was asked: "order_id:amount"
    status      INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (actor, key)
);

-- One row: running totals, updated in the same transaction as each payment.
CREATE TABLE revenue (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    total_paise BIGINT  NOT NULL,
    paid_orders BIGINT  NOT NULL
);
INSERT INTO revenue (id, total_paise, paid_orders) VALUES (1, 0, 0);

-- Transactional outbox: events written with the change that caused them, published in id order
-- by the relay, deleted once the bus accepted them.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    room       TEXT   NOT NULL,
    event      TEXT   NOT NULL,
    data       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
