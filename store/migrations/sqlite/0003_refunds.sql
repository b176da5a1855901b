-- Refunds: cancelling a paid order refunds its payment, in the same transaction as the status
-- change. One refund per payment at most (UNIQUE), so a refund can never be counted twice.
CREATE TABLE refunds (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id   BIGINT NOT NULL UNIQUE REFERENCES payments (id),
    order_id     BIGINT NOT NULL REFERENCES orders (id),
    amount_paise BIGINT NOT NULL CHECK (amount_paise > 0),
    created_at   BIGINT NOT NULL
);

-- Whether the order's payment was refunded (shown with the order; `paid` stays true).
ALTER TABLE orders ADD COLUMN refunded INTEGER NOT NULL DEFAULT 0;
