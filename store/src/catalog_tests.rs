//! The catalog's guarantees on both engines: no oversell under concurrency, refusals that
//! name every line at fault and take nothing, units given back on cancel.

use crate::catalog::Deleted;
use crate::tests::stores;
use crate::{Actor, Store, StoreError};
use switchyard_protocol::catalog::{ProductPatch, ProductPut};
use switchyard_protocol::order::{Item, NewOrder, OrderLimits};
use switchyard_protocol::{ErrorCode, OrderStatus, Role};

async fn product(store: &Store, sku: &str, price_paise: i64, stock: i64) {
    let put = ProductPut {
        name: format!("{sku} name"),
        price_paise,
        stock,
    };
    store.put_product(sku, &put).await.unwrap();
}

fn line(sku: &str, qty: i64, unit_price_paise: Option<i64>) -> Item {
    Item {
        sku: sku.into(),
        qty,
        unit_price_paise,
    }
}

async fn place(store: &Store, items: Vec<Item>) -> Result<switchyard_protocol::Order, StoreError> {
    let new = NewOrder {
        items,
        address: "here".into(),
    };
    store
        .create_order("c1", &new, &OrderLimits::default())
        .await
}

const ADMIN: Actor<'static> = Actor {
    sub: "admin",
    role: Role::Admin,
};

async fn stock(store: &Store, sku: &str) -> i64 {
    store.product(sku).await.unwrap().unwrap().stock
}

/// 200 concurrent orders of one unit against a stock of 50: exactly 50 are placed, the 150
/// others are refused `out_of_stock`, and the stock ends at 0 — on each engine.
#[tokio::test]
async fn concurrent_orders_never_oversell() {
    for (db, store) in stores().await {
        product(&store, "milk-1l", 6500, 50).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let store = store.clone();
            tasks.spawn(async move { place(&store, vec![line("milk-1l", 1, None)]).await });
        }
        let (mut placed, mut refused) = (0, 0);
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                Ok(order) => {
                    assert_eq!(order.total_paise, 6500);
                    placed += 1;
                }
                Err(StoreError::Refused(r)) if r.error == ErrorCode::OutOfStock => refused += 1,
                Err(e) => panic!("{:?}: {e}", db.engine),
            }
        }
        assert_eq!((placed, refused), (50, 150), "{:?}", db.engine);
        assert_eq!(stock(&store, "milk-1l").await, 0, "{:?}", db.engine);
    }
}

/// The server's price, never the client's; a stale price or a short line refuses the whole
/// order, names every line at fault, and takes nothing.
#[tokio::test]
async fn refusals_name_every_line_and_take_nothing() {
    for (db, store) in stores().await {
        product(&store, "a", 100, 5).await;
        product(&store, "b", 200, 1).await;
        product(&store, "c", 300, 0).await;
        let order = place(&store, vec![line("a", 2, None), line("b", 1, Some(200))])
            .await
            .unwrap();
        assert_eq!(order.total_paise, 400, "{:?}", db.engine);
        assert_eq!(order.items[0].name, "a name");
        assert_eq!(order.items[0].unit_price_paise, 100);
        let Err(StoreError::Refused(stale)) =
            place(&store, vec![line("a", 1, Some(1)), line("c", 1, Some(2))]).await
        else {
            panic!("{:?}: a stale price was accepted", db.engine)
        };
        assert_eq!(stale.error, ErrorCode::PriceChanged);
        let prices: Vec<_> = stale
            .items
            .iter()
            .map(|l| (l.sku.as_str(), l.price_paise))
            .collect();
        assert_eq!(prices, [("a", Some(100)), ("c", Some(300))]);
        let Err(StoreError::Refused(short)) = place(
            &store,
            vec![line("a", 4, None), line("b", 1, None), line("c", 1, None)],
        )
        .await
        else {
            panic!("{:?}: oversold", db.engine)
        };
        assert_eq!(short.error, ErrorCode::OutOfStock);
        let available: Vec<_> = short
            .items
            .iter()
            .map(|l| (l.sku.as_str(), l.available))
            .collect();
        assert_eq!(available, [("a", Some(3)), ("b", Some(0)), ("c", Some(0))]);
        assert!(short.message.contains("a has 3 left"), "{}", short.message);
        assert!(matches!(
            place(&store, vec![line("nope", 1, None)]).await,
            Err(StoreError::Invalid(m)) if m.contains("\"nope\"")
        ));
        assert_eq!((stock(&store, "a").await, stock(&store, "b").await), (3, 0));
    }
}

/// Cancelling gives the units back; a restock adds to the stock as it is; a delta that would
/// go below zero is refused.
#[tokio::test]
async fn cancel_restores_and_deltas_are_checked() {
    for (db, store) in stores().await {
        product(&store, "a", 100, 10).await;
        let order = place(&store, vec![line("a", 4, None)]).await.unwrap();
        assert_eq!(stock(&store, "a").await, 6);
        let id = order.id.parse().unwrap();
        store
            .change_status(id, ADMIN, OrderStatus::Cancelled)
            .await
            .unwrap();
        assert_eq!(stock(&store, "a").await, 10, "{:?}", db.engine);
        let restock = ProductPatch {
            stock_delta: Some(5),
            ..ProductPatch::default()
        };
        assert_eq!(store.patch_product("a", &restock).await.unwrap().stock, 15);
        let too_much = ProductPatch {
            stock_delta: Some(-16),
            ..ProductPatch::default()
        };
        assert!(matches!(
            store.patch_product("a", &too_much).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.patch_product("zzz", &restock).await,
            Err(StoreError::UnknownProduct)
        ));
    }
}

