//! The admin: follows the customers' rooms (orders created and paid) and moves every order
//! on over REST, one step each `step` ticks.

use crate::{Pace, World, next_frame, open_orders, refused};
use std::collections::HashMap;
use switchyard_client::{Rest, RestError};
use switchyard_protocol::catalog::{ProductPageQuery, ProductPatch};
use switchyard_protocol::client::ClientOp;
use switchyard_protocol::events::{OrderCreated, OrderPaid, RevenueUpdated};
use switchyard_protocol::{OrderStatus, Role, Room, ServerMessage};

/// An order the admin is moving along.
struct Tracked {
    stage: OrderStatus,
    /// The admin tick at which it reached `stage`.
    since: u64,
    paid: bool,
    partner: Option<String>,
}

pub(crate) async fn run(world: World, customers: Vec<String>, partners: Vec<String>) {
    let rest = world.rest("demo-admin", Role::Admin);
    let mut orders: HashMap<String, Tracked> = HashMap::new();
    let mut busy: HashMap<String, usize> = partners.iter().map(|p| (p.clone(), 0)).collect();
    let mut tick = tokio::time::interval(world.pace.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut now: u64 = 0;
    'connection: while let Some(mut socket) = world.connect("demo-admin", Role::Admin).await {
        // Subscribed for real (each reply read) before listing: an order created in between
        // is in the list or in the events, never in neither.
        let rooms = customers
            .iter()
            .filter_map(|c| Room::user(c).ok())
            .chain([Room::admin_revenue()]);
        for room in rooms {
            let subscribe = ClientOp::Subscribe { room, since: None };
            if socket.request(subscribe).await.is_err() {
                continue 'connection;
            }
        }
        // Orders created before the subscriptions (or by an earlier run) are taken over
        // from the list; the events cover everything after.
        for o in open_orders(&rest).await {
            orders.entry(o.id).or_insert_with(|| {
                if let Some(p) = &o.partner {
                    *busy.entry(p.clone()).or_default() += 1;
                }
                Tracked {
                    stage: o.stage,
                    since: now,
                    paid: o.paid,
                    partner: o.partner,
                }
            });
        }
        loop {
            tokio::select! {
                frame = next_frame(&mut socket) => {
                    let Some(frame) = frame else { break };
                    let ServerMessage::Event(event) = frame else { continue };
                    if let Some(Ok(created)) = event.data_as::<OrderCreated>() {
                        orders.entry(created.order.id).or_insert(Tracked {
                            stage: OrderStatus::Placed,
                            since: now,
                            paid: false,
                            partner: None,
                        });
                    } else if let Some(Ok(paid)) = event.data_as::<OrderPaid>() {
                        if let Some(o) = orders.get_mut(&paid.payment.order_id) {
                            o.paid = true;
                        }
                    } else if let Some(Ok(revenue)) = event.data_as::<RevenueUpdated>() {
                        tracing::debug!(
                            total_paise = revenue.total_paise,
                            paid_orders = revenue.paid_orders,
                            "demo: revenue"
                        );
                    }
                }
                _ = tick.tick() => {
                    now += 1;
                    if now.is_multiple_of(RESTOCK_EVERY) {
                        restock(&rest).await;
                    }
                    let due: Vec<String> = orders
                        .iter()
                        .filter(|(_, o)| now >= o.since + ticks(o.stage, &world.pace))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in due {
                        let Some(o) = orders.get_mut(&id) else { continue };
                        let waited = now - o.since;
                        if let Some(next) = advance(&rest, &id, o, waited, &world.pace, &mut busy).await {
                            o.stage = next;
                            o.since = now;
                        }
                        if o.stage.is_final() {
                            if let Some(p) = o.partner.take() {
                                busy.entry(p).and_modify(|n| *n = n.saturating_sub(1));
                            }
                            orders.remove(&id);
                        }
                    }
                }
                _ = world.shutdown.cancelled() => {
                    let _ = socket.close().await;
                    return;
                }
            }
        }
    }
}

