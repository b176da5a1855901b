//! Room names and their grammar.
//!
//! ```text
//! room  = "user:" id | "order:" id | "product:" id
//!       | "admin:revenue" | "admin:inventory" | "admin:orders" | "admin:fleet"
//! id    = 1*64( ALPHA / DIGIT / "_" / "-" )      ; ASCII only
//! ```
//!
//! The grammar is strict on purpose: a room name ends up in Redis channel names
//! and log lines, so nothing outside `[A-Za-z0-9_:-]` ever gets past [`Room::parse`]
//! (no glob characters, no whitespace, no control bytes, no non-ASCII digits).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// Longest id allowed after `user:` or `order:`.
pub const MAX_ID_LEN: usize = 64;

/// A validated room name, shared: cloning it is one atomic increment, so the same name travels
/// from the bus through the hub's map and every queued item to the session's cursor without
/// being copied (issue #20 §3).
///
/// Equal and hashed by its name alone (the kind follows from the name), so a map keyed by
/// rooms is looked up with a `&str` (see the `Borrow<str>` impl).
#[derive(Debug, Clone)]
pub struct Room {
    name: Arc<str>,
    kind: RoomKind,
}

/// What kind of room a name denotes; the id is the part after the colon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKind {
    User,
    Order,
    /// `product:{sku}`: a product's stock, live.
    Product,
    AdminRevenue,
    /// `admin:inventory`: every stock change, and the low-stock alerts.
    AdminInventory,
    /// `admin:orders`: every order as it is placed, and every change of every order.
    AdminOrders,
    /// `admin:fleet`: every partner's presence and newest position (at most 1 Hz each).
    AdminFleet,
}

/// Why a room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error(
        "unknown room kind: expected user:{{id}}, order:{{id}}, product:{{sku}}, admin:revenue, admin:inventory, admin:orders or admin:fleet"
    )]
    UnknownKind,
    #[error("room id must be 1 to 64 characters")]
    BadLength,
    #[error("room id may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadCharacter,
}

/// True when `id` matches `[A-Za-z0-9_-]{1,64}`; the same rule applies to user ids (`sub`).
pub fn is_valid_id(id: &str) -> bool {
    validate_id(id).is_ok()
}

pub(crate) fn validate_id(id: &str) -> Result<(), RoomError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(RoomError::BadLength);
    }
    if id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(RoomError::BadCharacter)
    }
}

impl Room {
    pub const ADMIN_REVENUE: &'static str = "admin:revenue";
    pub const ADMIN_INVENTORY: &'static str = "admin:inventory";
    pub const ADMIN_ORDERS: &'static str = "admin:orders";
    pub const ADMIN_FLEET: &'static str = "admin:fleet";

    /// Parses and validates a room name.
    pub fn parse(name: &str) -> Result<Room, RoomError> {
        if name == Self::ADMIN_REVENUE {
            return Ok(Room::admin_revenue());
        }
        if name == Self::ADMIN_INVENTORY {
            return Ok(Room::admin_inventory());
        }
        if name == Self::ADMIN_ORDERS {
            return Ok(Room::admin_orders());
        }
        if name == Self::ADMIN_FLEET {
            return Ok(Room::admin_fleet());
        }
        let (kind, id) = if let Some(id) = name.strip_prefix("user:") {
            (RoomKind::User, id)
        } else if let Some(id) = name.strip_prefix("order:") {
            (RoomKind::Order, id)
        } else if let Some(id) = name.strip_prefix("product:") {
            (RoomKind::Product, id)
        } else {
            return Err(RoomError::UnknownKind);
        };
        validate_id(id)?;
        Ok(Room {
            name: name.into(),
            kind,
        })
    }

    /// `user:{id}`; fails when the id breaks the grammar.
    pub fn user(id: &str) -> Result<Room, RoomError> {
        validate_id(id)?;
        Ok(Room {
            name: format!("user:{id}").into(),
            kind: RoomKind::User,
        })
    }

    /// `order:{id}`; fails when the id breaks the grammar.
    pub fn order(id: &str) -> Result<Room, RoomError> {
        validate_id(id)?;
        Ok(Room {
            name: format!("order:{id}").into(),
            kind: RoomKind::Order,
        })
    }

    /// A room from a name already known to be in the grammar (see [`crate::id`]).
    pub(crate) fn from_parts(name: String, kind: RoomKind) -> Room {
        Room {
            name: name.into(),
            kind,
        }
    }

    /// `product:{sku}`; fails when the SKU breaks the grammar.
    pub fn product(sku: &str) -> Result<Room, RoomError> {
        validate_id(sku)?;
        Ok(Room {
            name: format!("product:{sku}").into(),
            kind: RoomKind::Product,
        })
    }

    pub fn admin_inventory() -> Room {
        Room {
            name: Self::ADMIN_INVENTORY.into(),
            kind: RoomKind::AdminInventory,
        }
    }

    pub fn admin_orders() -> Room {
        Room {
            name: Self::ADMIN_ORDERS.into(),
            kind: RoomKind::AdminOrders,
        }
    }

