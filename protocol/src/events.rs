//! The built-in events, typed: each one's name, its `data` and whether only its latest value
//! matters. The families `order.*`, `revenue.*`, `partner.*`, `stock.*` and `presence.*` are reserved for
//! Switchyard itself; other backend services publish their own names (`POST /api/publish`).
//!
//! | type | event | rooms |
//! |------|-------|-------|
//! | [`OrderCreated`] | `order.created` | `user:{customer}`, `admin:orders` |
//! | [`OrderStatusChanged`] | `order.status` | `order:{id}`, `user:{customer}`, `admin:orders` |
//! | [`OrderAssigned`] | `order.assigned` | `order:{id}`, `user:{customer}`, `user:{partner}`, `user:{previous partner}`, `admin:orders` |
//! | [`OrderPaid`] | `order.paid` | `order:{id}`, `user:{customer}`, `admin:orders` |
//! | [`OrderRefunded`] | `order.refunded` | `order:{id}`, `user:{customer}`, `admin:orders` |
//! | [`RevenueUpdated`] | `revenue.updated` (latest value) | `admin:revenue` |
//! | [`PartnerLocation`] | `partner.location` (latest value; per partner in `admin:fleet`) | `order:{id}`, `admin:fleet` (at most 1 Hz per partner) |
//! | [`StockUpdated`] | `stock.updated` (latest value in `product:`) | `product:{sku}`, `admin:inventory` |
//! | [`StockLow`] | `stock.low` | `admin:inventory` |
//! | [`StockOut`] | `stock.out` | `admin:inventory` |
//! | [`ChatMessage`] | `chat.message` | `order:{id}` |
//! | [`ChatTyping`] | `chat.typing` (latest value) | `order:{id}` |
//! | [`ChatRead`] | `chat.read` | `order:{id}` |
//! | [`PresenceJoin`] | `presence.join` | `order:{id}`, `admin:fleet` |
//! | [`PresenceLeave`] | `presence.leave` | `order:{id}`, `admin:fleet` |
//!
//! Events the API causes carry `event_id` (the outbox row's id, added when the relay publishes
//! them): the same id however often a crash makes the relay publish one again.

use crate::catalog::StockLevel;
pub use crate::chat::ChatMessage;
use crate::order::{Location, Order, OrderStatus, Payment, Refund};
use crate::role::Role;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A built-in event: its name, and its `data` as this type.
pub trait BuiltinEvent: Serialize + DeserializeOwned {
    /// The event name on the wire.
    const NAME: &'static str;
    /// Only the newest value matters: a backed-up connection keeps one per room (conflation)
    /// instead of queueing every one, and a client may see offsets jump over replaced ones.
    const LATEST_VALUE: bool = false;
}

/// `order.created`: a customer placed an order; `data` is the order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct OrderCreated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    #[serde(flatten)]
    pub order: Order,
}

impl BuiltinEvent for OrderCreated {
    const NAME: &'static str = "order.created";
}

/// `order.status`: an order's status changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct OrderStatusChanged {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    pub order_id: String,
    pub status: OrderStatus,
    pub previous: OrderStatus,
    /// The role of whoever made the change.
    pub by: Role,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
}

impl BuiltinEvent for OrderStatusChanged {
    const NAME: &'static str = "order.status";
}

/// `order.assigned`: a partner was assigned (or the order reassigned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct OrderAssigned {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    pub order_id: String,
    pub partner: String,
    /// The partner it had before, if any (it gets this event in its user room too).
    pub previous_partner: Option<String>,
    pub updated_at: i64,
}

impl BuiltinEvent for OrderAssigned {
    const NAME: &'static str = "order.assigned";
}

/// `order.paid`: an order was paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct OrderPaid {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    #[serde(flatten)]
    pub payment: Payment,
}

impl BuiltinEvent for OrderPaid {
    const NAME: &'static str = "order.paid";
}

