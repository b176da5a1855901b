//! The catalog on the wire: products, the admin writes that change them, pages, and the
//! refusals an order gets from the catalog (`price_changed`, `out_of_stock`).
//!
//! Prices are integer paise (`i64`) capped like order lines (`SWITCHYARD_MAX_UNIT_PRICE_PAISE`);
//! stock is a count of units, 0 to [`MAX_STOCK`].

use crate::room::is_valid_id;
use serde::{Deserialize, Serialize};

/// The most units of one product the catalog holds (a restock beyond it is refused).
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Longest product name, bytes.
pub const MAX_NAME_LEN: usize = 200;
/// The SKU grammar, as a regular expression (also the id of the product's room).
pub const SKU_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// Whether `sku` is in the grammar: 1 to 64 of `A-Z a-z 0-9 _ -`, the room id grammar, so
/// every product has a room `product:{sku}`.
pub fn is_valid_sku(sku: &str) -> bool {
    is_valid_id(sku)
}

/// The message of a SKU outside the grammar.
pub const SKU_GRAMMAR: &str = "sku must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'";

/// A product as `GET /api/products/{sku}` returns it and as `product:{sku}` snapshots carry
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Product {
    #[cfg_attr(feature = "schema", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub sku: String,
    pub name: String,
    /// Paise (1/100 rupee), above zero.
    pub price_paise: i64,
    /// Units available to order (reserved units of open orders are already taken off).
    pub stock: i64,
    /// Deleted while open orders still held it: readable, but it cannot be ordered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discontinued: bool,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
}

/// Query of `GET /api/products`: keyset pagination in SKU order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "schema", into_params(parameter_in = Query))]
pub struct ProductPageQuery {
    /// Only products whose SKU sorts after this one: the previous page's `next_after` (empty
    /// or absent: from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", param(pattern = "^[A-Za-z0-9_-]{0,64}$"))]
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", param(minimum = 1, maximum = 200))]
    pub limit: Option<i64>,
}

/// One page of `GET /api/products`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ProductPage {
    pub products: Vec<Product>,
    /// Pass as `after` for the next page; `null` when this page is the last.
    pub next_after: Option<String>,
}

/// Body of `PUT /api/products/{sku}`: the whole product (created, or replaced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProductPut {
    /// 1 to 200 bytes, not blank, no control characters.
    #[cfg_attr(feature = "schema", schema(min_length = 1, max_length = 200))]
    pub name: String,
    /// Paise, 1 to `SWITCHYARD_MAX_UNIT_PRICE_PAISE`.
    #[cfg_attr(feature = "schema", schema(minimum = 1))]
    pub price_paise: i64,
    /// 0 to 1,000,000,000 units.
    #[cfg_attr(feature = "schema", schema(minimum = 0, maximum = 1_000_000_000))]
    pub stock: i64,
}

/// Body of `PATCH /api/products/{sku}`: any of the fields; `stock_delta` adds to (restock) or
/// takes from the stock as it is at that moment, instead of setting it (`stock` and
/// `stock_delta` together are refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(minimum = 1))]
    pub price_paise: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(minimum = 0, maximum = 1_000_000_000))]
    pub stock: Option<i64>,
    /// Units to add (negative: to take off); the result must stay 0 to 1,000,000,000 (else
    /// 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schema(minimum = -1_000_000_000, maximum = 1_000_000_000)
    )]
    pub stock_delta: Option<i64>,
}

fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("name must be 1 to {MAX_NAME_LEN} bytes, not blank"));
    }
    if name.chars().any(char::is_control) {
        return Err("name may not contain control characters".into());
    }
    Ok(())
}

fn check_price(price: i64, max_price: i64) -> Result<(), String> {
    if !(1..=max_price).contains(&price) {
        return Err(format!("price_paise must be 1 to {max_price}"));
    }
    Ok(())
}

