//! The two ids that name rooms, validated once where they enter, so that naming their room
//! can never fail afterwards (and never fall back to some other room).
//!
//! - [`UserId`]: a token's `sub`, `[A-Za-z0-9_-]{1,64}` — exactly the id grammar of
//!   `user:{id}` rooms ([`Room::of_user`]).
//! - [`OrderId`]: an order's number. Written canonically (`42`, never `042` or `+42`) it is
//!   the id of `order:{id}` ([`Room::of_order`]); [`OrderId::parse`] accepts only that form,
//!   so one order has exactly one room name.

use crate::room::{Room, RoomError, validate_id};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// A user's id. Cheap to clone (shared), compared and printed as the string it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Validates `id` against the id grammar.
    pub fn parse(id: &str) -> Result<UserId, RoomError> {
        validate_id(id)?;
        Ok(UserId(id.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for maps keyed by user.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl std::ops::Deref for UserId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for UserId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for UserId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for UserId {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<UserId> for String {
    fn eq(&self, other: &UserId) -> bool {
        **self == *other.0
    }
}

impl PartialEq<UserId> for str {
    fn eq(&self, other: &UserId) -> bool {
        *self == *other.0
    }
}

impl std::str::FromStr for UserId {
    type Err = RoomError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UserId::parse(s)
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        UserId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An order's id, as the database numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(i64);

impl OrderId {
    /// The canonical decimal form of a positive id (`42`; not `042`, `+42`, `-1` or more
    /// than 18 digits): anything else names no order.
    pub fn parse(id: &str) -> Option<OrderId> {
        if id.is_empty()
            || id.len() > 18
            || !id.bytes().all(|b| b.is_ascii_digit())
            || (id.len() > 1 && id.starts_with('0'))
        {
            return None;
        }
        id.parse().ok().map(OrderId)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Ids come from the database as integers; whatever integer it is, its decimal form fits the
/// room grammar, so its room always exists.
impl From<i64> for OrderId {
    fn from(id: i64) -> OrderId {
        OrderId(id)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Room {
    /// `user:{id}`: every [`UserId`] names one.
    pub fn of_user(id: &UserId) -> Room {
        Room::from_parts(format!("user:{id}"), crate::room::RoomKind::User)
    }

    /// `order:{id}`: every [`OrderId`] names one (its digits, and a sign, are in the grammar).
    pub fn of_order(id: OrderId) -> Room {
        Room::from_parts(format!("order:{id}"), crate::room::RoomKind::Order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_are_canonical_and_name_their_room() {
        assert_eq!(OrderId::parse("42").map(OrderId::get), Some(42));
        for bad in ["", "0042", "4a", "+4", "-4", "9999999999999999999"] {
            assert_eq!(OrderId::parse(bad), None, "{bad:?}");
        }
        for id in [1, 42, i64::MAX, -5, 0] {
            let room = Room::of_order(OrderId::from(id));
            assert_eq!(Room::parse(room.as_str()).as_ref(), Ok(&room));
        }
    }

    #[test]
    fn user_ids_follow_the_grammar_and_name_their_room() {
        let id = UserId::parse("c1").unwrap();
        assert_eq!(Room::of_user(&id), Room::parse("user:c1").unwrap());
        let owned: String = "c1".into();
        assert!(id == "c1" && owned == id);
        assert!(UserId::parse("a b").is_err());
        assert!(serde_json::from_str::<UserId>("\"x*\"").is_err());
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"c1\"");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every user id the grammar allows names a room that parses back to itself.
        #[test]
        fn every_user_id_names_its_room(id in "[A-Za-z0-9_-]{1,64}") {
            let room = Room::of_user(&UserId::parse(&id).unwrap());
            prop_assert_eq!(Room::parse(room.as_str()), Ok(room.clone()));
        }

        /// Every integer names an order room that parses back to itself.
        #[test]
        fn every_order_id_names_its_room(id in any::<i64>()) {
            let room = Room::of_order(OrderId::from(id));
            prop_assert_eq!(Room::parse(room.as_str()), Ok(room.clone()));
        }
    }
}
