-- Order chat, second step (issue #14):
-- - a `client_msg_id` is unique per order and sender, not per sender across every order: the
--   same client may number each order's messages from 1, and reusing an id in another order
--   is a new message there, not a conflict;
-- - `room_offset`: the offset the message's `chat.message` event was given in the order's room
--   when the outbox relay first published it (NULL until then), so a send's reply — and every
--   retry of it — carries the event's offset.
ALTER TABLE chat_messages DROP CONSTRAINT chat_messages_sender_client_msg_id_key;
ALTER TABLE chat_messages ADD CONSTRAINT chat_messages_order_sender_client_msg_id_key
    UNIQUE (order_id, sender, client_msg_id);
ALTER TABLE chat_messages ADD COLUMN room_offset BIGINT;