/// `order.refunded`: a paid order was cancelled and its payment refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct OrderRefunded {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    #[serde(flatten)]
    pub refund: Refund,
}

impl BuiltinEvent for OrderRefunded {
    const NAME: &'static str = "order.refunded";
}

/// `revenue.updated`: the revenue totals after a payment or a refund, and that payment or
/// refund (exactly one of the two). Events leave in commit order, so the totals a client
/// sees follow the database's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct RevenueUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    pub currency: String,
    /// Payments minus refunds, paise.
    pub total_paise: i64,
    /// Orders paid and not refunded.
    pub paid_orders: i64,
    /// The payment that moved the totals up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<Payment>,
    /// The refund that moved them down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<Refund>,
}

impl BuiltinEvent for RevenueUpdated {
    const NAME: &'static str = "revenue.updated";
    const LATEST_VALUE: bool = true;
}

/// `partner.location`: the assigned partner's newest position on an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PartnerLocation {
    pub order_id: String,
    pub partner: String,
    #[serde(flatten)]
    pub location: Location,
}

impl BuiltinEvent for PartnerLocation {
    const NAME: &'static str = "partner.location";
    const LATEST_VALUE: bool = true;
}

/// `stock.updated`: a product's stock changed — an order, a cancellation, an admin write.
/// Latest-value in `product:{sku}` (a slow client gets the newest level); in `admin:inventory`,
/// where every product's changes share one room, every one is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct StockUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    #[serde(flatten)]
    pub level: StockLevel,
}

impl BuiltinEvent for StockUpdated {
    const NAME: &'static str = "stock.updated";
    const LATEST_VALUE: bool = true;
}

/// `stock.low`: a product's stock fell to or below the low-stock threshold
/// (`SWITCHYARD_LOW_STOCK_THRESHOLD`), from above it; still above zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct StockLow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    #[serde(flatten)]
    pub level: StockLevel,
    /// The configured threshold.
    pub threshold: i64,
}

impl BuiltinEvent for StockLow {
    const NAME: &'static str = "stock.low";
}

/// `stock.out`: a product's stock reached zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct StockOut {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    #[serde(flatten)]
    pub level: StockLevel,
}

impl BuiltinEvent for StockOut {
    const NAME: &'static str = "stock.out";
}

/// `chat.message`: a message in the order's chat; `data` is the message as stored.
impl BuiltinEvent for ChatMessage {
    const NAME: &'static str = "chat.message";
}

/// `chat.typing`: a member is typing (never stored; at most one per sender every 2 s).
/// Latest value: a backed-up connection keeps only the newest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ChatTyping {
    pub order_id: String,
    /// Who is typing (`sub`); a client ignores its own.
    pub from: String,
    pub role: Role,
}

impl BuiltinEvent for ChatTyping {
    const NAME: &'static str = "chat.typing";
    const LATEST_VALUE: bool = true;
}

/// `chat.read`: a member has read the chat up to `message_id` (the highest it marked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ChatRead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    pub order_id: String,
    pub from: String,
    pub message_id: String,
}

impl BuiltinEvent for ChatRead {
    const NAME: &'static str = "chat.read";
}

/// `presence.join`: a user is present in the room now (its first connection in the room,
/// on any gateway). Published by the gateways, not the API (no `event_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PresenceJoin {
    pub sub: String,
    pub role: Role,
}

impl BuiltinEvent for PresenceJoin {
    const NAME: &'static str = "presence.join";
}

/// `presence.leave`: a user is no longer present in the room (its last connection in the room
/// left, or its gateway stopped answering, and it did not come back within the debounce).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PresenceLeave {
    pub sub: String,
    pub role: Role,
}

impl BuiltinEvent for PresenceLeave {
    const NAME: &'static str = "presence.leave";
}

