//! Order chat: messages and read markers.
//!
//! Who may talk: the order's customer, its currently assigned partner, and support (admins, or
//! a backend service posting as support). Anyone else is answered like an order that does not
//! exist (404). Once the order is `delivered` or `cancelled`, its chat stays readable but
//! sending is refused (403, "the chat is closed") after a grace period counted from the order's
//! last change ([`Store::with_chat_close_grace`], `SWITCHYARD_CHAT_CLOSE_GRACE_SECS`).
//!
//! A message is inserted together with its `chat.message` outbox row, in one transaction that
//! first locks the order row: messages of one order are therefore stored one at a time, their
//! ids grow in commit order, and the relay (which hands the outbox on in id order) publishes
//! their events in the same order — the room's offsets and the message ids agree. A retry
//! (the same order, sender and `client_msg_id`) finds the first message and writes nothing.
//!
//! # The offset in a send's answer
//! The room offset of a message's event is assigned by the bus when the relay publishes the
//! outbox row, after the commit. The relay records it on the message (`room_offset`: the
//! first publication's, kept when a crash makes it publish the row again) and announces it —
//! to this process through [`Store::chat_offsets_recorded`], to the other API processes with a
//! control message they hand to [`Store::chat_offsets_published`].
//! [`Store::send_message_published`] stores the message and then waits for that offset, at
//! most `SWITCHYARD_CHAT_PUBLISH_WAIT_MS` ([`Store::with_chat_publish_wait`]): the answer
//! carries the offset the members' event carries, a retry the same one (read from the row),
//! and the relay stays the only publisher, so events still leave in commit order. When the
//! bus is down the wait ends without the offset; the message is stored and is published
//! once the bus is back (a retry then answers with its offset).
//!
//! A read marker only moves forward; each move is committed with its `chat.read` event.

use crate::orders::order_room;
use crate::outbox::enqueue;
use crate::{Actor, Store, StoreError, now_ms};
use std::sync::Arc;
use std::time::Duration;
use switchyard_protocol::chat::{
    ChatMessage, ChatState, MAX_TEXT_CHARS, MessagePage, NewMessage, is_refused_char,
    is_valid_client_msg_id,
};
use switchyard_protocol::events::ChatRead;
use switchyard_protocol::{BuiltinEvent, Order, Role};
use tokio::sync::broadcast::error::RecvError;
use unicode_normalization::UnicodeNormalization;

/// The default of `SWITCHYARD_CHAT_CLOSE_GRACE_SECS`: how long after an order is delivered or
/// cancelled its members may still send.
pub const DEFAULT_CLOSE_GRACE_MS: i64 = 30 * 60 * 1000;

/// The default of `SWITCHYARD_CHAT_PUBLISH_WAIT_MS`: how long a send waits for its event's
/// room offset before answering without it.
pub const DEFAULT_PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting send looks in the database when no announcement came (an announcement
/// from another process lost with the bus).
const PUBLISHED_POLL: Duration = Duration::from_millis(100);

/// Announcements of published offsets kept for slow waiters; one that falls further behind
/// looks in the database.
pub(crate) const PUBLISHED_BATCHES: usize = 64;

/// Why a message is closed to new messages.
pub const CHAT_CLOSED: &str = "the chat is closed: the order is finished";

/// A message's text as stored: refused when it holds control characters other than newline
/// and tab, then trimmed, normalized to NFC, and refused unless 1 to 2,000 characters long.
pub fn normalize_text(text: &str) -> Result<String, String> {
    if text.chars().any(is_refused_char) {
        return Err("text may not contain control characters other than newline and tab".into());
    }
    let text: String = text.trim().nfc().collect();
    let chars = text.chars().count();
    if chars == 0 {
        return Err("text is empty".into());
    }
    if chars > MAX_TEXT_CHARS {
        return Err(format!(
            "text is {chars} characters long; at most {MAX_TEXT_CHARS}"
        ));
    }
    Ok(text)
}

/// May `actor` read and write `order`'s chat (before the closed check)?
pub fn is_member(order: &Order, actor: Actor<'_>) -> bool {
    match actor.role {
        Role::Admin | Role::Service => true,
        Role::Customer => order.customer == actor.sub,
        Role::Partner => order.partner.as_deref() == Some(actor.sub),
    }
}

/// The role a sender is shown with: a service posts as support (`admin`).
fn shown_role(role: Role) -> Role {
    match role {
        Role::Service => Role::Admin,
        other => other,
    }
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: i64,
    order_id: i64,
    sender: String,
    role: String,
    client_msg_id: String,
    text: String,
    sent_at: i64,
    room_offset: Option<i64>,
}

const COLUMNS: &str = "id, order_id, sender, role, client_msg_id, text, sent_at, room_offset";

impl MessageRow {
    fn into_message(self) -> Result<ChatMessage, StoreError> {
        let role = self
            .role
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("message {}: role", self.id)))?;
        Ok(ChatMessage {
            event_id: None,
            message_id: self.id.to_string(),
            order_id: self.order_id.to_string(),
            from: self.sender,
            role,
            text: self.text,
            client_msg_id: self.client_msg_id,
            sent_at: self.sent_at,
            offset: self.room_offset.and_then(|o| u64::try_from(o).ok()),
        })
    }
}

