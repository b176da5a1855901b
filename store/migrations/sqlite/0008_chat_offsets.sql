-- Order chat, second step (issue #14):
-- - a `client_msg_id` is unique per order and sender, not per sender across every order: the
--   same client may number each order's messages from 1, and reusing an id in another order
--   is a new message there, not a conflict;
-- - `room_offset`: the offset the message's `chat.message` event was given in the order's room
--   when the outbox relay first published it (NULL until then), so a send's reply — and every
--   retry of it — carries the event's offset.
-- SQLite cannot drop a table's UNIQUE constraint: the table is rebuilt (ids kept; nothing
-- references chat_messages).
CREATE TABLE chat_messages_0008 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id      BIGINT  NOT NULL REFERENCES orders (id),
    sender        TEXT    NOT NULL,
    role          TEXT    NOT NULL, -- customer, partner or admin (support)
    client_msg_id TEXT    NOT NULL,
    text          TEXT    NOT NULL, -- NFC, trimmed, 1 to 2,000 characters
    sent_at       BIGINT  NOT NULL,
    room_offset   BIGINT,           -- the chat.message event's room offset, once published
    UNIQUE (order_id, sender, client_msg_id)
);
INSERT INTO chat_messages_0008 (id, order_id, sender, role, client_msg_id, text, sent_at)
SELECT id, order_id, sender, role, client_msg_id, text, sent_at FROM chat_messages;
DROP TABLE chat_messages;
ALTER TABLE chat_messages_0008 RENAME TO chat_messages;
CREATE INDEX chat_messages_by_order ON chat_messages (order_id, id);