/// A customer placed an order → `user:{customer}`, `admin:orders`.
pub const ORDER_CREATED: &str = OrderCreated::NAME;
/// An order's status changed → `order:{id}`, `user:{customer}`, `admin:orders`.
pub const ORDER_STATUS: &str = OrderStatusChanged::NAME;
/// A partner was assigned → `order:{id}`, `user:{customer}`, `user:{partner}`, `admin:orders`.
pub const ORDER_ASSIGNED: &str = OrderAssigned::NAME;
/// An order was paid → `order:{id}`, `user:{customer}`, `admin:orders`.
pub const ORDER_PAID: &str = OrderPaid::NAME;
/// A paid order was cancelled and its payment refunded → `order:{id}`, `user:{customer}`,
/// `admin:orders`.
pub const ORDER_REFUNDED: &str = OrderRefunded::NAME;
/// Revenue totals moved → `admin:revenue`.
pub const REVENUE_UPDATED: &str = RevenueUpdated::NAME;
/// A partner's position → `order:{id}`, and at most once a second per partner `admin:fleet`.
pub const PARTNER_LOCATION: &str = PartnerLocation::NAME;

/// A product's stock changed → `product:{sku}`, `admin:inventory`.
pub const STOCK_UPDATED: &str = StockUpdated::NAME;
/// A product's stock fell to the low-stock threshold → `admin:inventory`.
pub const STOCK_LOW: &str = StockLow::NAME;
/// A product ran out → `admin:inventory`.
pub const STOCK_OUT: &str = StockOut::NAME;
/// A user is present in a room with presence now → that room.
pub const PRESENCE_JOIN: &str = PresenceJoin::NAME;
/// A user left a room with presence → that room.
pub const PRESENCE_LEAVE: &str = PresenceLeave::NAME;

/// A chat message → `order:{id}`.
pub const CHAT_MESSAGE: &str = ChatMessage::NAME;
/// A member is typing → `order:{id}`.
pub const CHAT_TYPING: &str = ChatTyping::NAME;
/// A member read up to a message → `order:{id}`.
pub const CHAT_READ: &str = ChatRead::NAME;

/// Every built-in event name.
pub const BUILT_IN: [&str; 15] = [
    ORDER_CREATED,
    ORDER_STATUS,
    ORDER_ASSIGNED,
    ORDER_PAID,
    ORDER_REFUNDED,
    REVENUE_UPDATED,
    PARTNER_LOCATION,
    STOCK_UPDATED,
    STOCK_LOW,
    STOCK_OUT,
    CHAT_MESSAGE,
    CHAT_TYPING,
    CHAT_READ,
    PRESENCE_JOIN,
    PRESENCE_LEAVE,
];

/// The latest-value events (see [`BuiltinEvent::LATEST_VALUE`]).
pub const LATEST_VALUE: [&str; 4] = [
    PARTNER_LOCATION,
    REVENUE_UPDATED,
    STOCK_UPDATED,
    CHAT_TYPING,
];

/// Whether `name` is a latest-value event (see [`LATEST_VALUE`]).
pub fn is_latest_value(name: &str) -> bool {
    LATEST_VALUE.contains(&name)
}

/// Whether `name` is conflated in `room`: a latest-value event, in a room where the newest
/// one stands for all before it. `admin:inventory` carries every product's stock, so its
/// `stock.updated` events are all delivered (a newer one of one product does not replace
/// another product's). `admin:fleet` carries every partner's position: there a newer
/// `partner.location` replaces only the same partner's (see [`conflates_per_partner`]).
pub fn is_latest_value_in(room: &str, name: &str) -> bool {
    is_latest_value(name) && room != crate::Room::ADMIN_INVENTORY
}

/// Whether latest-value events of `room` stand only for older ones of the same partner
/// (`admin:fleet`), not for every older one of the room.
pub fn conflates_per_partner(room: &str) -> bool {
    room == crate::Room::ADMIN_FLEET
}

