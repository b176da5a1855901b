//! Idempotent payments, refunds, and the revenue totals they move.
//!
//! One `BEGIN IMMEDIATE` transaction per payment request: check the order and the caller
//! (404, 403), look up the idempotency key, check the state (409) and the amount (422), insert
//! the payment, add to the totals, write the events and the key's answer, commit. Writers are
//! serialized by the database lock, so two payments never read the same totals, a repeated
//! key finds the first request's answer, and a payment and a cancellation of the same order
//! happen one after the other: either "paid, then cancelled and refunded" or "cancelled,
//! then the payment refused" — never a cancelled order that keeps its money.
//!
//! # Money
//! Amounts are integer paise. Order totals are capped when the order is placed
//! ([`switchyard_protocol::order::OrderLimits`]); the revenue total is an `i64` moved only
//! by a guarded `UPDATE` that refuses to pass `i64::MAX` or to go below zero, so an overflow is
//! a refused payment that changes nothing (409), never a wrapped or poisoned total.

use crate::checks::{Change, admissible, authorize};
use crate::orders::{order_room, user_room};
use crate::outbox::{enqueue, enqueue_snapshot};
use crate::{Actor, Store, StoreError, Tx, now_ms};
use switchyard_protocol::events::{OrderPaid, OrderRefunded, RevenueUpdated};
use switchyard_protocol::order::Refund;
use switchyard_protocol::rest::{PaymentReceipt, PaymentStatus};
use switchyard_protocol::{Order, Payment, Revenue, Room};

/// The answer to a payment request, as first computed; replays return it unchanged.
#[derive(Debug, Clone)]
pub struct PaymentOutcome {
    /// HTTP status of the answer (201 for the first success).
    pub status: u16,
    pub body: PaymentReceipt,
    /// True when this is a repeat of an earlier request with the same key.
    pub replayed: bool,
}

pub const CURRENCY: &str = "INR";

/// The route an idempotency key of a payment belongs to (keys are scoped by caller `sub`,
/// caller role and route).
pub const PAYMENT_ROUTE: &str = "POST /api/orders/{id}/payment";

/// Adds `amount` (> 0) to the revenue total and one paid order, unless the total would
/// pass `i64::MAX`: then `Conflict`, and the caller's transaction is dropped unchanged.
async fn add_revenue(tx: &mut Tx, amount: i64) -> Result<Revenue, StoreError> {
    let headroom = i64::MAX - amount;
    let moved: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE revenue SET total_paise = total_paise + $1, paid_orders = paid_orders + 1 \
         WHERE id = 1 AND total_paise <= $2 AND paid_orders < $3 \
         RETURNING total_paise, paid_orders",
    )
    .bind(amount)
    .bind(headroom)
    .bind(i64::MAX)
    .fetch_optional(&mut **tx)
    .await?;
    let (total_paise, paid_orders) = moved.ok_or_else(|| {
        StoreError::Conflict(
            "the revenue total cannot take this payment (it would overflow)".into(),
        )
    })?;
    Ok(Revenue {
        currency: CURRENCY.into(),
        total_paise,
        paid_orders,
    })
}

/// A refund written by [`refund_rows`], whose events are still to be enqueued.
pub(crate) struct Refunded {
    /// The `order.refunded` data.
    refunded: Refund,
    /// The totals after the refund.
    pub(crate) revenue: Revenue,
}

/// Refunds the payment of `order` (paid, just cancelled) inside the cancelling transaction:
/// one refund row per payment (a second attempt inserts nothing), revenue down by the amount
/// and one paid order fewer, then the revenue snapshot and `order.refunded` to the order and
/// customer rooms and `revenue.updated` to `admin:revenue`, all committed with the
/// cancellation.
#[cfg(test)]
pub(crate) async fn refund(tx: &mut Tx, order: &mut Order) -> Result<(), StoreError> {
    if let Some(done) = refund_rows(tx, order).await? {
        enqueue_snapshot(tx, &Room::admin_revenue(), &done.revenue).await?;
        refund_events(tx, order, done).await?;
    }
    Ok(())
}

