-- Idempotency keys scoped by caller (sub AND role) and route, not by sub alone: an admin
-- token whose sub happens to equal a customer's id must not replay that customer's answers.
CREATE TABLE idempotency_keys_scoped (
    sub         TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    route       TEXT    NOT NULL, -- the route template, e.g. 'POST /api/orders/{id}/payment'
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL, -- what was asked: "order_id:amount"
    status      INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (sub, role, route, key)
);

-- Every key stored so far answered a payment; its role is the payer's relation to the order
-- (only the order's customer and admins could pay).
INSERT INTO idempotency_keys_scoped (sub, role, route, key, fingerprint, status, body, created_at)
SELECT k.actor,
       CASE WHEN o.customer = k.actor THEN 'customer' ELSE 'admin' END,
       'POST /api/orders/{id}/payment',
       k.key, k.fingerprint, k.status, k.body, k.created_at
FROM idempotency_keys k
JOIN payments p ON p.payer = k.actor AND p.idempotency_key = k.key
JOIN orders o ON o.id = p.order_id;

DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_scoped RENAME TO idempotency_keys;