/// Families only Switchyard itself may publish.
pub const RESERVED_FAMILIES: [&str; 6] = [
    "order.",
    "revenue.",
    "partner.",
    "stock.",
    "chat.",
    "presence.",
];

/// Why an event name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventNameError {
    /// Not `[a-z][a-z0-9_.-]{0,63}`.
    Grammar,
    /// In a family reserved for the built-in API.
    Reserved,
}

/// Checks a name for the server publish API: `[a-z][a-z0-9_.-]{0,63}`, outside the reserved
/// families.
pub fn check_publishable(name: &str) -> Result<(), EventNameError> {
    let bytes = name.as_bytes();
    let grammar = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(b));
    if !grammar {
        return Err(EventNameError::Grammar);
    }
    if RESERVED_FAMILIES.iter().any(|f| name.starts_with(f)) {
        return Err(EventNameError::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_value_list_matches_the_types() {
        fn latest<E: BuiltinEvent>() -> bool {
            E::LATEST_VALUE
        }
        let typed = [
            (OrderCreated::NAME, latest::<OrderCreated>()),
            (OrderStatusChanged::NAME, latest::<OrderStatusChanged>()),
            (OrderAssigned::NAME, latest::<OrderAssigned>()),
            (OrderPaid::NAME, latest::<OrderPaid>()),
            (OrderRefunded::NAME, latest::<OrderRefunded>()),
            (RevenueUpdated::NAME, latest::<RevenueUpdated>()),
            (PartnerLocation::NAME, latest::<PartnerLocation>()),
            (StockUpdated::NAME, latest::<StockUpdated>()),
            (StockLow::NAME, latest::<StockLow>()),
            (StockOut::NAME, latest::<StockOut>()),
            (ChatMessage::NAME, latest::<ChatMessage>()),
            (ChatTyping::NAME, latest::<ChatTyping>()),
            (ChatRead::NAME, latest::<ChatRead>()),
            (PresenceJoin::NAME, latest::<PresenceJoin>()),
            (PresenceLeave::NAME, latest::<PresenceLeave>()),
        ];
        assert_eq!(typed.map(|(name, _)| name), BUILT_IN);
        for (name, latest) in typed {
            assert_eq!(is_latest_value(name), latest, "{name}");
            assert_eq!(check_publishable(name), Err(EventNameError::Reserved));
        }
    }

    #[test]
    fn location_data_is_flat() {
        let event = PartnerLocation {
            order_id: "4".into(),
            partner: "p1".into(),
            location: Location {
                lat: 1.5,
                lng: 2.0,
                heading: None,
                speed: Some(3.0),
                ts: None,
                received_at: 9,
            },
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(
            text,
            r#"{"order_id":"4","partner":"p1","lat":1.5,"lng":2.0,"speed":3.0,"received_at":9}"#
        );
        assert_eq!(
            serde_json::from_str::<PartnerLocation>(&text).unwrap(),
            event
        );
    }

    #[test]
    fn publishable_names() {
        assert_eq!(check_publishable("eta.updated"), Ok(()));
        assert_eq!(check_publishable("promo_1-x.y"), Ok(()));
        assert_eq!(check_publishable(&format!("a{}", "b".repeat(63))), Ok(()));
        for bad in [
            "",
            "Eta",
            "1eta",
            "eta updated",
            "eta*",
            "é",
            &"a".repeat(65),
        ] {
            assert_eq!(
                check_publishable(bad),
                Err(EventNameError::Grammar),
                "{bad}"
            );
        }
        assert!(is_latest_value_in("product:milk-1l", STOCK_UPDATED));
        assert!(!is_latest_value_in("admin:inventory", STOCK_UPDATED));
        for reserved in ["order.status", "revenue.x", "partner.location", "stock.x"] {
            assert_eq!(check_publishable(reserved), Err(EventNameError::Reserved));
        }
        assert_eq!(
            check_publishable("orders.x"),
            Ok(()),
            "only the exact families"
        );
    }
}