fn check_stock(stock: i64) -> Result<(), String> {
    if !(0..=MAX_STOCK).contains(&stock) {
        return Err(format!("stock must be 0 to {MAX_STOCK}"));
    }
    Ok(())
}

impl ProductPut {
    /// The body's values against the grammar and the price cap (`max_price`, paise).
    pub fn validate(&self, max_price: i64) -> Result<(), String> {
        check_name(&self.name)?;
        check_price(self.price_paise, max_price)?;
        check_stock(self.stock)
    }
}

impl ProductPatch {
    /// The body's values against the grammar and the price cap (`max_price`, paise).
    pub fn validate(&self, max_price: i64) -> Result<(), String> {
        if self.name.is_none()
            && self.price_paise.is_none()
            && self.stock.is_none()
            && self.stock_delta.is_none()
        {
            return Err("name, price_paise, stock or stock_delta is required".into());
        }
        if self.stock.is_some() && self.stock_delta.is_some() {
            return Err("stock and stock_delta may not be sent together".into());
        }
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        if let Some(price) = self.price_paise {
            check_price(price, max_price)?;
        }
        if let Some(stock) = self.stock {
            check_stock(stock)?;
        }
        if let Some(delta) = self.stock_delta
            && !(-MAX_STOCK..=MAX_STOCK).contains(&delta)
        {
            return Err(format!("stock_delta must be -{MAX_STOCK} to {MAX_STOCK}"));
        }
        Ok(())
    }
}

/// One line the catalog refused an order for: its SKU, and the current price
/// (`price_changed`) or the units available (`out_of_stock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct LineProblem {
    pub sku: String,
    /// `price_changed`: the price now, paise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_paise: Option<i64>,
    /// `out_of_stock`: the units there are now (fewer than asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
}

/// The 409 of `POST /api/orders` when the catalog refuses it: the one error shape plus the
/// lines at fault. `error` is `price_changed` (a line's `unit_price_paise` is not the current
/// price: the app showed a stale one) or `out_of_stock` (every line asking for more than there
/// is). Nothing was reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct CatalogRefusal {
    pub error: crate::ErrorCode,
    pub message: String,
    pub items: Vec<LineProblem>,
}

/// The stock of a product changed (`stock.updated`, `stock.low`, `stock.out`): by an order,
/// a cancellation, or an admin write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct StockLevel {
    pub sku: String,
    pub stock: i64,
    /// Milliseconds since the Unix epoch: the product's `updated_at`.
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_validated() {
        let put = ProductPut {
            name: "Milk 1 l".into(),
            price_paise: 6500,
            stock: 0,
        };
        assert_eq!(put.validate(50_000_000), Ok(()));
        for bad in [
            ProductPut {
                price_paise: 0,
                ..put.clone()
            },
            ProductPut {
                price_paise: 50_000_001,
                ..put.clone()
            },
            ProductPut {
                stock: -1,
                ..put.clone()
            },
            ProductPut {
                name: " ".into(),
                ..put.clone()
            },
            ProductPut {
                name: "a\u{7}".into(),
                ..put.clone()
            },
        ] {
            assert!(bad.validate(50_000_000).is_err(), "{bad:?}");
        }
        assert!(ProductPatch::default().validate(100).is_err());
        let both = ProductPatch {
            stock: Some(1),
            stock_delta: Some(1),
            ..ProductPatch::default()
        };
        assert!(both.validate(100).is_err());
        let restock = ProductPatch {
            stock_delta: Some(-5),
            ..ProductPatch::default()
        };
        assert_eq!(restock.validate(100), Ok(()));
        assert!(
            serde_json::from_str::<ProductPatch>(r#"{"stock_delta":1,"colour":"red"}"#).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn skus_are_room_ids() {
        assert!(is_valid_sku("milk-1l"));
        for bad in ["", "milk 1l", "milk/1l", "é", &"x".repeat(65)] {
            assert!(!is_valid_sku(bad), "{bad:?}");
        }
    }
}
