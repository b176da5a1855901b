//! Orders: create, read, list, status changes, partner assignment and last known location.

use crate::checks::{Change, admissible, authorize};
use crate::outbox::{enqueue, enqueue_revoke, enqueue_snapshot};
use crate::payments::{refund_events, refund_rows};
use crate::{Actor, Store, StoreError, Tx, now_ms};
use switchyard_protocol::events::{OrderAssigned, OrderCreated, OrderStatusChanged};
use switchyard_protocol::order::{NewOrder, OrderLimits};
use switchyard_protocol::{Location, Order, OrderId, OrderStatus, Role, Room, UserId};

/// Which orders a listing covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Customer(&'a str),
    Partner(&'a str),
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: i64,
    customer: String,
    partner: Option<String>,
    status: String,
    items: String,
    address: String,
    total_paise: i64,
    paid: i64,
    refunded: i64,
    last_location: Option<String>,
    created_at: i64,
    updated_at: i64,
}

const COLUMNS: &str = "id, customer, partner, status, items, address, total_paise, paid, \
                       refunded, last_location, created_at, updated_at";

impl OrderRow {
    fn into_order(self) -> Result<Order, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("order {}: {what}", self.id));
        Ok(Order {
            id: self.id.to_string(),
            status: self.status.parse().map_err(|_| corrupt("status"))?,
            items: serde_json::from_str(&self.items).map_err(|_| corrupt("items"))?,
            last_location: match &self.last_location {
                Some(l) => Some(serde_json::from_str(l).map_err(|_| corrupt("location"))?),
                None => None,
            },
            customer: self.customer,
            partner: self.partner,
            address: self.address,
            total_paise: self.total_paise,
            paid: self.paid != 0,
            refunded: self.refunded != 0,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub use switchyard_protocol::order::parse_order_id;

/// Why a reassigned order's former partner loses its room.
pub const REASSIGNED: &str = "the order was reassigned to another partner";

pub(crate) fn order_room(id: i64) -> Room {
    Room::of_order(OrderId::from(id))
}

/// The room of a user id read back from the database. Ids were validated on the way in (a
/// token's `sub`, an assignment's partner), so one that breaks the grammar is corrupt data —
/// the change fails loudly (500) rather than its event silently going nowhere.
pub(crate) fn user_room(sub: &str) -> Result<Room, StoreError> {
    let id =
        UserId::parse(sub).map_err(|e| StoreError::Corrupt(format!("user id {sub:?}: {e}")))?;
    Ok(Room::of_user(&id))
}

/// May `actor` see this order?
pub fn can_see(order: &Order, actor: Actor<'_>) -> bool {
    match actor.role {
        Role::Admin => true,
        Role::Customer => order.customer == actor.sub,
        Role::Partner => order.partner.as_deref() == Some(actor.sub),
        Role::Service => false,
    }
}

impl Store {
    /// The order row a write is about to change, locked until the write's transaction ends:
    /// on PostgreSQL by `SELECT … FOR UPDATE` (a concurrent write to the same order waits
    /// here, then reads the row as committed — no lost update); on SQLite the transaction
    /// already holds the database lock (`BEGIN IMMEDIATE`).
    pub(crate) async fn load_for_update(
        &self,
        tx: &mut Tx,
        id: i64,
    ) -> Result<Option<Order>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM orders WHERE id = $1{}",
            self.engine.for_update()
        );
        let row: Option<OrderRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        row.map(OrderRow::into_order).transpose()
    }
}