/// A cancellation that would take the stock over [`MAX_STOCK`] (an admin set it near the
/// maximum after the order took its units) is refused with a clear conflict, and changes
/// nothing: the order stays, the stock stays.
#[tokio::test]
async fn a_cancellation_never_takes_the_stock_over_the_maximum() {
    use switchyard_protocol::catalog::MAX_STOCK;
    for (db, store) in stores().await {
        product(&store, "a", 100, 10).await;
        let order = place(&store, vec![line("a", 4, None)]).await.unwrap();
        product(&store, "a", 100, MAX_STOCK - 1).await;
        let id = order.id.parse().unwrap();
        match store.change_status(id, ADMIN, OrderStatus::Cancelled).await {
            Err(StoreError::Conflict(message)) => {
                assert!(message.contains("over 1000000000"), "{message}")
            }
            other => panic!("{:?}: {other:?}", db.engine),
        }
        assert_eq!(stock(&store, "a").await, MAX_STOCK - 1, "{:?}", db.engine);
        let kept = store.order(id).await.unwrap().unwrap();
        assert_eq!(kept.status, OrderStatus::Placed, "{:?}", db.engine);
    }
}

/// A product open orders hold is kept, discontinued and not orderable; one nobody holds is
/// removed.
#[tokio::test]
async fn delete_keeps_what_open_orders_hold() {
    for (db, store) in stores().await {
        product(&store, "held", 100, 10).await;
        product(&store, "free", 100, 10).await;
        place(&store, vec![line("held", 1, None)]).await.unwrap();
        let Deleted::Discontinued(kept) = store.delete_product("held").await.unwrap() else {
            panic!("{:?}: a product an open order holds was removed", db.engine)
        };
        assert!(kept.discontinued);
        assert!(store.product("held").await.unwrap().unwrap().discontinued);
        assert!(matches!(
            place(&store, vec![line("held", 1, None)]).await,
            Err(StoreError::Invalid(m)) if m.contains("no longer sold")
        ));
        assert_eq!(
            store.delete_product("free").await.unwrap(),
            Deleted::Removed
        );
        assert_eq!(store.product("free").await.unwrap(), None);
        // Sold again after a PUT.
        product(&store, "held", 150, 3).await;
        assert!(!store.product("held").await.unwrap().unwrap().discontinued);
    }
}

/// The demo catalog is seeded once in the life of a database.
#[tokio::test]
async fn the_demo_catalog_is_seeded_once() {
    for (db, store) in stores().await {
        assert!(store.seed_demo_catalog().await.unwrap(), "{:?}", db.engine);
        let all = store.list_products("", 200).await.unwrap();
        assert_eq!(all.len(), crate::catalog::DEMO_CATALOG.len());
        store.delete_product("milk-1l").await.unwrap();
        assert!(!store.seed_demo_catalog().await.unwrap());
        assert_eq!(store.product("milk-1l").await.unwrap(), None);
        let page = store.list_products("eggs-12", 3).await.unwrap();
        assert!(page.iter().all(|p| p.sku.as_str() > "eggs-12"));
        assert_eq!(page.len(), 3);
    }
}

/// Every stock change writes the product room's snapshot and `stock.updated` to the product's
/// room and `admin:inventory`, in the transaction; crossing the threshold adds `stock.low`,
/// reaching zero `stock.out`.
#[tokio::test]
async fn stock_changes_go_out_through_the_outbox() {
    for (db, store) in stores().await {
        let store = store.with_low_stock_threshold(3);
        product(&store, "a", 100, 5).await;
        let seen = store.outbox_batch(1_000).await.unwrap().len();
        place(&store, vec![line("a", 2, None)]).await.unwrap();
        place(&store, vec![line("a", 3, None)]).await.unwrap();
        let rows = store.outbox_batch(1_000).await.unwrap();
        let stock: Vec<(String, String, String)> = rows[seen..]
            .iter()
            .filter(|r| r.room == "product:a" || r.room == "admin:inventory")
            .map(|r| {
                let data: serde_json::Value = serde_json::from_str(&r.data).unwrap();
                (r.room.clone(), r.event.clone(), data["stock"].to_string())
            })
            .collect();
        let want = [
            ("product:a", "", "3"),
            ("product:a", "stock.updated", "3"),
            ("admin:inventory", "stock.updated", "3"),
            ("admin:inventory", "stock.low", "3"),
            ("product:a", "", "0"),
            ("product:a", "stock.updated", "0"),
            ("admin:inventory", "stock.updated", "0"),
            ("admin:inventory", "stock.out", "0"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(stock, want, "{:?}", db.engine);
    }
}

/// Concurrent first `PUT`s of one SKU: one creates it, the others replace it; none fails.
#[tokio::test]
async fn concurrent_first_puts_create_once() {
    for (db, store) in stores().await {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let store = store.clone();
            tasks.spawn(async move {
                let put = ProductPut {
                    name: "Tea".into(),
                    price_paise: 250 + i,
                    stock: 10,
                };
                store.put_product("tea", &put).await
            });
        }
        let mut created = 0;
        while let Some(joined) = tasks.join_next().await {
            let (_, was_created) = joined
                .unwrap()
                .unwrap_or_else(|e| panic!("{:?}: {e}", db.engine));
            created += usize::from(was_created);
        }
        assert_eq!(created, 1, "{:?}", db.engine);
    }
}
