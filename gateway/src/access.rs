//! Who may join which room, and what a room looks like right now (subscribe snapshots).
//!
//! Rules (protocol/README.md):
//! - `user:{id}`: the user whose `sub` is `id`, or an admin;
//! - `order:{id}`: the customer who placed it, the partner assigned to it, or an admin.
//!   An unknown order is refused exactly like someone else's (no existence leak);
//! - `admin:revenue`: admins only.
//!
//! Order access is read from the database at subscribe time, so a subscribe right after the
//! REST call that created or assigned the order sees the committed state.

use crate::locations::Locations;
use serde_json::value::RawValue;
use switchyard_auth::Principal;
use switchyard_protocol::room::RoomKind;
use switchyard_protocol::{ErrorCode, Role, Room};
use switchyard_store::{Store, orders::parse_order_id};

/// A refused or failed op: the error code and message for the reply.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    fn internal(err: impl std::fmt::Display) -> Refusal {
        tracing::error!(%err, "store error");
        Refusal::new(ErrorCode::Internal, "temporary server error, retry")
    }
}

const NOT_YOURS: &str = "not allowed to join this room";

/// Checks that `who` may join `room`.
pub async fn may_join(store: &Store, who: &Principal, room: &Room) -> Result<(), Refusal> {
    let allowed = match room.kind() {
        RoomKind::AdminRevenue => who.role == Role::Admin,
        RoomKind::User => who.role == Role::Admin || room.id() == who.sub,
        RoomKind::Order => {
            who.role == Role::Admin || {
                match order_parties(store, room.id()).await? {
                    Some((customer, partner)) => match who.role {
                        Role::Customer => customer == who.sub,
                        Role::Partner => partner.as_deref() == Some(who.sub.as_str()),
                        _ => false,
                    },
                    None => false,
                }
            }
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(Refusal::new(ErrorCode::Forbidden, NOT_YOURS))
    }
}

/// The customer and assigned partner of an order, `None` for an unknown order.
pub async fn order_parties(
    store: &Store,
    order_id: &str,
) -> Result<Option<(String, Option<String>)>, Refusal> {
    let Some(id) = parse_order_id(order_id) else {
        return Ok(None);
    };
    store.parties(id).await.map_err(Refusal::internal)
}

/// The room's current state: the order (with last location) for `order:`, revenue totals
/// for `admin:revenue`, `null` for `user:` rooms.
/// A room's current state. Order snapshots overlay the position this gateway has not written
/// yet (see [`crate::locations`]).
pub async fn snapshot(
    store: &Store,
    locations: &Locations,
    room: &Room,
) -> Result<Box<RawValue>, Refusal> {
    let json = match room.kind() {
        RoomKind::User => None,
        RoomKind::Order => match parse_order_id(room.id()) {
            Some(id) => {
                let mut order = store.order(id).await.map_err(Refusal::internal)?;
                if let (Some(order), Some(newest)) = (order.as_mut(), locations.pending(id)) {
                    order.last_location = Some(newest);
                }
                order
                    .map(|o| serde_json::to_string(&o))
                    .transpose()
                    .map_err(Refusal::internal)?
            }
            None => None,
        },
        RoomKind::AdminRevenue => {
            let revenue = store.revenue().await.map_err(Refusal::internal)?;
            Some(serde_json::to_string(&revenue).map_err(Refusal::internal)?)
        }
    };
    RawValue::from_string(json.unwrap_or_else(|| "null".to_owned())).map_err(Refusal::internal)
}
