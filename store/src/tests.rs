//! The store's guarantees under concurrent writers, on both engines: a fresh SQLite file and a
//! fresh database on the shared test PostgreSQL server per test (see [`crate::testing`]).

use crate::testing::TestDatabase;
use crate::{Actor, Store, StoreError};
use std::collections::BTreeSet;
use switchyard_protocol::catalog::ProductPut;
use switchyard_protocol::order::{Item, NewOrder, OrderLimits};
use switchyard_protocol::{OrderStatus, Role};

/// A fresh store on each engine (the database lives as long as the first half).
pub(crate) async fn stores() -> Vec<(TestDatabase, Store)> {
    let mut stores = Vec::new();
    for db in TestDatabase::each_engine().await {
        let store = db.open().await;
        stores.push((db, store));
    }
    stores
}

/// Places an order of `customer` for `total` paise (one unit of a product at that price,
/// created if missing); returns its id.
pub(crate) async fn order(store: &Store, customer: &str, total: i64) -> i64 {
    let sku = format!("p{total}");
    if store.product(&sku).await.unwrap().is_none() {
        let put = ProductPut {
            name: sku.clone(),
            price_paise: total,
            stock: 1_000_000,
        };
        store.put_product(&sku, &put).await.unwrap();
    }
    let new = NewOrder {
        items: vec![Item {
            sku,
            qty: 1,
            unit_price_paise: None,
        }],
        address: "here".into(),
    };
    let order = store
        .create_order(customer, &new, &OrderLimits::default())
        .await
        .unwrap();
    order.id.parse().unwrap()
}

const ADMIN: Actor<'static> = Actor {
    sub: "admin",
    role: Role::Admin,
};

/// Many concurrent requests per key, several keys: each key pays once, every duplicate gets
/// the first answer, and the revenue is exactly the sum of the payments.
#[tokio::test]
async fn concurrent_duplicates_pay_once() {
    for (db, store) in stores().await {
        let mut orders = Vec::new();
        for i in 0..10 {
            orders.push((order(&store, &format!("c{i}"), 100 + i).await, i));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            for &(id, i) in &orders {
                let store = store.clone();
                tasks.spawn(async move {
                    let sub = format!("c{i}");
                    let me = Actor {
                        sub: &sub,
                        role: Role::Customer,
                    };
                    let outcome = store.pay(id, me, &format!("key-{i}"), 100 + i).await;
                    (id, outcome.map_err(|e| e.to_string()))
                });
            }
        }
        let mut firsts = BTreeSet::new();
        let mut receipts = std::collections::HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (id, outcome) = joined.unwrap();
            let outcome = outcome.unwrap_or_else(|e| panic!("{:?}: {e}", db.engine));
            if !outcome.replayed {
                assert!(firsts.insert(id), "{:?}: order {id} paid twice", db.engine);
            }
            let body = serde_json::to_string(&outcome.body).unwrap();
            let first = receipts.entry(id).or_insert_with(|| body.clone());
            assert_eq!(
                *first, body,
                "{:?}: a replay answered differently",
                db.engine
            );
        }
        assert_eq!(firsts.len(), 10, "{:?}", db.engine);
        let revenue = store.revenue().await.unwrap();
        let sum: i64 = (0..10).map(|i| 100 + i).sum();
        assert_eq!((revenue.total_paise, revenue.paid_orders), (sum, 10));
    }
}

/// One key sent for two orders at once: one payment, and the other request is told the key
/// was used for a different payment — never a second payment, never a server error.
#[tokio::test]
async fn one_key_raced_on_two_orders_pays_one() {
    for (db, store) in stores().await {
        let me = Actor {
            sub: "c1",
            role: Role::Admin,
        };
        for round in 0..5 {
            let a = order(&store, "c1", 500).await;
            let b = order(&store, "c1", 500).await;
            let key = format!("shared-{round}");
            let (one, two) = tokio::join!(store.pay(a, me, &key, 500), store.pay(b, me, &key, 500));
            let paid = [&one, &two].iter().filter(|r| r.is_ok()).count();
            assert_eq!(paid, 1, "{:?}: {one:?} {two:?}", db.engine);
            let refused = if one.is_ok() { two } else { one };
            assert!(
                matches!(refused, Err(StoreError::Invalid(_))),
                "{:?}: {refused:?}",
                db.engine
            );
        }
        assert_eq!(store.revenue().await.unwrap().paid_orders, 5);
    }
}

