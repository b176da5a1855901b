//! Idempotent payments and the revenue totals they move.
//!
//! One `BEGIN IMMEDIATE` transaction per payment request: look up the idempotency key,
//! check the order, insert the payment, add to the totals, write the events and the key's
//! answer, commit. Writers are serialized by the database lock, so two payments never read
//! the same totals, and a repeated key finds the first request's answer.

use crate::orders::{can_see, load_for_update};
use crate::outbox::enqueue;
use crate::{Actor, Store, StoreError, now_ms};
use serde_json::{Value, json};
use switchyard_protocol::{OrderStatus, Revenue, Room, events};

/// The answer to a payment request, as first computed; replays return it unchanged.
#[derive(Debug, Clone)]
pub struct PaymentOutcome {
    /// HTTP status of the answer (201 for the first success).
    pub status: u16,
    pub body: Value,
    /// True when this is a repeat of an earlier request with the same key.
    pub replayed: bool,
}

pub const CURRENCY: &str = "INR";

impl Store {
    /// Pays order `order_id` with `amount_paise`, once per (caller, `key`).
    pub async fn pay(
        &self,
        order_id: i64,
        actor: Actor<'_>,
        key: &str,
        amount_paise: i64,
    ) -> Result<PaymentOutcome, StoreError> {
        let fingerprint = format!("{order_id}:{amount_paise}");
        let mut tx = self.write_tx().await?;
        let earlier: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT fingerprint, status, body FROM idempotency_keys WHERE actor = $1 AND key = $2",
        )
        .bind(actor.sub)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((earlier_fingerprint, status, body)) = earlier {
            if earlier_fingerprint != fingerprint {
                return Err(StoreError::Invalid(
                    "Idempotency-Key was already used for a different payment".into(),
                ));
            }
            let body =
                serde_json::from_str(&body).map_err(|e| StoreError::Invalid(e.to_string()))?;
            return Ok(PaymentOutcome {
                status: status as u16,
                body,
                replayed: true,
            });
        }
        let mut order = load_for_update(&mut tx, order_id)
            .await?
            .filter(|o| can_see(o, actor))
            .ok_or(StoreError::NotFound)?;
        if actor.role == switchyard_protocol::Role::Partner {
            return Err(StoreError::Forbidden(
                "only the customer who placed the order or an admin may pay".into(),
            ));
        }
        if order.paid {
            return Err(StoreError::Conflict("order is already paid".into()));
        }
        if order.status == OrderStatus::Cancelled {
            return Err(StoreError::Conflict("order is cancelled".into()));
        }
        if amount_paise != order.total_paise {
            return Err(StoreError::Invalid(format!(
                "amount_paise must equal the order total ({})",
                order.total_paise
            )));
        }
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
        let (total_paise, paid_orders): (i64, i64) = sqlx::query_as(
            "UPDATE revenue SET total_paise = total_paise + $1, paid_orders = paid_orders + 1 \
             WHERE id = 1 RETURNING total_paise, paid_orders",
        )
        .bind(amount_paise)
        .fetch_one(&mut *tx)
        .await?;
        order.paid = true;
        order.updated_at = now;
        let revenue = Revenue {
            currency: CURRENCY.into(),
            total_paise,
            paid_orders,
        };
        let payment = json!({
            "payment_id": payment_id.to_string(),
            "order_id": order.id,
            "amount_paise": amount_paise,
            "paid_at": now,
        });
        let mut revenue_event = serde_json::to_value(&revenue).unwrap_or_default();
        revenue_event["payment"] = payment.clone();
        enqueue(
            &mut tx,
            &Room::admin_revenue(),
            events::REVENUE_UPDATED,
            &revenue_event,
        )
        .await?;
        if let Ok(room) = Room::order(&order.id) {
            enqueue(&mut tx, &room, events::ORDER_PAID, &payment).await?;
        }
        if let Ok(room) = Room::user(&order.customer) {
            enqueue(&mut tx, &room, events::ORDER_PAID, &payment).await?;
        }
        let mut body = payment;
        body["status"] = json!("paid");
        body["revenue"] = serde_json::to_value(&revenue).unwrap_or_default();
        sqlx::query(
            "INSERT INTO idempotency_keys (actor, key, fingerprint, status, body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(actor.sub)
        .bind(key)
        .bind(&fingerprint)
        .bind(201_i64)
        .bind(body.to_string())
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
    use switchyard_protocol::Role;
    use switchyard_protocol::order::{Item, NewOrder};

    async fn store() -> Store {
        Store::open("sqlite::memory:").await.unwrap()
    }

    #[tokio::test]
    async fn a_key_pays_once() {
        let store = store().await;
        let new = NewOrder {
            items: vec![Item {
                sku: "milk".into(),
                qty: 2,
                unit_price_paise: 6500,
            }],
            address: "here".into(),
        };
        let order = store.create_order("u1", &new, 13_000).await.unwrap();
        let id: i64 = order.id.parse().unwrap();
        let me = Actor {
            sub: "u1",
            role: Role::Customer,
        };
        let first = store.pay(id, me, "k1", 13_000).await.unwrap();
        assert_eq!(first.status, 201);
        assert!(!first.replayed);
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
        // created + revenue.updated + 2 × order.paid
        assert_eq!(store.outbox_batch(100).await.unwrap().len(), 4);
    }
}
