//! A customer: an order every `order_every × customers` ticks (staggered by its index), paid
//! one tick later — some twice with the same key, one in seven never.

use crate::geo::{HOMES, basket};
use crate::{MAX_OPEN_PER_CUSTOMER, World, next_frame, open_orders, refused, say};
use std::sync::atomic::Ordering;
use switchyard_client::Rest;
use switchyard_protocol::OrderStatus;
use switchyard_protocol::catalog::ProductPageQuery;
use switchyard_protocol::events::{OrderAssigned, OrderStatusChanged};
use switchyard_protocol::{Role, ServerMessage};

pub(crate) struct Customer {
    world: World,
    me: String,
    rest: Rest,
    home: &'static str,
    /// This customer's turn among all of them.
    index: u64,
    /// Ticks between two of its orders.
    every: u64,
}

/// An order to pay at the next tick: id, total, pay twice.
type Due = (String, i64, bool);

impl Customer {
    pub fn new(world: World, me: String, index: usize, customers: usize) -> Customer {
        Customer {
            rest: world.rest(&me, Role::Customer),
            home: HOMES[index % HOMES.len()].0,
            index: index as u64,
            every: world.pace.order_every * customers as u64,
            world,
            me,
        }
    }

    pub async fn run(self) {
        let world = &self.world;
        let mut tick = tokio::time::interval(world.pace.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        let mut to_pay: Vec<Due> = Vec::new();
        while let Some(mut socket) = world.connect(&self.me, Role::Customer).await {
            // Orders left open by an earlier run or before a reconnect count too.
            let mut open: Vec<String> = open_orders(&self.rest)
                .await
                .into_iter()
                .map(|o| o.id)
                .collect();
            loop {
                tokio::select! {
                    frame = next_frame(&mut socket) => {
                        let Some(frame) = frame else { break };
                        // Its own orders finishing make room for the next.
                        if let ServerMessage::Event(event) = &frame
                            && let Some(Ok(change)) = event.data_as::<OrderStatusChanged>()
                            && change.status.is_final()
                        {
                            open.retain(|o| *o != change.order_id);
                            if change.status == OrderStatus::Delivered {
                                say(&mut socket, &change.order_id, "thanks", "Got it, thank you!").await;
                            }
                        }
                        // A partner on the way: a word about the door.
                        if let ServerMessage::Event(event) = &frame
                            && event.room == format!("user:{}", self.me)
                            && let Some(Ok(assigned)) = event.data_as::<OrderAssigned>()
                        {
                            let text = "Hi! Please ring the bell twice, the intercom is broken.";
                            say(&mut socket, &assigned.order_id, "hello", text).await;
                        }
                    }
                    _ = tick.tick() => {
                        for (order, total, twice) in std::mem::take(&mut to_pay) {
                            self.pay(&order, total, twice).await;
                        }
                        let turn = n % self.every == (self.index * world.pace.order_every) % self.every;
                        n += 1;
                        if turn
                            && open.len() < MAX_OPEN_PER_CUSTOMER
                            && let Some((order, total)) = self.place().await
                        {
                            let k = world.placed.fetch_add(1, Ordering::Relaxed);
                            // One order in seven is never paid (the admin cancels it).
                            if k % 7 != 6 {
                                to_pay.push((order.clone(), total, k % 4 == 1));
                            }
                            open.push(order);
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

    /// Places an order of one to three products, as an app would: reads the catalog, picks
    /// what is in stock, and sends the prices it showed (a price changed meanwhile is refused
    /// with `price_changed`, and the next turn reads the catalog again); returns its id and
    /// total.
    async fn place(&self) -> Option<(String, i64)> {
        let seed = self.world.placed.load(Ordering::Relaxed) * 7 + self.me.len() as u64;
        let page = ProductPageQuery {
            after: None,
            limit: Some(200),
        };
        let catalog = refused("catalog", self.rest.products(&page).await)?;
        let basket = basket(seed, &catalog.products, self.home)?;
        let order = refused("place", self.rest.create_order(&basket).await)?;
        tracing::info!(order = %order.id, customer = self.me, total_paise = order.total_paise, "demo: order placed");
        Some((order.id, order.total_paise))
    }

    /// Pays an order with an idempotency key; `twice` sends the very same request again, as
    /// a phone retrying after a timeout would (the answer is a replay, revenue counts once).
    async fn pay(&self, order: &str, total: i64, twice: bool) {
        let key = format!("demo-pay-{order}");
        for _ in 0..if twice { 2 } else { 1 } {
            if let Some(paid) = refused("pay", self.rest.pay(order, total, &key).await)
                && !paid.replayed
            {
                tracing::info!(
                    order,
                    amount_paise = total,
                    payment = paid.receipt.payment.payment_id,
                    "demo: order paid"
                );
            }
        }
    }
}
