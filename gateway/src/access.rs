//! Who may join which room, and what a room looks like right now (subscribe snapshots).
//!
//! Rules (protocol/README.md):
//! - `user:{id}`: the user whose `sub` is `id`, or an admin;
//! - `order:{id}`: the customer who placed it, the partner assigned to it, or an admin.
//!   An unknown order is refused exactly like someone else's (no existence leak);
//! - `product:{sku}`: anyone signed in (a product's stock is public to the app's users);
//! - `admin:revenue`, `admin:inventory`, `admin:orders`, `admin:fleet`: admins only.
//!
//! Orders come from the [`Backend`]. A cached answer decides when it can be trusted: it
//! always names the right customer, and a partner it names was assigned at some point (if
//! replaced since, the revoke that follows the replacement removes them again). A partner it
//! does *not* name may have been assigned a moment ago, so that refusal is checked against the
//! source before it is given — a subscribe right after the REST call that assigned the order
//! is admitted.

use crate::backend::{Backend, BackendError, Read};
use crate::locations::{Locations, newest};
use serde_json::value::RawValue;
use switchyard_auth::Principal;
use switchyard_protocol::room::RoomKind;
use switchyard_protocol::{ErrorCode, Order, OrderId, Role, Room};

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
        tracing::error!(%err, "backend error");
        Refusal::new(ErrorCode::Internal, "temporary server error, retry")
    }
}

impl From<BackendError> for Refusal {
    fn from(err: BackendError) -> Refusal {
        Refusal::internal(err)
    }
}

const NOT_YOURS: &str = "not allowed to join this room";

/// Checks that `who` may join `room`.
pub async fn may_join(backend: &dyn Backend, who: &Principal, room: &Room) -> Result<(), Refusal> {
    let allowed = match room.kind() {
        RoomKind::AdminRevenue
        | RoomKind::AdminInventory
        | RoomKind::AdminOrders
        | RoomKind::AdminFleet => who.role == Role::Admin,
        RoomKind::Product => true,
        RoomKind::User => who.role == Role::Admin || who.sub == room.id(),
        // A non-canonical id names no order: refused like someone else's.
        RoomKind::Order => match (who.role, OrderId::parse(room.id())) {
            (Role::Admin, _) => true,
            (_, None) => false,
            (Role::Customer, Some(id)) => backend
                .order(id.get(), Read::Cached)
                .await?
                .is_some_and(|o| o.customer == who.sub),
            (Role::Partner, Some(id)) => carries(backend, who, id).await?,
            (Role::Service, _) => false,
        },
    };
    if allowed {
        Ok(())
    } else {
        Err(Refusal::new(ErrorCode::Forbidden, NOT_YOURS))
    }
}

/// Whether `who` is the partner currently assigned to order `order_id` (the location op's
/// check, and a partner's order-room check).
pub async fn carries(backend: &dyn Backend, who: &Principal, id: OrderId) -> Result<bool, Refusal> {
    let names_them = |o: &Option<Order>| {
        o.as_ref()
            .is_some_and(|o| o.partner.as_deref() == Some(who.sub.as_str()))
    };
    if names_them(&backend.order(id.get(), Read::Cached).await?) {
        return Ok(true);
    }
    Ok(names_them(&backend.order(id.get(), Read::Fresh).await?))
}

/// A room's current state: the order (with its newest position) for `order:`, the product for
/// `product:` (`null` when there is none), the revenue totals for `admin:revenue`, `null` for
/// `user:` rooms, `admin:inventory` (whose state is the catalog: `GET /api/products`) and
/// `admin:orders` (whose state is `GET /api/orders`) — and for `admin:fleet`, whose snapshot
/// needs its presence (see `crate::fleet::snapshot`). Order snapshots overlay the position
/// this gateway has not handed on yet (see [`crate::locations`]).
pub async fn snapshot(
    backend: &dyn Backend,
    locations: &Locations,
    room: &Room,
) -> Result<Box<RawValue>, Refusal> {
    let json = match room.kind() {
        RoomKind::User
        | RoomKind::AdminInventory
        | RoomKind::AdminOrders
        | RoomKind::AdminFleet => None,
        RoomKind::Product => backend
            .product(room.id())
            .await?
            .map(|p| serde_json::to_string(&p))
            .transpose()
            .map_err(Refusal::internal)?,
        RoomKind::Order => match OrderId::parse(room.id()).map(OrderId::get) {
            Some(id) => {
                let mut order = backend.order(id, Read::Cached).await?;
                if let Some(order) = order.as_mut() {
                    order.last_location = newest(order.last_location, locations.pending(id));
                }
                order
                    .map(|o| serde_json::to_string(&o))
                    .transpose()
                    .map_err(Refusal::internal)?
            }
            None => None,
        },
        RoomKind::AdminRevenue => {
            let revenue = backend.revenue().await?;
            Some(serde_json::to_string(&revenue).map_err(Refusal::internal)?)
        }
    };
    RawValue::from_string(json.unwrap_or_else(|| "null".to_owned())).map_err(Refusal::internal)
}
