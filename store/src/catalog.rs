//! The catalog: products, their prices and stock; the reservation an order makes and the
//! units a cancellation gives back.
//!
//! # Stock never goes below zero
//! An order reserves its units in the transaction that inserts it (with its outbox rows):
//! it locks its products first, in SKU order (`SELECT … FOR UPDATE` on PostgreSQL; SQLite's
//! write transaction holds the whole database), checks every line against them, and only then
//! takes the units. So under any concurrency, on either engine, an order either holds all of
//! its units or none, and `stock` (also `CHECK (stock >= 0)`) never goes below zero. Locks are
//! always taken in one order — an order row before products, products by SKU — so two writers
//! never wait on each other in a cycle.

use crate::outbox::{enqueue, enqueue_snapshot};
use crate::{Store, StoreError, Tx, now_ms};
use std::collections::BTreeMap;
use switchyard_protocol::catalog::{
    CatalogRefusal, LineProblem, MAX_STOCK, Product, ProductPatch, ProductPut, StockLevel,
};
use switchyard_protocol::events::{StockLow, StockOut, StockUpdated};
use switchyard_protocol::order::{Item, OrderLimits, OrderLine, order_total};
use switchyard_protocol::{ErrorCode, OrderStatus, Room};

#[derive(sqlx::FromRow)]
struct ProductRow {
    sku: String,
    name: String,
    price_paise: i64,
    stock: i64,
    discontinued: i64,
    updated_at: i64,
}

const COLUMNS: &str = "sku, name, price_paise, stock, discontinued, updated_at";

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Product {
        Product {
            sku: row.sku,
            name: row.name,
            price_paise: row.price_paise,
            stock: row.stock,
            discontinued: row.discontinued != 0,
            updated_at: row.updated_at,
        }
    }
}

/// What `DELETE /api/products/{sku}` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// No open order held it: gone.
    Removed,
    /// Open orders hold it: kept, readable, no longer orderable.
    Discontinued(Product),
}

/// The demo catalog the embedded mode starts with: (SKU, name, price in paise, stock).
pub const DEMO_CATALOG: [(&str, &str, i64, i64); 20] = [
    ("milk-1l", "Toned milk, 1 l", 6500, 500),
    ("bread-400g", "Whole wheat bread, 400 g", 4500, 300),
    ("eggs-12", "Eggs, 12", 9900, 300),
    ("curd-400g", "Curd, 400 g", 5500, 300),
    ("paneer-200g", "Paneer, 200 g", 9000, 200),
    ("butter-100g", "Butter, 100 g", 5800, 200),
    ("rice-5kg", "Basmati rice, 5 kg", 64900, 100),
    ("atta-5kg", "Whole wheat atta, 5 kg", 27900, 100),
    ("dal-1kg", "Toor dal, 1 kg", 17900, 150),
    ("sugar-1kg", "Sugar, 1 kg", 4800, 200),
    ("salt-1kg", "Iodised salt, 1 kg", 2800, 200),
    ("oil-1l", "Sunflower oil, 1 l", 15500, 150),
    ("tea-250g", "Tea leaves, 250 g", 14000, 150),
    ("coffee-200g", "Filter coffee, 200 g", 19900, 100),
    ("onion-1kg", "Onions, 1 kg", 3900, 400),
    ("tomato-1kg", "Tomatoes, 1 kg", 3500, 400),
    ("potato-1kg", "Potatoes, 1 kg", 3200, 400),
    ("banana-6", "Bananas, 6", 4900, 300),
    ("apple-1kg", "Apples, 1 kg", 18900, 150),
    ("biscuits-200g", "Glucose biscuits, 200 g", 2000, 500),
];

/// The next `updated_at` of a product: now, and strictly after its last one, so events of one
/// product can be ordered by it (latest wins).
fn next_updated_at(previous: Option<i64>) -> i64 {
    let now = now_ms();
    previous.map_or(now, |p| now.max(p + 1))
}

