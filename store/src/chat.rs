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
//! (the same sender and `client_msg_id`) finds the first message and writes nothing.
//!
//! A read marker only moves forward; each move is committed with its `chat.read` event.

use crate::orders::order_room;
use crate::outbox::enqueue;
use crate::{Actor, Store, StoreError, now_ms};
use switchyard_protocol::chat::{
    ChatMessage, ChatState, MAX_TEXT_CHARS, MessagePage, NewMessage, is_refused_char,
    is_valid_client_msg_id,
};
use switchyard_protocol::events::ChatRead;
use switchyard_protocol::{Order, Role};
use unicode_normalization::UnicodeNormalization;

/// The default of `SWITCHYARD_CHAT_CLOSE_GRACE_SECS`: how long after an order is delivered or
/// cancelled its members may still send.
pub const DEFAULT_CLOSE_GRACE_MS: i64 = 30 * 60 * 1000;

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
}

const COLUMNS: &str = "id, order_id, sender, role, client_msg_id, text, sent_at";

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

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
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

    /// The message `actor` sent with `client_msg_id`, if any.
    async fn sent_before(
        &self,
        tx: &mut crate::Tx,
        sender: &str,
        client_msg_id: &str,
    ) -> Result<Option<ChatMessage>, StoreError> {
        let row: Option<MessageRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM chat_messages WHERE sender = $1 AND client_msg_id = $2"
        ))
        .bind(sender)
        .bind(client_msg_id)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(MessageRow::into_message).transpose()
    }

    /// Stores a message in order `id`'s chat with its `chat.message` event, or — when the
    /// sender already sent this `client_msg_id` to this order — returns that first message and
    /// writes nothing. Checks, in order: 404 not a member (or no such order), the retry, 403
    /// the chat is closed, 422 the `client_msg_id` or the text. The same `client_msg_id` already
    /// used by this sender in another order is 409.
    pub async fn send_message(
        &self,
        id: i64,
        actor: Actor<'_>,
        new: &NewMessage,
    ) -> Result<Sent, StoreError> {
        let (mut tx, order) = self.member_write(id, actor).await?;
        if is_valid_client_msg_id(&new.client_msg_id)
            && let Some(first) = self
                .sent_before(&mut tx, actor.sub, &new.client_msg_id)
                .await?
        {
            if first.order_id != order.id {
                return Err(StoreError::Conflict(
                    "this client_msg_id was already used for a message to another order".into(),
                ));
            }
            return Ok(Sent {
                message: first,
                created: false,
            });
        }
        let now = now_ms();
        if order.status.is_final() && now - order.updated_at > self.chat_close_grace_ms {
            return Err(StoreError::Forbidden(CHAT_CLOSED.into()));
        }
        if !is_valid_client_msg_id(&new.client_msg_id) {
            return Err(StoreError::Invalid(
                "client_msg_id must be 1 to 64 printable ASCII characters".into(),
            ));
        }
        let text = normalize_text(&new.text).map_err(StoreError::Invalid)?;
        let role = shown_role(actor.role);
        let inserted: Result<(i64,), sqlx::Error> = sqlx::query_as(
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
        .await;
        let (message_id,) = match inserted {
            Ok(row) => row,
            // The same id raced in through another order (this order's sends queue on its
            // row lock, so a same-order retry was found above).
            Err(err) if is_unique_violation(&err) => {
                return Err(StoreError::Conflict(
                    "this client_msg_id was already used for a message to another order".into(),
                ));
            }
            Err(err) => return Err(err.into()),
        };
        let message = ChatMessage {
            event_id: None,
            message_id: message_id.to_string(),
            order_id: order.id.clone(),
            from: actor.sub.to_owned(),
            role,
            text,
            client_msg_id: new.client_msg_id.clone(),
            sent_at: now,
        };
        enqueue(&mut tx, &order_room(id), &message).await?;
        tx.commit().await?;
        self.outbox_written.notify_one();
        Ok(Sent {
            message,
            created: true,
        })
    }

    /// The checks before a send's payload, read-only, for a request whose payload is invalid:
    /// `Err` is the check that comes first (404 not a member, 403 the chat is closed).
    pub async fn chat_precheck(&self, id: i64, actor: Actor<'_>) -> Result<(), StoreError> {
        let order = self.chat_order(id, actor).await?;
        if order.status.is_final() && now_ms() - order.updated_at > self.chat_close_grace_ms {
            return Err(StoreError::Forbidden(CHAT_CLOSED.into()));
        }
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
        enqueue(&mut tx, &order_room(id), &event).await?;
        tx.commit().await?;
        self.outbox_written.notify_one();
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
            let other = order(&store, "c1", 200).await;
            assert!(matches!(
                store
                    .send_message(other, customer("c1"), &new("x", "m1"))
                    .await,
                Err(StoreError::Conflict(_))
            ));
            // Every write above committed its event; one per message, none for the retry.
            let events = store.outbox_batch(1_000).await.unwrap();
            let chat: Vec<_> = events
                .iter()
                .filter(|e| e.event == "chat.message")
                .collect();
            assert_eq!(chat.len(), 3);
            assert!(chat.iter().all(|e| e.room == format!("order:{id}")));

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