/// Racing status changes on one order: each accepted change is a valid transition from the
/// state the previous accepted change left, and the events tell exactly that story.
#[tokio::test]
async fn racing_status_changes_lose_no_update() {
    use OrderStatus::*;
    for (db, store) in stores().await {
        let id = order(&store, "c1", 100).await;
        let seen = store.outbox_batch(1_000).await.unwrap().len();
        let targets = [Confirmed, Packed, OutForDelivery, Delivered, Cancelled];
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..40 {
            let store = store.clone();
            let to = targets[n % targets.len()];
            tasks.spawn(async move { store.change_status(id, ADMIN, to).await });
        }
        let mut accepted = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                Ok(_) => accepted += 1,
                Err(StoreError::Conflict(_)) => {}
                Err(err) => panic!("{:?}: {err}", db.engine),
            }
        }
        #[derive(serde::Deserialize)]
        struct Changed {
            status: OrderStatus,
            previous: OrderStatus,
        }
        let room = format!("order:{id}");
        let changes: Vec<Changed> = store.outbox_batch(1_000).await.unwrap()[seen..]
            .iter()
            .filter(|e| e.room == room && e.event == "order.status")
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(changes.len(), accepted, "{:?}", db.engine);
        let mut state = Placed;
        for change in &changes {
            assert_eq!(change.previous, state, "{:?}: a lost update", db.engine);
            assert!(state.can_become(change.status), "{:?}", db.engine);
            state = change.status;
        }
        assert!(state.is_final(), "{:?}: {state}", db.engine);
        assert_eq!(store.order(id).await.unwrap().unwrap().status, state);
    }
}

/// The relay lease: of many relays asking at once exactly one holds it; it renews; another
/// takes it once it expires (a zero lifetime: expired at once) or is released.
#[tokio::test]
async fn one_relay_holds_the_lease() {
    for (db, store) in stores().await {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..20 {
            let store = store.clone();
            tasks.spawn(async move { store.relay_lease(&format!("relay-{n}"), 60_000).await });
        }
        let mut holders = 0;
        while let Some(joined) = tasks.join_next().await {
            holders += usize::from(joined.unwrap().unwrap());
        }
        assert_eq!(holders, 1, "{:?}", db.engine);
        // Start over from a known holder: everyone's lease ends when released.
        sqlx::query("DELETE FROM relay_lease")
            .execute(&store.pool)
            .await
            .unwrap();
        assert!(store.relay_lease("a", 60_000).await.unwrap());
        assert!(store.relay_lease("a", 60_000).await.unwrap(), "renewal");
        assert!(!store.relay_lease("b", 60_000).await.unwrap());
        store.release_relay_lease("a").await.unwrap();
        assert!(
            store.relay_lease("b", 0).await.unwrap(),
            "released: b takes it"
        );
        // b's lease had no lifetime: it is expired, as if b had been killed.
        assert!(
            store.relay_lease("a", 60_000).await.unwrap(),
            "expired: a takes it"
        );
    }
}

/// The published rows are deleted exactly, whatever else is in the outbox.
#[tokio::test]
async fn outbox_rows_are_deleted_by_id() {
    for (db, store) in stores().await {
        for i in 0..3 {
            order(&store, &format!("c{i}"), 100).await;
        }
        let rows = store.outbox_batch(1_000).await.unwrap();
        // The product's creation (its room's snapshot, `stock.updated` to its room and to
        // `admin:inventory`), then per order the same for its stock, and the order's snapshot
        // and its `order.created` to the customer and to `admin:orders`.
        assert_eq!(rows.len(), 3 + 3 * 6, "{:?}", db.engine);
        let ids: Vec<i64> = rows.iter().map(|r| r.id).step_by(2).collect();
        store.outbox_done(&ids).await.unwrap();
        let left: Vec<i64> = store
            .outbox_batch(1_000)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        let want: Vec<i64> = rows.iter().map(|r| r.id).skip(1).step_by(2).collect();
        assert_eq!(left, want, "{:?}", db.engine);
        assert_eq!(store.outbox_backlog().await.unwrap().0, 10);
    }
}
