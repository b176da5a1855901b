//! Presence on the wire: who is in a room (issue #16).
//!
//! Rooms with presence are `order:{id}` (its members: the customer, the partner, support).
//! A user is present once however many connections, on however many gateways, it has in the
//! room; the subscribe reply lists who is present ([`Present`]), then `presence.join` and
//! `presence.leave` events (see [`crate::events`]) tell the changes, with offsets like every
//! event. `GET /api/presence?room=` answers the same list.

use crate::role::Role;
use crate::room::{Room, RoomKind};
use serde::{Deserialize, Serialize};

/// One user present in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Present {
    pub sub: String,
    pub role: Role,
    /// Since when (milliseconds since the Unix epoch): the moment its presence was announced.
    pub since: i64,
}

/// `GET /api/presence?room=`: the users present in the room, ordered by `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PresenceList {
    pub room: Room,
    pub presence: Vec<Present>,
}

/// `GET /api/presence?room=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "schema", into_params(parameter_in = Query))]
pub struct PresenceQuery {
    /// A room with presence: `order:{id}`.
    #[cfg_attr(feature = "schema", param(pattern = "^order:[A-Za-z0-9_-]{1,64}$"))]
    pub room: String,
}

/// Whether `room` keeps presence.
pub fn has_presence(room: &Room) -> bool {
    matches!(room.kind(), RoomKind::Order)
}
