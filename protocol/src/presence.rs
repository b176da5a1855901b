//! Presence on the wire: who is in a room (issue #16).
//!
//! Rooms with presence are `order:{id}` (its members: the customer, the partner, support) and
//! `admin:fleet` (every partner connected, anywhere: its subscribers, the admins, are not in
//! it themselves).
//! A user is present once however many connections, on however many gateways, it has in the
//! room; the subscribe reply lists who is present ([`Present`]), then `presence.join` and
//! `presence.leave` events (see [`crate::events`]) tell the changes, with offsets like every
//! event. `GET /api/presence?room=` answers the same list.

use crate::events::PartnerLocation;
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
    /// A room with presence: `order:{id}` or `admin:fleet`.
    #[cfg_attr(
        feature = "schema",
        param(pattern = "^(order:[A-Za-z0-9_-]{1,64}|admin:fleet)$")
    )]
    pub room: String,
}

/// Whether `room` keeps presence.
pub fn has_presence(room: &Room) -> bool {
    matches!(room.kind(), RoomKind::Order | RoomKind::AdminFleet)
}

/// Whether a room's members are its presence (`order:{id}`). In `admin:fleet` the present
/// users are the partners connected, wherever they are subscribed; its members (admins) are
/// not present in it.
pub fn members_present(room: &Room) -> bool {
    matches!(room.kind(), RoomKind::Order)
}

/// The most `partner.location` events one partner causes in `admin:fleet`: one per this
/// interval (the newest fix it sent in the interval; order rooms keep their own rate).
pub const FLEET_INTERVAL_MS: u64 = 1_000;

/// The `admin:fleet` subscribe snapshot: every partner online, with its last known position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct FleetSnapshot {
    /// Ordered by `sub`.
    pub partners: Vec<FleetPartner>,
}

/// One partner online, in the `admin:fleet` snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct FleetPartner {
    pub sub: String,
    /// Online since (milliseconds since the Unix epoch), as in `presence`.
    pub since: i64,
    /// Its newest position and the order it serves (the data of its last `partner.location`);
    /// `null` when it sent none lately.
    pub location: Option<PartnerLocation>,
}