/// Ticks between two looks at the shelves.
const RESTOCK_EVERY: u64 = 10;
/// Below this many units a product is restocked, by [`RESTOCK_UNITS`].
const RESTOCK_BELOW: i64 = 20;
const RESTOCK_UNITS: i64 = 100;

/// Restocks every product running low (`PATCH … {"stock_delta"}`): the dashboard's inventory
/// panel shows it go down with each order and jump back up.
async fn restock(rest: &Rest) {
    let page = ProductPageQuery {
        after: None,
        limit: Some(200),
    };
    let Some(catalog) = refused("catalog", rest.products(&page).await) else {
        return;
    };
    for product in catalog
        .products
        .iter()
        .filter(|p| p.stock < RESTOCK_BELOW && !p.discontinued)
    {
        let patch = ProductPatch {
            stock_delta: Some(RESTOCK_UNITS),
            ..ProductPatch::default()
        };
        if refused("restock", rest.patch_product(&product.sku, &patch).await).is_some() {
            tracing::info!(sku = product.sku, from = product.stock, "demo: restocked");
        }
    }
}

/// One step of an order's life, `waited` ticks after it reached its stage; the stage it
/// reached, or `None` to try again next tick.
async fn advance(
    rest: &Rest,
    id: &str,
    order: &mut Tracked,
    waited: u64,
    pace: &Pace,
    busy: &mut HashMap<String, usize>,
) -> Option<OrderStatus> {
    let next = match order.stage {
        OrderStatus::Placed if order.paid => OrderStatus::Confirmed,
        // Customers pay one tick after placing: give the payment three steps.
        OrderStatus::Placed if waited < UNPAID_STEPS * pace.step => return None,
        // Unpaid for that long: the payment timed out — unless its event is merely late
        // (cancelling a paid order refunds it, and the demo's revenue should only grow).
        OrderStatus::Placed => match rest.order(id).await {
            Ok(o) if o.paid => {
                order.paid = true;
                OrderStatus::Confirmed
            }
            Ok(_) => OrderStatus::Cancelled,
            Err(err) => return refused("order", Err::<(), _>(err)).and(None),
        },
        OrderStatus::Confirmed => OrderStatus::Packed,
        OrderStatus::Packed => {
            // Hand it to the least busy partner who is free.
            let (partner, _) = busy
                .iter()
                .filter(|(_, n)| **n == 0)
                .min_by_key(|(p, _)| p.as_str())?;
            let partner = partner.clone();
            refused("assign", rest.assign(id, &partner).await)?;
            *busy.entry(partner.clone()).or_default() += 1;
            order.partner = Some(partner);
            OrderStatus::OutForDelivery
        }
        OrderStatus::OutForDelivery => OrderStatus::Delivered,
        OrderStatus::Delivered | OrderStatus::Cancelled => return None,
    };
    match rest.set_status(id, next).await {
        Ok(_) => {
            if next.is_final() {
                tracing::info!(order = id, status = next.as_str(), "demo: order finished");
            }
            Some(next)
        }
        // Someone else moved it (e.g. the order is already finished): stop tracking.
        Err(RestError::Api { status: 409, .. }) => Some(OrderStatus::Cancelled),
        Err(err) => refused("status", Err::<(), _>(err)).and(None),
    }
}

/// Steps an order may stay unpaid before the admin cancels it.
const UNPAID_STEPS: u64 = 3;

/// Ticks an order spends in `status` before the admin moves it on (at least: an unpaid
/// order waits [`UNPAID_STEPS`]).
fn ticks(status: OrderStatus, pace: &Pace) -> u64 {
    match status {
        OrderStatus::Placed => pace.step,
        OrderStatus::Confirmed | OrderStatus::Packed => pace.step,
        // The drive, and one tick for the partner's last position to arrive.
        OrderStatus::OutForDelivery => pace.travel + 1,
        OrderStatus::Delivered | OrderStatus::Cancelled => 0,
    }
}