impl Store {
    /// Creates an order for `customer` from the catalog: the lines' names and prices are the
    /// catalog's, their units are reserved in the same transaction (see [`crate::catalog`]);
    /// status starts `placed`. Emits `order.created` (to the customer and `admin:orders`) and
    /// the stock changes.
    pub async fn create_order(
        &self,
        customer: &str,
        new: &NewOrder,
        limits: &OrderLimits,
    ) -> Result<Order, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let (lines, total_paise) = self.reserve(&mut tx, &new.items, limits).await?;
        let items =
            serde_json::to_string(&lines).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO orders (customer, status, items, address, total_paise, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
        )
        .bind(customer)
        .bind(OrderStatus::Placed.as_str())
        .bind(items)
        .bind(new.address.trim())
        .bind(total_paise)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        Self::record_lines(&mut tx, id, &lines).await?;
        let order = Order {
            id: id.to_string(),
            customer: customer.to_owned(),
            partner: None,
            status: OrderStatus::Placed,
            items: lines,
            address: new.address.trim().to_owned(),
            total_paise,
            paid: false,
            refunded: false,
            created_at: now,
            updated_at: now,
            last_location: None,
        };
        enqueue_snapshot(&mut tx, &order_room(id), &order).await?;
        let room = user_room(customer)?;
        let event = OrderCreated {
            event_id: None,
            order: order.clone(),
        };
        enqueue(&mut tx, &room, &event).await?;
        enqueue(&mut tx, &Room::admin_orders(), &event).await?;
        tx.commit().await?;
        self.outbox_written.notify_one();
        Ok(order)
    }

    /// The order with this id, whoever may see it.
    pub async fn order(&self, id: i64) -> Result<Option<Order>, StoreError> {
        let row: Option<OrderRow> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(OrderRow::into_order).transpose()
    }

    /// The customer and the assigned partner of an order (room access checks).
    pub async fn parties(&self, id: i64) -> Result<Option<(String, Option<String>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT customer, partner FROM orders WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Orders in `scope` with id greater than `after`, oldest first, at most `limit`.
    pub async fn list_orders(
        &self,
        scope: Scope<'_>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError> {
        let (filter, who) = match scope {
            Scope::All => ("", None),
            Scope::Customer(sub) => ("AND customer = $3", Some(sub)),
            Scope::Partner(sub) => ("AND partner = $3", Some(sub)),
        };
        let sql =
            format!("SELECT {COLUMNS} FROM orders WHERE id > $1 {filter} ORDER BY id LIMIT $2");
        let mut query = sqlx::query_as::<_, OrderRow>(&sql).bind(after).bind(limit);
        if let Some(who) = who {
            query = query.bind(who);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(OrderRow::into_order)
            .collect()
    }

    /// Moves an order to `to` if the caller may (403) and the machine allows it now (409).
    /// Emits `order.status` to the order room, the customer's room and `admin:orders`. Cancelling a paid
    /// order refunds its payment in the same transaction (see [`refund_rows`]).
    pub async fn change_status(
        &self,
        id: i64,
        actor: Actor<'_>,
        to: OrderStatus,
    ) -> Result<Order, StoreError> {
        let change = Change::Status(Some(to));
        let mut tx = self.write_tx().await?;
        let mut order = authorize(self.load_for_update(&mut tx, id).await?, actor, change)?;
        admissible(&order, actor, change)?;
        let from = order.status;
        order.status = to;
        order.updated_at = now_ms();
        sqlx::query("UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(to.as_str())
            .bind(order.updated_at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if to == OrderStatus::Cancelled {
            self.release(&mut tx, id).await?;
        }
        let refunded = if to == OrderStatus::Cancelled && order.paid && !order.refunded {
            refund_rows(&mut tx, &mut order).await?
        } else {
            None
        };
        // The snapshots first, so they are in place before the events they cover go out.
        enqueue_snapshot(&mut tx, &order_room(id), &order).await?;
        if let Some(done) = &refunded {
            enqueue_snapshot(&mut tx, &Room::admin_revenue(), &done.revenue).await?;
        }
        let event = OrderStatusChanged {
            event_id: None,
            order_id: order.id.clone(),
            status: to,
            previous: from,
            by: actor.role,
            updated_at: order.updated_at,
        };
        enqueue(&mut tx, &order_room(id), &event).await?;
        let room = user_room(&order.customer)?;
        enqueue(&mut tx, &room, &event).await?;
        enqueue(&mut tx, &Room::admin_orders(), &event).await?;
        if let Some(done) = refunded {
            refund_events(&mut tx, &order, done).await?;
        }
        tx.commit().await?;
        self.outbox_written.notify_one();
        Ok(order)
    }

    /// Assigns `partner` to an order that is not finished (admins). Emits `order.assigned`
    /// to the order room, `admin:orders`, the customer, the new partner and (when reassigning) the former
    /// partner, whose membership of the order room is revoked on every gateway.
    pub async fn assign(
        &self,
        id: i64,
        actor: Actor<'_>,
        partner: &str,
    ) -> Result<Order, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut order = authorize(
            self.load_for_update(&mut tx, id).await?,
            actor,
            Change::Assign,
        )?;
        admissible(&order, actor, Change::Assign)?;
        let previous = order.partner.replace(partner.to_owned());
        order.updated_at = now_ms();
        sqlx::query("UPDATE orders SET partner = $1, updated_at = $2 WHERE id = $3")
            .bind(partner)
            .bind(order.updated_at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let room = order_room(id);
        enqueue_snapshot(&mut tx, &room, &order).await?;
        let former = previous.as_deref().filter(|p| *p != partner);
        if let Some(former) = former {
            // The former partner loses the order room on every gateway, right after the
            // snapshot that no longer names them is in place.
            enqueue_revoke(&mut tx, &room, former, REASSIGNED).await?;
        }
        let event = OrderAssigned {
            event_id: None,
            order_id: order.id.clone(),
            partner: partner.to_owned(),
            previous_partner: previous.clone(),
            updated_at: order.updated_at,
        };
        enqueue(&mut tx, &room, &event).await?;
        let mut users = vec![order.customer.as_str(), partner];
        users.extend(former);
        for user in users {
            let room = user_room(user)?;
            enqueue(&mut tx, &room, &event).await?;
        }
        enqueue(&mut tx, &Room::admin_orders(), &event).await?;
        tx.commit().await?;
        self.outbox_written.notify_one();
        Ok(order)
    }

    /// Remembers a partner's latest position on the order (shown in snapshots).
    /// Stores several orders' latest positions in one transaction (one fsync).
    /// Rows are written in id order, so two batches never wait on each other's row locks in
    /// a cycle.
    pub async fn record_locations(&self, batch: &[(i64, Location)]) -> Result<(), StoreError> {
        let mut batch: Vec<&(i64, Location)> = batch.iter().collect();
        batch.sort_by_key(|(id, _)| *id);
        let mut tx = self.write_tx().await?;
        for (id, location) in batch {
            let json =
                serde_json::to_string(location).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query("UPDATE orders SET last_location = $1 WHERE id = $2")
                .bind(json)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unreadable rows are the server's fault (500), not the caller's (422): a regression of
    /// corrupt rows mapped to `Invalid`.
    #[tokio::test]
    async fn a_corrupt_row_is_corrupt_not_invalid() {
        for db in crate::testing::TestDatabase::each_engine().await {
            let store = db.open().await;
            let id = crate::tests::order(&store, "u1", 100).await;
            sqlx::query("UPDATE orders SET items = 'not json' WHERE id = $1")
                .bind(id)
                .execute(&store.pool)
                .await
                .unwrap();
            assert!(matches!(store.order(id).await, Err(StoreError::Corrupt(_))));
            let admin = Actor {
                sub: "a",
                role: Role::Admin,
            };
            assert!(matches!(
                store.change_status(id, admin, OrderStatus::Confirmed).await,
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