/// What a send did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message: ChatMessage,
    /// False when this was a retry: the message was stored by an earlier send.
    pub created: bool,
}

impl Store {
    /// The same store with another grace period for finished orders' chats (milliseconds).
    pub fn with_chat_close_grace(mut self, grace_ms: i64) -> Store {
        self.chat_close_grace_ms = grace_ms;
        self
    }

    /// A write transaction holding order `id`'s row lock, and the order — if `actor` is a
    /// member of its chat (else `NotFound`).
    async fn member_write(
        &self,
        id: i64,
        actor: Actor<'_>,
    ) -> Result<(crate::Tx, Order), StoreError> {
        let mut tx = self.write_tx().await?;
        let order = self
            .load_for_update(&mut tx, id)
            .await?
            .filter(|o| is_member(o, actor))
            .ok_or(StoreError::NotFound)?;
        Ok((tx, order))
    }

    /// The same store, waiting at most `wait` for a sent message's room offset.
    pub fn with_chat_publish_wait(mut self, wait: Duration) -> Store {
        self.chat_publish_wait = wait;
        self
    }

    /// The message `sender` sent to order `id` with `client_msg_id`, if any.
    async fn sent_before(
        &self,
        tx: &mut crate::Tx,
        id: i64,
        sender: &str,
        client_msg_id: &str,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM chat_messages \
             WHERE order_id = $1 AND sender = $2 AND client_msg_id = $3"
        ))
        .bind(id)
        .bind(sender)
        .bind(client_msg_id)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(MessageRow::into_message).transpose()
    }

    /// Stores a message in order `id`'s chat with its `chat.message` event, or — when the
    /// sender already sent this `client_msg_id` to this order — returns that first message and
    /// writes nothing. Checks, in order: 404 not a member (or no such order), the retry, 403
    /// the chat is closed, 422 the `client_msg_id` or the text. Answers at once, without the
    /// event's offset (unless a retry's was recorded): see [`Store::send_message_published`].
    pub async fn send_message(
        &self,
        id: i64,
        actor: Actor<'_>,
        new: &NewMessage,
    ) -> Result<Sent, StoreError> {
        let (mut tx, order) = self.member_write(id, actor).await?;
        if is_valid_client_msg_id(&new.client_msg_id)
            && let Some(first) = self
                .sent_before(&mut tx, id, actor.sub, &new.client_msg_id)
                .await?
        {
            return Ok(Sent {
                message: first,
                created: false,
            });
        }
        let now = now_ms();
        self.open_at(&order, now)?;
        if !is_valid_client_msg_id(&new.client_msg_id) {
            return Err(StoreError::Invalid(
                "client_msg_id must be 1 to 64 printable ASCII characters".into(),
            ));
        }
        let text = normalize_text(&new.text).map_err(StoreError::Invalid)?;
        let role = shown_role(actor.role);
        // Sends to one order queue on its row lock, so a retry racing its first send found it
        // above: (order, sender, client_msg_id) cannot collide here.
        let (message_id,): (i64,) = sqlx::query_as(
            "INSERT INTO chat_messages (order_id, sender, role, client_msg_id, text, sent_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(id)
        .bind(actor.sub)
        .bind(role.as_str())
        .bind(&new.client_msg_id)
        .bind(&text)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let message = ChatMessage {
            event_id: None,
            message_id: message_id.to_string(),
            order_id: order.id.clone(),
            from: actor.sub.to_owned(),
            role,
            text,
            client_msg_id: new.client_msg_id.clone(),
            sent_at: now,
            offset: None,
        };
        self.commit_with_event(tx, id, &message).await?;
        Ok(Sent {
            message,
            created: true,
        })
    }

    /// [`Store::send_message`], then the wait for the message's room offset (at most the
    /// publish wait; see the module's doc): what the socket's `send` and the REST `POST`
    /// answer.
    pub async fn send_message_published(
        &self,
        id: i64,
        actor: Actor<'_>,
        new: &NewMessage,
    ) -> Result<Sent, StoreError> {
        // Listening before the commit: no announcement can slip between the two.
        let mut published = self.chat_published.subscribe();
        let mut sent = self.send_message(id, actor, new).await?;
        if sent.message.offset.is_none() {
            let message_id = sent.message.message_id.parse().map_err(|_| {
                StoreError::Corrupt(format!("message id {}", sent.message.message_id))
            })?;
            sent.message.offset = self.published_offset(message_id, &mut published).await?;
        }
        Ok(sent)
    }

    /// Waits, at most the publish wait, for message `message_id`'s room offset: announced by
    /// the relay, or found in the database (at once, on a lagged or foreign announcement, and
    /// every [`PUBLISHED_POLL`]).
    async fn published_offset(
        &self,
        message_id: i64,
        published: &mut tokio::sync::broadcast::Receiver<Arc<[(i64, u64)]>>,
    ) -> Result<Option<u64>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.chat_publish_wait;
        let mut look = true;
        loop {
            if look && let Some(offset) = self.room_offset(message_id).await? {
                return Ok(Some(offset));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let poll = PUBLISHED_POLL.min(deadline - now);
            look = match tokio::time::timeout(poll, published.recv()).await {
                Ok(Ok(batch)) if batch.is_empty() => true,
                Ok(Ok(batch)) => {
                    if let Some((_, offset)) = batch.iter().find(|(id, _)| *id == message_id) {
                        return Ok(Some(*offset));
                    }
                    false
                }
                Ok(Err(RecvError::Lagged(_))) | Err(_) => true,
                // The sender lives as long as the store.
                Ok(Err(RecvError::Closed)) => return Ok(None),
            };
        }
    }

    /// The recorded room offset of message `message_id`, if its event was published.
    async fn room_offset(&self, message_id: i64) -> Result<Option<u64>, StoreError> {
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT room_offset FROM chat_messages WHERE id = $1")
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .and_then(|(offset,)| offset)
            .and_then(|o| u64::try_from(o).ok()))
    }

    /// The relay published these messages' events at these room offsets: records each on its
    /// message unless one is recorded (a republication after a crash keeps the first), and
    /// tells this process's waiting sends.
    pub async fn chat_offsets_recorded(&self, offsets: &[(i64, u64)]) -> Result<(), StoreError> {
        if offsets.is_empty() {
            return Ok(());
        }
        // One statement for the batch: `CASE id WHEN $1 THEN $2 … END … IN ($2n+1, …)`, each
        // parameter used once (SQLite binds by position).
        let n = offsets.len();
        let cases: String = (0..n)
            .map(|i| format!(" WHEN ${} THEN ${}", 2 * i + 1, 2 * i + 2))
            .collect();
        let ids: Vec<String> = (0..n).map(|i| format!("${}", 2 * n + i + 1)).collect();
        let sql = format!(
            "UPDATE chat_messages SET room_offset = CASE id{cases} END \
             WHERE room_offset IS NULL AND id IN ({})",
            ids.join(", ")
        );
        let mut update = sqlx::query(&sql);
        for (id, offset) in offsets {
            let offset = i64::try_from(*offset)
                .map_err(|_| StoreError::Corrupt(format!("room offset {offset}")))?;
            update = update.bind(*id).bind(offset);
        }
        for (id, _) in offsets {
            update = update.bind(*id);
        }
        update.execute(&self.pool).await?;
        self.chat_offsets_published(offsets);
        Ok(())
    }

    /// Another process's relay published (and recorded) these offsets: wakes the sends this
    /// process is waiting on (an empty list: look in the database).
    pub fn chat_offsets_published(&self, offsets: &[(i64, u64)]) {
        // No receiver: nobody waits.
        let _ = self.chat_published.send(Arc::from(offsets));
    }

    /// The checks before a send's payload, read-only, for a request whose payload is invalid:
    /// `Err` is the check that comes first (404 not a member, 403 the chat is closed).
    pub async fn chat_precheck(&self, id: i64, actor: Actor<'_>) -> Result<(), StoreError> {
        let order = self.chat_order(id, actor).await?;
        self.open_at(&order, now_ms())
    }

    /// `Forbidden` when `order`'s chat is closed at `now`: finished longer ago than the grace
    /// period.
    fn open_at(&self, order: &Order, now: i64) -> Result<(), StoreError> {
        if order.status.is_final() && now - order.updated_at > self.chat_close_grace_ms {
            return Err(StoreError::Forbidden(CHAT_CLOSED.into()));
        }
        Ok(())
    }

    /// Writes `event` to order `id`'s room in the outbox, commits `tx` and wakes the relay.
    async fn commit_with_event<E: BuiltinEvent>(
        &self,
        mut tx: crate::Tx,
        id: i64,
        event: &E,
    ) -> Result<(), StoreError> {
        enqueue(&mut tx, &order_room(id), event).await?;
        tx.commit().await?;
        self.outbox_written.notify_one();
        Ok(())
    }

    /// The order, if `actor` is a member of its chat (else `NotFound`).
    async fn chat_order(&self, id: i64, actor: Actor<'_>) -> Result<Order, StoreError> {
        self.order(id)
            .await?
            .filter(|o| is_member(o, actor))
            .ok_or(StoreError::NotFound)
    }

    /// A page of order `id`'s messages older than `before` (all when `None`), at most `limit`,
    /// oldest first; members only (else `NotFound`).
    pub async fn messages(
        &self,
        id: i64,
        actor: Actor<'_>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<MessagePage, StoreError> {
        self.chat_order(id, actor).await?;
        let rows: Vec<MessageRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM chat_messages WHERE order_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let full = rows.len() as i64 == limit;
        let mut messages = rows
            .into_iter()
            .map(MessageRow::into_message)
            .collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        let next_before = if full {
            messages.first().map(|m| m.message_id.clone())
        } else {
            None
        };
        Ok(MessagePage {
            messages,
            next_before,
        })
    }

    /// Marks order `id`'s chat read by `actor` up to `message_id` (a message of this order:
    /// else `Invalid`). The marker only moves forward; when it moved, its `chat.read` event is
    /// committed with it and returned.
    pub async fn mark_read(
        &self,
        id: i64,
        actor: Actor<'_>,
        message_id: i64,
    ) -> Result<Option<ChatRead>, StoreError> {
        let (mut tx, order) = self.member_write(id, actor).await?;
        let exists: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM chat_messages WHERE id = $1 AND order_id = $2")
                .bind(message_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::Invalid(
                "message_id names no message of this order".into(),
            ));
        }
        let moved: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO chat_reads (order_id, reader, message_id, read_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (order_id, reader) DO UPDATE \
             SET message_id = excluded.message_id, read_at = excluded.read_at \
             WHERE chat_reads.message_id < excluded.message_id \
             RETURNING message_id",
        )
        .bind(id)
        .bind(actor.sub)
        .bind(message_id)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        if moved.is_none() {
            return Ok(None);
        }
        let event = ChatRead {
            event_id: None,
            order_id: order.id.clone(),
            from: actor.sub.to_owned(),
            message_id: message_id.to_string(),
        };
        self.commit_with_event(tx, id, &event).await?;
        Ok(Some(event))
    }

    /// Where `sub` has read up to in order `id`'s chat, and how many messages from others
    /// came after (no membership check: the caller decided who may see it).
    pub async fn chat_state(&self, id: i64, sub: &str) -> Result<ChatState, StoreError> {
        let last: Option<(i64,)> =
            sqlx::query_as("SELECT message_id FROM chat_reads WHERE order_id = $1 AND reader = $2")
                .bind(id)
                .bind(sub)
                .fetch_optional(&self.pool)
                .await?;
        let last = last.map(|(m,)| m);
        let (unread,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM chat_messages WHERE order_id = $1 AND id > $2 AND sender <> $3",
        )
        .bind(id)
        .bind(last.unwrap_or(0))
        .bind(sub)
        .fetch_one(&self.pool)
        .await?;
        Ok(ChatState {
            last_read: last.map(|m| m.to_string()),
            unread,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{order, stores};
    use switchyard_protocol::OrderStatus;

    fn new(text: &str, id: &str) -> NewMessage {
        NewMessage {
            text: text.into(),
            client_msg_id: id.into(),
        }
    }

    const ADMIN: Actor<'static> = Actor {
        sub: "support",
        role: Role::Admin,
    };

    fn customer(sub: &str) -> Actor<'_> {
        Actor {
            sub,
            role: Role::Customer,
        }
    }

    fn partner(sub: &str) -> Actor<'_> {
        Actor {
            sub,
            role: Role::Partner,
        }
    }

    #[test]
    fn text_is_trimmed_normalized_and_bounded() {
        assert_eq!(normalize_text("  hi\n").unwrap(), "hi");
        assert_eq!(
            normalize_text("ring\ttwice\nplease").unwrap(),
            "ring\ttwice\nplease"
        );
        // "e" + combining acute → "é" (NFC).
        assert_eq!(normalize_text("caf\u{65}\u{301}").unwrap(), "caf\u{e9}");
        assert!(normalize_text("   ").is_err());
        assert!(normalize_text("a\u{7}b").is_err());
        assert!(normalize_text("a\rb").is_err());
        assert!(normalize_text("a\u{85}").is_err(), "C1");
        assert!(normalize_text(&"x".repeat(2_000)).is_ok());
        assert!(normalize_text(&"x".repeat(2_001)).is_err());
        assert!(normalize_text(&"😀".repeat(2_000)).is_ok());
        assert!(
            normalize_text(&"😀".repeat(2_500)).is_err(),
            "10 KB of emoji"
        );
    }

    #[tokio::test]
    async fn members_send_retries_are_idempotent_and_pages_go_back() {
        for (_db, store) in stores().await {
            let id = order(&store, "c1", 100).await;
            store.assign(id, ADMIN, "p1").await.unwrap();
            let first = store
                .send_message(id, customer("c1"), &new(" at the gate ", "m1"))
                .await
                .unwrap();
            assert!(first.created);
            assert_eq!(first.message.text, "at the gate");
            assert_eq!(first.message.role, Role::Customer);
            let again = store
                .send_message(id, customer("c1"), &new("something else", "m1"))
                .await
                .unwrap();
            assert_eq!(again.message, first.message);
            assert!(!again.created);
            let reply = store
                .send_message(id, partner("p1"), &new("coming", "m1"))
                .await
                .unwrap();
            assert!(reply.created, "client_msg_id is per sender");
            let support = store
                .send_message(id, ADMIN, &new("support here", "s1"))
                .await
                .unwrap();
            assert_eq!(support.message.role, Role::Admin);
            for outsider in [customer("c2"), partner("p2")] {
                assert!(matches!(
                    store.send_message(id, outsider, &new("hi", "x")).await,
                    Err(StoreError::NotFound)
                ));
                assert!(matches!(
                    store.messages(id, outsider, None, 10).await,
                    Err(StoreError::NotFound)
                ));
            }
            assert!(matches!(
                store
                    .send_message(id, customer("c1"), &new("\u{0}", "m9"))
                    .await,
                Err(StoreError::Invalid(_))
            ));
            assert!(matches!(
                store.send_message(id, customer("c1"), &new("ok", "")).await,
                Err(StoreError::Invalid(_))
            ));
            // client_msg_id is per order too: the same id in another order is a new message.
            let other = order(&store, "c1", 200).await;
            let elsewhere = store
                .send_message(other, customer("c1"), &new("x", "m1"))
                .await
                .unwrap();
            assert!(elsewhere.created);
            assert_ne!(elsewhere.message.message_id, first.message.message_id);
            // Every write above committed its event; one per message, none for the retry.
            let events = store.outbox_batch(1_000).await.unwrap();
            let chat = |room: String| {
                events
                    .iter()
                    .filter(|e| e.event == "chat.message" && e.room == room)
                    .count()
            };
            assert_eq!(chat(format!("order:{id}")), 3);
            assert_eq!(chat(format!("order:{other}")), 1);

            let all = store.messages(id, ADMIN, None, 10).await.unwrap();
            let texts: Vec<_> = all.messages.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, ["at the gate", "coming", "support here"]);
            assert_eq!(all.next_before, None);
            let newest = store.messages(id, partner("p1"), None, 2).await.unwrap();
            assert_eq!(newest.messages.len(), 2);
            assert_eq!(newest.messages[0].text, "coming");
            let before = newest.next_before.unwrap().parse().unwrap();
            let older = store
                .messages(id, customer("c1"), Some(before), 2)
                .await
                .unwrap();
            assert_eq!(older.messages.len(), 1);
            assert_eq!(older.messages[0].text, "at the gate");
        }
    }

    /// Stands in for the relay: hands every chat message in the outbox offset `100 + its
    /// outbox row id`, until dropped.
    fn fake_relay(store: &Store) -> tokio::task::JoinHandle<()> {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                let batch = store.outbox_batch(100).await.unwrap();
                let offsets: Vec<(i64, u64)> = batch
                    .iter()
                    .filter(|e| e.event == "chat.message")
                    .map(|e| {
                        let m: ChatMessage = serde_json::from_str(&e.data).unwrap();
                        (m.message_id.parse().unwrap(), 100 + e.id as u64)
                    })
                    .collect();
                store.chat_offsets_recorded(&offsets).await.unwrap();
                let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
                store.outbox_done(&ids).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    #[tokio::test]
    async fn a_send_answers_with_its_events_offset_and_so_does_its_retry() {
        for (_db, store) in stores().await {
            let id = order(&store, "c1", 100).await;
            // Nothing publishes: the wait ends, the message is stored without an offset.
            let impatient = store
                .clone()
                .with_chat_publish_wait(Duration::from_millis(20));
            let unpublished = impatient
                .send_message_published(id, customer("c1"), &new("first", "a"))
                .await
                .unwrap();
            assert!(unpublished.created);
            assert_eq!(unpublished.message.offset, None);

            let relay = fake_relay(&store);
            let sent = store
                .send_message_published(id, customer("c1"), &new("second", "b"))
                .await
                .unwrap();
            let offset = sent.message.offset.expect("the relay published it");
            assert!(offset > 100);
            let retry = store
                .send_message_published(id, customer("c1"), &new("second", "b"))
                .await
                .unwrap();
            assert!(!retry.created);
            assert_eq!(retry.message, sent.message, "the same offset");
            // The message stored while nothing published has its offset now too.
            let late = store
                .send_message_published(id, customer("c1"), &new("first", "a"))
                .await
                .unwrap();
            assert!(late.message.offset.is_some_and(|o| o < offset));
            relay.abort();
            // A republication (a crash before the row was deleted) keeps the first offset.
            let message_id: i64 = sent.message.message_id.parse().unwrap();
            store
                .chat_offsets_recorded(&[(message_id, 9_999)])
                .await
                .unwrap();
            let page = store.messages(id, customer("c1"), None, 10).await.unwrap();
            assert_eq!(page.messages[1].offset, Some(offset));
        }
    }

    #[tokio::test]
    async fn a_former_partner_loses_the_chat() {
        for (_db, store) in stores().await {
            let id = order(&store, "c1", 100).await;
            store.assign(id, ADMIN, "p1").await.unwrap();
            store
                .send_message(id, partner("p1"), &new("on my way", "a"))
                .await
                .unwrap();
            store.assign(id, ADMIN, "p2").await.unwrap();
            assert!(matches!(
                store
                    .send_message(id, partner("p1"), &new("still here", "b"))
                    .await,
                Err(StoreError::NotFound)
            ));
            assert!(matches!(
                store.messages(id, partner("p1"), None, 10).await,
                Err(StoreError::NotFound)
            ));
            let page = store.messages(id, partner("p2"), None, 10).await.unwrap();
            assert_eq!(page.messages.len(), 1);
        }
    }

    #[tokio::test]
    async fn a_finished_order_closes_its_chat_after_the_grace() {
        for (_db, store) in stores().await {
            let id = order(&store, "c1", 100).await;
            store
                .change_status(id, customer("c1"), OrderStatus::Cancelled)
                .await
                .unwrap();
            // Within the grace (30 minutes by default): still open.
            store
                .send_message(id, customer("c1"), &new("sorry", "a"))
                .await
                .unwrap();
            let closed = store.clone().with_chat_close_grace(0);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            match closed
                .send_message(id, customer("c1"), &new("hello?", "b"))
                .await
            {
                Err(StoreError::Forbidden(why)) => assert_eq!(why, CHAT_CLOSED),
                other => panic!("expected the chat to be closed: {other:?}"),
            }
            // A retry of a message it stored still answers with it; reading still works.
            let retry = closed
                .send_message(id, customer("c1"), &new("sorry", "a"))
                .await
                .unwrap();
            assert!(!retry.created);
            assert_eq!(
                closed
                    .messages(id, customer("c1"), None, 5)
                    .await
                    .unwrap()
                    .messages
                    .len(),
                1
            );
        }
    }

    #[tokio::test]
    async fn read_markers_move_forward_and_count_the_unread() {
        for (_db, store) in stores().await {
            let id = order(&store, "c1", 100).await;
            store.assign(id, ADMIN, "p1").await.unwrap();
            let mut ids = Vec::new();
            for i in 0..3 {
                let sent = store
                    .send_message(id, partner("p1"), &new("hi", &format!("p{i}")))
                    .await
                    .unwrap();
                ids.push(sent.message.message_id.parse::<i64>().unwrap());
            }
            store
                .send_message(id, customer("c1"), &new("mine", "c"))
                .await
                .unwrap();
            let state = store.chat_state(id, "c1").await.unwrap();
            assert_eq!(
                state,
                ChatState {
                    last_read: None,
                    unread: 3
                }
            );
            let read = store.mark_read(id, customer("c1"), ids[1]).await.unwrap();
            assert_eq!(read.unwrap().message_id, ids[1].to_string());
            assert_eq!(
                store.mark_read(id, customer("c1"), ids[0]).await.unwrap(),
                None,
                "never backwards"
            );
            let state = store.chat_state(id, "c1").await.unwrap();
            assert_eq!(state.last_read, Some(ids[1].to_string()));
            assert_eq!(state.unread, 1);
            assert!(matches!(
                store.mark_read(id, customer("c1"), 999_999).await,
                Err(StoreError::Invalid(_))
            ));
            assert!(matches!(
                store.mark_read(id, customer("c2"), ids[0]).await,
                Err(StoreError::NotFound)
            ));
        }
    }
}