    pub fn admin_fleet() -> Room {
        Room {
            name: Self::ADMIN_FLEET.into(),
            kind: RoomKind::AdminFleet,
        }
    }

    pub fn admin_revenue() -> Room {
        Room {
            name: Self::ADMIN_REVENUE.into(),
            kind: RoomKind::AdminRevenue,
        }
    }

    pub fn kind(&self) -> RoomKind {
        self.kind
    }

    /// The part after the first colon (`42` for `order:42`, `revenue` for `admin:revenue`).
    pub fn id(&self) -> &str {
        self.name.split_once(':').map(|(_, id)| id).unwrap_or("")
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn into_string(self) -> String {
        self.name.to_string()
    }

    /// The shared name.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.name
    }
}

impl PartialEq for Room {
    fn eq(&self, other: &Room) -> bool {
        self.name == other.name
    }
}

impl Eq for Room {}

impl std::hash::Hash for Room {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl std::borrow::Borrow<str> for Room {
    fn borrow(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl std::str::FromStr for Room {
    type Err = RoomError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Room::parse(s)
    }
}

impl Serialize for Room {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Room {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Room::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The grammar as a regular expression, for schemas (OpenAPI, AsyncAPI).
pub const PATTERN: &str = "^((user|order|product):[A-Za-z0-9_-]{1,64}|admin:revenue|admin:inventory|admin:orders|admin:fleet)$";

#[cfg(feature = "schema")]
impl utoipa::PartialSchema for Room {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(PATTERN))
            .description(Some(
                "A room: `user:{id}`, `order:{id}`, `product:{sku}` (id, sku: 1 to 64 of A-Z a-z 0-9 _ -), `admin:revenue`, `admin:inventory`, `admin:orders` or `admin:fleet`",
            ))
            .into()
    }
}

#[cfg(feature = "schema")]
impl utoipa::ToSchema for Room {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_kinds() {
        assert_eq!(Room::parse("user:u1").unwrap().kind(), RoomKind::User);
        assert_eq!(Room::parse("order:42").unwrap().kind(), RoomKind::Order);
        assert_eq!(Room::parse("order:42").unwrap().id(), "42");
        assert_eq!(
            Room::parse("admin:revenue").unwrap().kind(),
            RoomKind::AdminRevenue
        );
        assert_eq!(
            Room::parse("product:milk-1l").unwrap().kind(),
            RoomKind::Product
        );
        assert_eq!(
            Room::parse("admin:inventory").unwrap().kind(),
            RoomKind::AdminInventory
        );
        assert_eq!(
            Room::parse("admin:orders").unwrap().kind(),
            RoomKind::AdminOrders
        );
        assert_eq!(
            Room::parse("admin:fleet").unwrap().kind(),
            RoomKind::AdminFleet
        );
        assert!(Room::parse("user:A-z_09").is_ok());
        assert!(Room::parse(&format!("order:{}", "x".repeat(64))).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "user:",
            "order:",
            "admin:",
            "admin:revenue2",
            "admin:inventory2",
            "admin:orders2",
            "admin:fleet2",
            "product:",
            "product:a/b",
            "admin:other",
            "USER:1",
            "room:1",
            "user",
            "user:a b",
            "user:a*",
            "user:a?",
            "user:[a]",
            "user:a\r\n",
            "user:a\0",
            "user:١٢٣", // Arabic-Indic digits
            "user:é",
            "order:1:2",
            "order:a.b",
        ] {
            assert!(Room::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            Room::parse(&format!("order:{}", "x".repeat(65))),
            Err(RoomError::BadLength)
        );
        assert_eq!(
            Room::parse(&format!("user:{}", "9".repeat(10_000))),
            Err(RoomError::BadLength)
        );
    }

    #[test]
    fn constructors_match_the_parser() {
        assert_eq!(Room::user("u1").unwrap(), Room::parse("user:u1").unwrap());
        assert_eq!(Room::order("7").unwrap(), Room::parse("order:7").unwrap());
        assert!(Room::user("bad id").is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let room: Room = serde_json::from_str("\"order:9\"").unwrap();
        assert_eq!(serde_json::to_string(&room).unwrap(), "\"order:9\"");
        assert!(serde_json::from_str::<Room>("\"order:*\"").is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every id of the grammar makes a room that parses back to itself.
        #[test]
        fn valid_ids_round_trip(id in "[A-Za-z0-9_-]{1,64}", kind in 0..2u8) {
            let name = if kind == 0 { format!("user:{id}") } else { format!("order:{id}") };
            let room = Room::parse(&name).unwrap();
            prop_assert_eq!(room.as_str(), name.as_str());
            prop_assert_eq!(room.id(), id.as_str());
        }

        /// Whatever is accepted contains only the grammar's bytes and is at most 70 bytes long;
        /// arbitrary input never panics.
        #[test]
        fn anything_accepted_is_in_the_grammar(name in "\\PC{0,80}|(user|order):.{0,80}") {
            if let Ok(room) = Room::parse(&name) {
                prop_assert!(room.as_str().len() <= "order:".len() + MAX_ID_LEN);
                prop_assert!(room.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b)));
            }
        }
    }
}
