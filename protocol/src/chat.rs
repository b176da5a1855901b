//! Order chat on the wire: a message as stored and delivered, the REST bodies that send and
//! page through messages, and the rules a message's text and `client_msg_id` obey.
//!
//! A message belongs to one order and is said by one of its members (the customer, the
//! assigned partner, or support: an admin or a backend service). The text is checked and
//! normalized by the store (NFC, see `switchyard_store::chat`); the shapes and limits are here
//! so every surface (REST, the socket's `send` op, the clients) shares them.

use crate::role::Role;
use serde::{Deserialize, Serialize};

/// Longest text, in characters (Unicode scalar values), after trimming and normalization.
pub const MAX_TEXT_CHARS: usize = 2_000;
/// Longest `client_msg_id`, in bytes (it is printable ASCII).
pub const MAX_CLIENT_MSG_ID: usize = 64;
/// Largest page of `GET /api/orders/{id}/messages`.
pub const MAX_PAGE: i64 = 200;
/// Page size when `limit` is absent.
pub const DEFAULT_PAGE: i64 = 50;

/// One chat message, as stored: the REST answers, the `send` op's reply and (with
/// `event_id`) the `chat.message` event's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    /// The outbox row's id, on events only (see [`crate::events`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    /// Unique across orders; messages of one order sort by it in the order they were stored,
    /// which is also the order of their events in the order's room.
    #[cfg_attr(
        feature = "schema",
        schema(pattern = "^[1-9][0-9]{0,17}$", example = "17")
    )]
    pub message_id: String,
    pub order_id: String,
    /// The sender's user id (`sub`).
    pub from: String,
    /// The sender's role: `customer`, `partner`, or `admin` for support (a `service` posting
    /// as support is shown as `admin`).
    pub role: Role,
    /// NFC, trimmed, 1 to 2,000 characters; newlines and tabs are kept.
    pub text: String,
    /// The sender's id for this message: a retry with the same id returns this message.
    pub client_msg_id: String,
    /// Milliseconds since the Unix epoch, when it was stored.
    pub sent_at: i64,
    /// The offset its `chat.message` event was given in the order's room (in the room's epoch
    /// of that moment) when the outbox relay first published it: on `send` replies and REST
    /// answers once published; absent from the event's data (the event's `offset` is it) and
    /// from a reply when the relay did not publish within `SWITCHYARD_CHAT_PUBLISH_WAIT_MS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Body of `POST /api/orders/{id}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// 1 to 2,000 characters after trimming; normalized to NFC; no control characters but
    /// newline and tab.
    pub text: String,
    /// 1 to 64 printable ASCII characters (a UUID will do), unique per order and sender:
    /// sending the same id to the same order again returns the first message and stores
    /// nothing new (the same id in another order is another message).
    #[cfg_attr(feature = "schema", schema(pattern = "^[!-~]{1,64}$"))]
    pub client_msg_id: String,
}

/// Query of `GET /api/orders/{id}/messages`: pages backwards from the newest message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "schema", into_params(parameter_in = Query))]
pub struct MessageQuery {
    /// Only messages older than this `message_id`: the previous page's `next_before` (empty
    /// or absent: from the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", param(pattern = "^(|0|[1-9][0-9]{0,17})$"))]
    pub before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", param(minimum = 1, maximum = 200))]
    pub limit: Option<i64>,
}

/// One page of `GET /api/orders/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct MessagePage {
    /// Oldest first.
    pub messages: Vec<ChatMessage>,
    /// Pass as `before` for the older page; `null` when this page reaches the first message.
    pub next_before: Option<String>,
}

/// Where a member has read up to in an order's chat: part of the order room's subscribe
/// snapshot (`chat`), for the subscribing user.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ChatState {
    /// The highest `message_id` this user marked read (`null`: none yet).
    pub last_read: Option<String>,
    /// Messages from others after `last_read`.
    pub unread: i64,
}

/// Whether `id` is a usable `client_msg_id`: 1 to 64 printable ASCII characters, no space.
pub fn is_valid_client_msg_id(id: &str) -> bool {
    (1..=MAX_CLIENT_MSG_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `c` is refused in a message: C0 and C1 control characters other than newline and
/// tab (carriage return included: a newline is `\n`).
pub fn is_refused_char(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_ids() {
        assert!(is_valid_client_msg_id(
            "9b2f0c1e-7d4a-4c51-9d1e-2f8f5a1c3b7e"
        ));
        assert!(is_valid_client_msg_id("a"));
        assert!(is_valid_client_msg_id(&"x".repeat(64)));
        for bad in ["", " ", "a b", "é", "a\n", &"x".repeat(65)] {
            assert!(!is_valid_client_msg_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn refused_characters() {
        for c in ['\0', '\r', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}'] {
            assert!(is_refused_char(c), "{c:?}");
        }
        for c in ['\n', '\t', ' ', 'a', 'é', '😀', '\u{200d}'] {
            assert!(!is_refused_char(c), "{c:?}");
        }
    }
}
