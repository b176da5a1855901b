-- Order chat (issue #14): the messages of each order, in the order they were stored (their id),
-- and how far each member has read. A message is inserted with its `chat.message` outbox row
-- in one transaction. (sender, client_msg_id) is unique: a retry of a send whose answer was
-- lost finds the first message instead of storing a second.
CREATE TABLE chat_messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id      BIGINT  NOT NULL REFERENCES orders (id),
    sender        TEXT    NOT NULL,
    role          TEXT    NOT NULL, -- customer, partner or admin (support)
    client_msg_id TEXT    NOT NULL,
    text          TEXT    NOT NULL, -- NFC, trimmed, 1 to 2,000 characters
    sent_at       BIGINT  NOT NULL,
    UNIQUE (sender, client_msg_id)
);
CREATE INDEX chat_messages_by_order ON chat_messages (order_id, id);

-- The highest message each member marked read, per order (only ever moves up).
CREATE TABLE chat_reads (
    order_id   BIGINT NOT NULL REFERENCES orders (id),
    reader     TEXT   NOT NULL,
    message_id BIGINT NOT NULL,
    read_at    BIGINT NOT NULL,
    PRIMARY KEY (order_id, reader)
);