/// The database side of a refund (see [`refund`]): `None` when there is nothing to refund
/// (no payment, or already refunded). The caller writes the snapshots, then its own events,
/// then [`refund_events`].
pub(crate) async fn refund_rows(
    tx: &mut Tx,
    order: &mut Order,
) -> Result<Option<Refunded>, StoreError> {
    let id: i64 = order.id.parse().map_err(|_| StoreError::NotFound)?;
    let Some((payment_id, amount)): Option<(i64, i64)> =
        sqlx::query_as("SELECT id, amount_paise FROM payments WHERE order_id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
    else {
        return Ok(None);
    };
    let now = now_ms();
    let inserted: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO refunds (payment_id, order_id, amount_paise, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (payment_id) DO NOTHING RETURNING id",
    )
    .bind(payment_id)
    .bind(id)
    .bind(amount)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((refund_id,)) = inserted else {
        // Already refunded: nothing moves twice.
        return Ok(None);
    };
    let moved: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE revenue SET total_paise = total_paise - $1, paid_orders = paid_orders - 1 \
         WHERE id = 1 AND total_paise >= $1 AND paid_orders >= 1 \
         RETURNING total_paise, paid_orders",
    )
    .bind(amount)
    .fetch_optional(&mut **tx)
    .await?;
    let (total_paise, paid_orders) = moved.ok_or_else(|| {
        StoreError::Conflict("the revenue total is below this refund; nothing was changed".into())
    })?;
    sqlx::query("UPDATE orders SET refunded = 1 WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    order.refunded = true;
    let refunded = Refund {
        refund_id: refund_id.to_string(),
        payment_id: payment_id.to_string(),
        order_id: order.id.clone(),
        amount_paise: amount,
        refunded_at: now,
    };
    let revenue = Revenue {
        currency: CURRENCY.into(),
        total_paise,
        paid_orders,
    };
    Ok(Some(Refunded { refunded, revenue }))
}

/// A refund's events: `order.refunded` to the order and customer rooms, `revenue.updated`
/// to `admin:revenue`.
pub(crate) async fn refund_events(
    tx: &mut Tx,
    order: &Order,
    done: Refunded,
) -> Result<(), StoreError> {
    let Refunded { refunded, revenue } = done;
    let revenue_event = RevenueUpdated {
        event_id: None,
        currency: revenue.currency,
        total_paise: revenue.total_paise,
        paid_orders: revenue.paid_orders,
        payment: None,
        refund: Some(refunded.clone()),
    };
    let event = OrderRefunded {
        event_id: None,
        refund: refunded,
    };
    let id: i64 = order.id.parse().map_err(|_| StoreError::NotFound)?;
    enqueue(tx, &order_room(id), &event).await?;
    let room = user_room(&order.customer)?;
    enqueue(tx, &room, &event).await?;
    enqueue(tx, &Room::admin_orders(), &event).await?;
    enqueue(tx, &Room::admin_revenue(), &revenue_event).await?;
    Ok(())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Pays order `order_id` with `amount_paise`, once per (caller `sub`, caller role,
    /// route, `key`). Checks, in order: visibility (404), the caller's role (403), the key
    /// (a replay answers the stored result; the same key for another payment is 422), the
    /// order's state (409), the amount (422).
    ///
    /// Two first uses of one key on different orders at once (PostgreSQL: their order locks
    /// do not serialize them) race on the key's primary key: the loser waits for the winner's
    /// commit, fails on the duplicate, and is run once more — now finding the winner's answer.
    pub async fn pay(
        &self,
        order_id: i64,
        actor: Actor<'_>,
        key: &str,
        amount_paise: i64,
    ) -> Result<PaymentOutcome, StoreError> {
        match self.pay_once(order_id, actor, key, amount_paise).await {
            Err(StoreError::Database(err)) if is_unique_violation(&err) => {
                self.pay_once(order_id, actor, key, amount_paise).await
            }
            outcome => outcome,
        }
    }

    async fn pay_once(
        &self,
        order_id: i64,
        actor: Actor<'_>,
        key: &str,
        amount_paise: i64,
    ) -> Result<PaymentOutcome, StoreError> {
        let fingerprint = format!("{order_id}:{amount_paise}");
        let mut tx = self.write_tx().await?;
        let mut order = authorize(
            self.load_for_update(&mut tx, order_id).await?,
            actor,
            Change::Pay,
        )?;
        let earlier: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT fingerprint, status, body FROM idempotency_keys \
             WHERE sub = $1 AND role = $2 AND route = $3 AND key = $4",
        )
        .bind(actor.sub)
        .bind(actor.role.as_str())
        .bind(PAYMENT_ROUTE)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((earlier_fingerprint, status, body)) = earlier {
            if earlier_fingerprint != fingerprint {
                return Err(StoreError::Invalid(
                    "Idempotency-Key was already used for a different payment".into(),
                ));
            }
            // Answers stored before payment responses stopped carrying the revenue totals
            // have a `revenue` field: the receipt type ignores it.
            let body: PaymentReceipt = serde_json::from_str(&body).map_err(|e| {
                StoreError::Corrupt(format!("stored answer of an idempotency key: {e}"))
            })?;
            return Ok(PaymentOutcome {
                status: status as u16,
                body,
                replayed: true,
            });
        }
        admissible(&order, actor, Change::Pay)?;
        if amount_paise <= 0 {
            return Err(StoreError::Invalid("amount_paise must be positive".into()));
        }
        if amount_paise != order.total_paise {
            return Err(StoreError::Invalid(format!(
                "amount_paise must equal the order total ({})",
                order.total_paise
            )));
        }
        let revenue = add_revenue(&mut tx, amount_paise).await?;
        let now = now_ms();
        let (payment_id,): (i64,) = sqlx::query_as(
            "INSERT INTO payments (order_id, amount_paise, payer, idempotency_key, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(order_id)
        .bind(amount_paise)
        .bind(actor.sub)
        .bind(key)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE orders SET paid = 1, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
        order.paid = true;
        order.updated_at = now;
        let payment = Payment {
            payment_id: payment_id.to_string(),
            order_id: order.id.clone(),
            amount_paise,
            paid_at: now,
        };
        enqueue_snapshot(&mut tx, &order_room(order_id), &order).await?;
        enqueue_snapshot(&mut tx, &Room::admin_revenue(), &revenue).await?;
        let revenue_event = RevenueUpdated {
            event_id: None,
            currency: revenue.currency,
            total_paise: revenue.total_paise,
            paid_orders: revenue.paid_orders,
            payment: Some(payment.clone()),
            refund: None,
        };
        enqueue(&mut tx, &Room::admin_revenue(), &revenue_event).await?;
        let paid = OrderPaid {
            event_id: None,
            payment: payment.clone(),
        };
        enqueue(&mut tx, &order_room(order_id), &paid).await?;
        let room = user_room(&order.customer)?;
        enqueue(&mut tx, &room, &paid).await?;
        enqueue(&mut tx, &Room::admin_orders(), &paid).await?;
        // The answer carries no revenue totals: those are admins' (`GET /api/revenue`,
        // `admin:revenue`), and the payer may be any customer.
        let body = PaymentReceipt {
            payment,
            status: PaymentStatus::Paid,
        };
        let stored =
            serde_json::to_string(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO idempotency_keys (sub, role, route, key, fingerprint, status, body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(actor.sub)
        .bind(actor.role.as_str())
        .bind(PAYMENT_ROUTE)
        .bind(key)
        .bind(&fingerprint)
        .bind(201_i64)
        .bind(stored)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.outbox_written.notify_one();
        Ok(PaymentOutcome {
            status: 201,
            body,
            replayed: false,
        })
    }

    /// Current revenue totals.
    pub async fn revenue(&self) -> Result<Revenue, StoreError> {
        let (total_paise, paid_orders): (i64, i64) =
            sqlx::query_as("SELECT total_paise, paid_orders FROM revenue WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(Revenue {
            currency: CURRENCY.into(),
            total_paise,
            paid_orders,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{order, stores};
    use switchyard_protocol::{OrderStatus, Role};

    fn customer(sub: &str) -> Actor<'_> {
        Actor {
            sub,
            role: Role::Customer,
        }
    }

    #[tokio::test]
    async fn a_key_pays_once() {
        for (_db, store) in stores().await {
            let id = order(&store, "u1", 13_000).await;
            let me = customer("u1");
            let first = store.pay(id, me, "k1", 13_000).await.unwrap();
            assert_eq!(first.status, 201);
            assert!(!first.replayed);
            let body = serde_json::to_value(&first.body).unwrap();
            assert!(body.get("revenue").is_none(), "{body}");
            let again = store.pay(id, me, "k1", 13_000).await.unwrap();
            assert!(again.replayed);
            assert_eq!(again.body, first.body);
            assert!(matches!(
                store.pay(id, me, "k2", 13_000).await,
                Err(StoreError::Conflict(_))
            ));
            assert!(matches!(
                store.pay(id, me, "k1", 12_000).await,
                Err(StoreError::Invalid(_))
            ));
            let revenue = store.revenue().await.unwrap();
            assert_eq!((revenue.total_paise, revenue.paid_orders), (13_000, 1));
            // created + revenue.updated + 2 × order.paid, and the snapshots of both rooms
            // (created; paid) and of the revenue
            // (the catalog's rows of the order's stock and the `admin:orders` feed aside)
            let rows = store.outbox_batch(100).await.unwrap();
            let count = |kind| {
                rows.iter()
                    .filter(|r| r.kind == kind && !r.room.starts_with("product:"))
                    .filter(|r| r.room != "admin:inventory" && r.room != "admin:orders")
                    .count()
            };
            assert_eq!(count(crate::outbox::OutboxKind::Event), 4);
            assert_eq!(count(crate::outbox::OutboxKind::Snapshot), 3);
        }
    }

    #[tokio::test]
    async fn keys_are_scoped_by_role_too() {
        for (_db, store) in stores().await {
            let id = order(&store, "c1", 500).await;
            store.pay(id, customer("c1"), "k", 500).await.unwrap();
            // An admin whose sub is "c1" sends c1's key: not a replay of c1's answer.
            let admin = Actor {
                sub: "c1",
                role: Role::Admin,
            };
            assert!(matches!(
                store.pay(id, admin, "k", 500).await,
                Err(StoreError::Conflict(_))
            ));
        }
    }

    #[tokio::test]
    async fn revenue_refuses_to_overflow_and_changes_nothing() {
        for (_db, store) in stores().await {
            let near = i64::MAX - 1_000;
            sqlx::query("UPDATE revenue SET total_paise = $1 WHERE id = 1")
                .bind(near)
                .execute(&store.pool)
                .await
                .unwrap();
            let big = order(&store, "c1", 5_000).await;
            let outbox_before = store.outbox_batch(100).await.unwrap().len();
            assert!(matches!(
                store.pay(big, customer("c1"), "k", 5_000).await,
                Err(StoreError::Conflict(_))
            ));
            let revenue = store.revenue().await.unwrap();
            assert_eq!((revenue.total_paise, revenue.paid_orders), (near, 0));
            assert!(!store.order(big).await.unwrap().unwrap().paid);
            assert_eq!(store.outbox_batch(100).await.unwrap().len(), outbox_before);
            // A payment that fits still goes through, up to the very last paisa.
            let small = order(&store, "c2", 1_000).await;
            store.pay(small, customer("c2"), "k", 1_000).await.unwrap();
            assert_eq!(store.revenue().await.unwrap().total_paise, i64::MAX);
        }
    }

    #[tokio::test]
    async fn cancelling_a_paid_order_refunds_it_once() {
        for (_db, store) in stores().await {
            let id = order(&store, "c1", 700).await;
            let other = order(&store, "c2", 300).await;
            store.pay(id, customer("c1"), "k", 700).await.unwrap();
            store.pay(other, customer("c2"), "k", 300).await.unwrap();
            let seen = store.outbox_batch(1_000).await.unwrap().len();
            let cancelled = store
                .change_status(id, customer("c1"), OrderStatus::Cancelled)
                .await
                .unwrap();
            assert!(cancelled.paid && cancelled.refunded);
            let revenue = store.revenue().await.unwrap();
            assert_eq!((revenue.total_paise, revenue.paid_orders), (300, 1));
            let events: Vec<_> = store.outbox_batch(1_000).await.unwrap()[seen..]
                .iter()
                .map(|e| (e.room.clone(), e.event.clone()))
                .collect();
            let room = format!("order:{id}");
            for want in [
                (room.as_str(), "order.status"),
                ("user:c1", "order.status"),
                (room.as_str(), "order.refunded"),
                ("user:c1", "order.refunded"),
                ("admin:revenue", "revenue.updated"),
                ("admin:orders", "order.status"),
                ("admin:orders", "order.refunded"),
            ] {
                assert!(
                    events.iter().any(|(r, e)| (r.as_str(), e.as_str()) == want),
                    "{want:?} in {events:?}"
                );
            }
            // Cancelled is final: no second cancellation, no second refund.
            assert!(matches!(
                store
                    .change_status(id, customer("c1"), OrderStatus::Cancelled)
                    .await,
                Err(StoreError::Conflict(_))
            ));
            let mut again = store.order(id).await.unwrap().unwrap();
            let mut tx = store.write_tx().await.unwrap();
            refund(&mut tx, &mut again).await.unwrap();
            tx.commit().await.unwrap();
            assert_eq!(store.revenue().await.unwrap().total_paise, 300);
            // And a cancelled order cannot be paid.
            let unpaid = order(&store, "c1", 100).await;
            store
                .change_status(unpaid, customer("c1"), OrderStatus::Cancelled)
                .await
                .unwrap();
            assert!(matches!(
                store.pay(unpaid, customer("c1"), "k2", 100).await,
                Err(StoreError::Conflict(_))
            ));
        }
    }
}