impl Store {
    /// The product `sku`, discontinued or not.
    pub async fn product(&self, sku: &str) -> Result<Option<Product>, StoreError> {
        let row: Option<ProductRow> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM products WHERE sku = $1"))
                .bind(sku)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(Product::from))
    }

    /// Products with a SKU after `after`, in SKU order, at most `limit`.
    pub async fn list_products(&self, after: &str, limit: i64) -> Result<Vec<Product>, StoreError> {
        let rows: Vec<ProductRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM products WHERE sku > $1 ORDER BY sku LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Product::from).collect())
    }

    /// The products `skus` (sorted, distinct), locked until `tx` ends, by SKU.
    async fn lock_products(
        &self,
        tx: &mut Tx,
        skus: &[&str],
    ) -> Result<BTreeMap<String, Product>, StoreError> {
        if skus.is_empty() {
            return Ok(BTreeMap::new());
        }
        let list: Vec<String> = (1..=skus.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM products WHERE sku IN ({}) ORDER BY sku{}",
            list.join(", "),
            self.engine.for_update()
        );
        let mut query = sqlx::query_as::<_, ProductRow>(&sql);
        for sku in skus {
            query = query.bind(*sku);
        }
        let rows = query.fetch_all(&mut **tx).await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.sku.clone(), Product::from(row)))
            .collect())
    }

    async fn lock_product(&self, tx: &mut Tx, sku: &str) -> Result<Option<Product>, StoreError> {
        Ok(self.lock_products(tx, &[sku]).await?.remove(sku))
    }

    /// Writes `product` (all its fields) inside `tx`.
    async fn write_product(tx: &mut Tx, product: &Product, insert: bool) -> Result<(), StoreError> {
        let sql = if insert {
            "INSERT INTO products (name, price_paise, stock, discontinued, updated_at, sku) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        } else {
            "UPDATE products SET name = $1, price_paise = $2, stock = $3, discontinued = $4, \
             updated_at = $5 WHERE sku = $6"
        };
        sqlx::query(sql)
            .bind(&product.name)
            .bind(product.price_paise)
            .bind(product.stock)
            .bind(i64::from(product.discontinued))
            .bind(product.updated_at)
            .bind(&product.sku)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Creates or replaces `sku` (admins); a discontinued product is sold again. Returns the
    /// product and whether it was created. Two first `PUT`s of one SKU at once: one creates
    /// it, the other (its insert finding the row there) is retried once and replaces it.
    pub async fn put_product(
        &self,
        sku: &str,
        put: &ProductPut,
    ) -> Result<(Product, bool), StoreError> {
        match self.try_put_product(sku, put).await? {
            Some(done) => Ok(done),
            None => self
                .try_put_product(sku, put)
                .await?
                .ok_or_else(|| StoreError::Conflict(format!("{sku} is being written; retry"))),
        }
    }

    /// One attempt of [`Store::put_product`]; `None` when a concurrent first `PUT` created the
    /// row between this one's read and its insert (nothing was written).
    async fn try_put_product(
        &self,
        sku: &str,
        put: &ProductPut,
    ) -> Result<Option<(Product, bool)>, StoreError> {
        let mut tx = self.write_tx().await?;
        let current = self.lock_product(&mut tx, sku).await?;
        let product = Product {
            sku: sku.to_owned(),
            name: put.name.trim().to_owned(),
            price_paise: put.price_paise,
            stock: put.stock,
            discontinued: false,
            updated_at: next_updated_at(current.as_ref().map(|p| p.updated_at)),
        };
        if current.is_some() {
            Self::write_product(&mut tx, &product, false).await?;
        } else {
            let inserted = sqlx::query(
                "INSERT INTO products (sku, name, price_paise, stock, discontinued, updated_at) \
                 VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (sku) DO NOTHING",
            )
            .bind(sku)
            .bind(&product.name)
            .bind(product.price_paise)
            .bind(product.stock)
            .bind(product.updated_at)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Ok(None);
            }
        }
        let previous = current.as_ref().map_or(0, |p| p.stock);
        self.stock_changed(&mut tx, &product, previous).await?;
        tx.commit().await?;
        self.outbox_written.notify_one();
        Ok(Some((product, current.is_none())))
    }

    /// Changes some fields of `sku`, or its stock by a delta (admins). 404 when it does not
    /// exist; 409 when the delta would take the stock below 0 or over [`MAX_STOCK`].
    pub async fn patch_product(
        &self,
        sku: &str,
        patch: &ProductPatch,
    ) -> Result<Product, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut product = self
            .lock_product(&mut tx, sku)
            .await?
            .ok_or(StoreError::UnknownProduct)?;
        let previous = product.stock;
        if let Some(name) = &patch.name {
            product.name = name.trim().to_owned();
        }
        if let Some(price) = patch.price_paise {
            product.price_paise = price;
        }
        if let Some(stock) = patch.stock {
            product.stock = stock;
        }
        if let Some(delta) = patch.stock_delta {
            product.stock = product
                .stock
                .checked_add(delta)
                .filter(|s| (0..=MAX_STOCK).contains(s))
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "stock_delta {delta} would take the stock of {sku} from {previous} outside 0 to {MAX_STOCK}"
                    ))
                })?;
        }
        product.updated_at = next_updated_at(Some(product.updated_at));
        Self::write_product(&mut tx, &product, false).await?;
        self.stock_changed(&mut tx, &product, previous).await?;
        tx.commit().await?;
        self.outbox_written.notify_one();
        Ok(product)
    }

    /// Deletes `sku` (admins): removed when no open order holds it, else kept as
    /// discontinued. 404 when it does not exist.
    pub async fn delete_product(&self, sku: &str) -> Result<Deleted, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut product = self
            .lock_product(&mut tx, sku)
            .await?
            .ok_or(StoreError::UnknownProduct)?;
        let (open,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM order_lines l JOIN orders o ON o.id = l.order_id \
             WHERE l.sku = $1 AND o.status NOT IN ($2, $3)",
        )
        .bind(sku)
        .bind(OrderStatus::Delivered.as_str())
        .bind(OrderStatus::Cancelled.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let deleted = if open > 0 {
            product.discontinued = true;
            product.updated_at = next_updated_at(Some(product.updated_at));
            Self::write_product(&mut tx, &product, false).await?;
            self.stock_changed(&mut tx, &product, product.stock).await?;
            Deleted::Discontinued(product)
        } else {
            sqlx::query("DELETE FROM products WHERE sku = $1")
                .bind(sku)
                .execute(&mut *tx)
                .await?;
            // The room's snapshot: no product.
            enqueue_snapshot(&mut tx, &product_room(sku)?, &None::<Product>).await?;
            Deleted::Removed
        };
        tx.commit().await?;
        self.outbox_written.notify_one();
        Ok(deleted)
    }

    /// Checks `items` against the catalog inside `tx` and takes their units: the lines as
    /// ordered (the catalog's names and prices) and the total. Refused, with nothing taken:
    /// an unknown or discontinued SKU or a total over the cap (422), a price the client sent
    /// that is not the current one (409 `price_changed`, every such line), more units than
    /// there are (409 `out_of_stock`, every short line with what is available).
    pub(crate) async fn reserve(
        &self,
        tx: &mut Tx,
        items: &[Item],
        limits: &OrderLimits,
    ) -> Result<(Vec<OrderLine>, i64), StoreError> {
        let mut skus: Vec<&str> = items.iter().map(|i| i.sku.as_str()).collect();
        skus.sort_unstable();
        skus.dedup();
        let mut products = self.lock_products(tx, &skus).await?;
        let mut lines = Vec::with_capacity(items.len());
        let (mut stale, mut short) = (Vec::new(), Vec::new());
        for (i, item) in items.iter().enumerate() {
            let product = match products.get(&item.sku) {
                Some(p) if !p.discontinued => p,
                Some(_) => {
                    return Err(StoreError::Invalid(format!(
                        "items[{i}].sku {:?} is no longer sold",
                        item.sku
                    )));
                }
                None => {
                    return Err(StoreError::Invalid(format!(
                        "items[{i}].sku {:?} is not in the catalog",
                        item.sku
                    )));
                }
            };
            if item
                .unit_price_paise
                .is_some_and(|p| p != product.price_paise)
            {
                stale.push(LineProblem {
                    sku: item.sku.clone(),
                    price_paise: Some(product.price_paise),
                    available: None,
                });
            }
            if item.qty > product.stock {
                short.push(LineProblem {
                    sku: item.sku.clone(),
                    price_paise: None,
                    available: Some(product.stock),
                });
            }
            lines.push(OrderLine {
                sku: item.sku.clone(),
                name: product.name.clone(),
                qty: item.qty,
                unit_price_paise: product.price_paise,
            });
        }
        let total = order_total(&lines, limits).map_err(StoreError::Invalid)?;
        if !stale.is_empty() {
            return Err(refusal(ErrorCode::PriceChanged, stale));
        }
        if !short.is_empty() {
            return Err(refusal(ErrorCode::OutOfStock, short));
        }
        for line in &lines {
            let Some(product) = products.get_mut(&line.sku) else {
                continue;
            };
            let previous = product.stock;
            product.stock -= line.qty;
            product.updated_at = next_updated_at(Some(product.updated_at));
            // Guarded as well: the row lock makes the check above hold, this keeps it so.
            let taken = sqlx::query(
                "UPDATE products SET stock = stock - $1, updated_at = $2 \
                 WHERE sku = $3 AND stock >= $1",
            )
            .bind(line.qty)
            .bind(product.updated_at)
            .bind(&line.sku)
            .execute(&mut **tx)
            .await?;
            if taken.rows_affected() != 1 {
                return Err(refusal(
                    ErrorCode::OutOfStock,
                    vec![LineProblem {
                        sku: line.sku.clone(),
                        price_paise: None,
                        available: Some(previous),
                    }],
                ));
            }
            let product = product.clone();
            self.stock_changed(tx, &product, previous).await?;
        }
        Ok((lines, total))
    }

    /// Records the lines of order `id` by SKU inside `tx` (see [`Store::release`]).
    pub(crate) async fn record_lines(
        tx: &mut Tx,
        id: i64,
        lines: &[OrderLine],
    ) -> Result<(), StoreError> {
        for line in lines {
            sqlx::query("INSERT INTO order_lines (order_id, sku, qty) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(&line.sku)
                .bind(line.qty)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Gives the units order `id` reserved back to the catalog inside `tx` (a cancellation).
    /// Returns the SKUs whose stock moved. Orders placed before the catalog existed reserved
    /// nothing and give nothing back.
    pub(crate) async fn release(&self, tx: &mut Tx, id: i64) -> Result<Vec<String>, StoreError> {
        let lines: Vec<(String, i64)> =
            sqlx::query_as("SELECT sku, qty FROM order_lines WHERE order_id = $1 ORDER BY sku")
                .bind(id)
                .fetch_all(&mut **tx)
                .await?;
        let skus: Vec<&str> = lines.iter().map(|(sku, _)| sku.as_str()).collect();
        let mut products = self.lock_products(tx, &skus).await?;
        let mut moved = Vec::new();
        for (sku, qty) in &lines {
            let Some(product) = products.get_mut(sku) else {
                continue;
            };
            let previous = product.stock;
            // An admin may have set the stock near the maximum since the order took its units.
            product.stock = product
                .stock
                .checked_add(*qty)
                .filter(|s| *s <= MAX_STOCK)
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "giving back {qty} of {sku} would take its stock from {previous} over {MAX_STOCK}; lower the stock first"
                    ))
                })?;
            product.updated_at = next_updated_at(Some(product.updated_at));
            sqlx::query("UPDATE products SET stock = $1, updated_at = $2 WHERE sku = $3")
                .bind(product.stock)
                .bind(product.updated_at)
                .bind(sku)
                .execute(&mut **tx)
                .await?;
            let product = product.clone();
            self.stock_changed(tx, &product, previous).await?;
            moved.push(sku.clone());
        }
        Ok(moved)
    }

    /// Seeds [`DEMO_CATALOG`] once in the life of the database (the embedded mode's first
    /// start). True when it did.
    pub async fn seed_demo_catalog(&self) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let first: Option<(String,)> = sqlx::query_as(
            "INSERT INTO store_flags (name, set_at) VALUES ('demo_catalog', $1) \
             ON CONFLICT (name) DO NOTHING RETURNING name",
        )
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        if first.is_none() {
            return Ok(false);
        }
        let now = now_ms();
        for (sku, name, price_paise, stock) in DEMO_CATALOG {
            sqlx::query(
                "INSERT INTO products (sku, name, price_paise, stock, discontinued, updated_at) \
                 VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (sku) DO NOTHING",
            )
            .bind(sku)
            .bind(name)
            .bind(price_paise)
            .bind(stock)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// What a write of `product` (its stock `previous` before) tells the world, inside `tx`:
    /// the `product:{sku}` room's new snapshot, and when the stock moved, `stock.updated` to
    /// that room and `admin:inventory`, plus `stock.low` when it fell to the threshold from
    /// above, or `stock.out` when it reached zero.
    async fn stock_changed(
        &self,
        tx: &mut Tx,
        product: &Product,
        previous: i64,
    ) -> Result<(), StoreError> {
        let room = product_room(&product.sku)?;
        enqueue_snapshot(tx, &room, product).await?;
        if product.stock == previous {
            return Ok(());
        }
        let level = StockLevel {
            sku: product.sku.clone(),
            stock: product.stock,
            updated_at: product.updated_at,
        };
        let updated = StockUpdated {
            event_id: None,
            level: level.clone(),
        };
        let inventory = Room::admin_inventory();
        enqueue(tx, &room, &updated).await?;
        enqueue(tx, &inventory, &updated).await?;
        let threshold = self.low_stock_threshold;
        if product.stock == 0 {
            let out = StockOut {
                event_id: None,
                level,
            };
            enqueue(tx, &inventory, &out).await?;
        } else if product.stock <= threshold && previous > threshold {
            let low = StockLow {
                event_id: None,
                level,
                threshold,
            };
            enqueue(tx, &inventory, &low).await?;
        }
        Ok(())
    }
}

/// The room of a SKU read back from the database (validated on the way in: one that breaks
/// the grammar is corrupt data).
fn product_room(sku: &str) -> Result<Room, StoreError> {
    Room::product(sku).map_err(|e| StoreError::Corrupt(format!("sku {sku:?}: {e}")))
}

fn refusal(error: ErrorCode, items: Vec<LineProblem>) -> StoreError {
    let what: Vec<String> = items
        .iter()
        .map(|l| match (l.price_paise, l.available) {
            (Some(price), _) => format!("{} now costs {price} paise", l.sku),
            (_, Some(available)) => format!("{} has {available} left", l.sku),
            _ => l.sku.clone(),
        })
        .collect();
    let message = match error {
        ErrorCode::PriceChanged => format!("prices changed: {}", what.join(", ")),
        _ => format!("not enough stock: {}", what.join(", ")),
    };
    StoreError::Refused(CatalogRefusal {
        error,
        message,
        items,
    })
}
