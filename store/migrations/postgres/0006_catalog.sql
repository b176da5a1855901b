-- The catalog: what can be ordered, at what price, and how many units are left. Orders take
-- their prices and names from here and reserve stock in the transaction that inserts them
-- (a guarded UPDATE: stock never goes below zero); a cancellation puts the units back.
-- A product deleted while open orders hold it is
-- kept, `discontinued`: readable, not orderable.
CREATE TABLE products (
    sku          TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    price_paise  BIGINT  NOT NULL CHECK (price_paise > 0),
    stock        BIGINT  NOT NULL CHECK (stock >= 0),
    discontinued INTEGER NOT NULL DEFAULT 0,
    updated_at   BIGINT  NOT NULL
);

-- The lines of each order by SKU (the order's `items` JSON is what is shown): which open orders
-- hold a product, and what a cancellation gives back.
CREATE TABLE order_lines (
    order_id BIGINT NOT NULL REFERENCES orders (id),
    sku      TEXT   NOT NULL,
    qty      BIGINT NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, sku)
);
CREATE INDEX order_lines_by_sku ON order_lines (sku);

-- One-time facts about this database, e.g. that the demo catalog was seeded (once, on the
-- embedded mode's first start: deleting every product does not bring it back).
CREATE TABLE store_flags (
    name   TEXT   PRIMARY KEY,
    set_at BIGINT NOT NULL
);
