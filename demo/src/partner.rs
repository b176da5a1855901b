//! A partner: deliveries come from `order.assigned` in its user room; while one is out for
//! delivery, a location every tick along the way.

use crate::geo::{geocode, location};
use crate::{World, next_frame, open_orders, say};
use std::collections::HashMap;
use switchyard_client::Socket;
use switchyard_protocol::client::ClientOp;
use switchyard_protocol::events::{OrderAssigned, OrderStatusChanged};
use switchyard_protocol::{Order, OrderStatus, Role, Room, ServerMessage};
use tokio::time::Instant;

/// A delivery: where to (from the order room's snapshot) and since when it is on its way.
struct Delivery {
    to: Option<(f64, f64)>,
    started: Option<Instant>,
}

pub(crate) async fn run(world: World, me: String) {
    let rest = world.rest(&me, Role::Partner);
    let mut deliveries: HashMap<String, Delivery> = HashMap::new();
    let mut tick = tokio::time::interval(world.pace.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let drive = world.pace.tick * world.pace.travel as u32;
    while let Some(mut socket) = world.connect(&me, Role::Partner).await {
        // At start or after a reconnect: the open orders it carries, rooms joined again.
        for o in open_orders(&rest).await {
            deliveries.entry(o.id).or_insert(Delivery {
                to: None,
                started: None,
            });
        }
        let ids: Vec<String> = deliveries.keys().cloned().collect();
        for id in ids {
            join(&mut socket, &id, &mut deliveries).await;
        }
        loop {
            tokio::select! {
                frame = next_frame(&mut socket) => {
                    let Some(frame) = frame else { break };
                    let ServerMessage::Event(event) = frame else { continue };
                    if let Some(Ok(assigned)) = event.data_as::<OrderAssigned>() {
                        let id = assigned.order_id;
                        if assigned.partner == me {
                            deliveries.insert(id.clone(), Delivery { to: None, started: None });
                            join(&mut socket, &id, &mut deliveries).await;
                        } else {
                            deliveries.remove(&id);
                        }
                    } else if let Some(Ok(change)) = event.data_as::<OrderStatusChanged>() {
                        let id = change.order_id;
                        match change.status {
                            OrderStatus::OutForDelivery => {
                                if let Some(d) = deliveries.get_mut(&id) {
                                    d.started = Some(Instant::now());
                                    let text = "Picked up your order, on my way. Bell twice, noted!";
                                    say(&mut socket, &id, "on-my-way", text).await;
                                }
                            }
                            status if status.is_final() && deliveries.remove(&id).is_some() => {
                                if let Ok(room) = Room::order(&id) {
                                    let _ = socket.send(ClientOp::Unsubscribe { room }).await;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ = tick.tick() => {
                    for (id, d) in &deliveries {
                        let (Some(to), Some(started)) = (d.to, d.started) else { continue };
                        let progress = (started.elapsed().as_secs_f64() / drive.as_secs_f64()).min(1.0);
                        let _ = socket.send(location(id, to, progress, drive)).await;
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

/// Joins the order's room; its snapshot says where to and whether it is already on its way.
async fn join(socket: &mut Socket, id: &str, deliveries: &mut HashMap<String, Delivery>) {
    let Ok(room) = Room::order(id) else { return };
    let Ok(Ok(reply)) = socket
        .request(ClientOp::Subscribe { room, since: None })
        .await
    else {
        return;
    };
    let order: Option<Order> = reply
        .snapshot
        .and_then(|s| serde_json::from_str(s.get()).ok());
    if let (Some(order), Some(d)) = (order, deliveries.get_mut(id)) {
        d.to = Some(geocode(&order.address));
        if order.status == OrderStatus::OutForDelivery && d.started.is_none() {
            d.started = Some(Instant::now());
        }
    }
}
