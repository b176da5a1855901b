//! Orders, payments and revenue as they appear on the wire, and the order status machine.
//!
//! Money is integer paise everywhere (`i64`), never floating point.

use crate::role::Role;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Lifecycle of an order.
///
/// ```text
/// placed → confirmed → packed → out_for_delivery → delivered
///    └─────────┴──────────┴──→ cancelled
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Confirmed,
    Packed,
    OutForDelivery,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Placed,
        OrderStatus::Confirmed,
        OrderStatus::Packed,
        OrderStatus::OutForDelivery,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Packed => "packed",
            OrderStatus::OutForDelivery => "out_for_delivery",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Delivered or cancelled: no edge leaves it.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Delivered | OrderStatus::Cancelled)
    }

    /// Whether the machine has an edge `self → next`.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Placed, Confirmed)
                | (Confirmed, Packed)
                | (Packed, OutForDelivery)
                | (OutForDelivery, Delivered)
                | (Placed | Confirmed | Packed, Cancelled)
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?}"))
    }
}

/// How the caller relates to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Party {
    pub role: Role,
    /// The caller placed the order.
    pub is_customer: bool,
    /// The caller is the partner currently assigned to it.
    pub is_partner: bool,
}

/// Why a status change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionError {
    /// This caller may never make this change, whatever the order's state (HTTP 403).
    NotAllowed(&'static str),
    /// No such edge in the machine (HTTP 409).
    Invalid { from: OrderStatus, to: OrderStatus },
    /// The caller may make this change, but not in the order's current state (HTTP 409).
    NotNow(&'static str),
}

/// Whether this caller may ever move an order to `to` (`None`: a target the request did not
/// name validly, so only a caller who may take no edge at all is refused). The first half of
/// [`check_transition`]: authorization, independent of the order's state.
pub fn may_request(to: Option<OrderStatus>, who: Party) -> Result<(), TransitionError> {
    use OrderStatus::*;
    let allowed = match (who.role, to) {
        (Role::Admin, _) => true,
        (Role::Partner, None) => who.is_partner,
        (Role::Partner, Some(to)) => who.is_partner && matches!(to, OutForDelivery | Delivered),
        (Role::Customer, None) => who.is_customer,
        (Role::Customer, Some(to)) => who.is_customer && to == Cancelled,
        (Role::Service, _) => false,
    };
    if allowed {
        return Ok(());
    }
    Err(TransitionError::NotAllowed(match who.role {
        Role::Partner => "the assigned partner may only set out_for_delivery and delivered",
        Role::Customer => "a customer may only cancel their order",
        _ => "this role may not change order status",
    }))
}

/// Checks a status change in the API's order of checks: first who may make it at all
/// ([`may_request`], 403), then whether the order's current state allows it (409).
///
/// - admin: any valid transition;
/// - the assigned partner: `packed → out_for_delivery` and `out_for_delivery → delivered`;
/// - the customer who placed it: `cancelled`, while the order is `placed` or `confirmed`.
pub fn check_transition(
    from: OrderStatus,
    to: OrderStatus,
    who: Party,
) -> Result<(), TransitionError> {
    use OrderStatus::*;
    may_request(Some(to), who)?;
    if !from.can_become(to) {
        return Err(TransitionError::Invalid { from, to });
    }
    if who.role == Role::Customer && !matches!(from, Placed | Confirmed) {
        return Err(TransitionError::NotNow(
            "a customer may only cancel an order while it is placed or confirmed",
        ));
    }
    Ok(())
}

/// Order ids are integers in the database, written canonically (`42`, never `042`): any
/// other room id names no order, so one order has exactly one room name.
/// ([`crate::OrderId::parse`], as the integer.)
pub fn parse_order_id(id: &str) -> Option<i64> {
    crate::OrderId::parse(id).map(crate::OrderId::get)
}

/// One line of a new order: a catalog SKU and a quantity. The price is the catalog's; a
/// client may send the price it showed (`unit_price_paise`), and when the catalog's is
/// different the order is refused with 409 `price_changed` rather than charged a price the
/// customer did not see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// A catalog SKU (`GET /api/products`), at most once per order.
    #[cfg_attr(feature = "schema", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub sku: String,
    /// 1 to `SWITCHYARD_MAX_ITEM_QTY` (the served document states the configured maximum).
    #[cfg_attr(feature = "schema", schema(minimum = 1))]
    pub qty: i64,
    /// Optional: the price the app showed, paise; must equal the catalog's (else 409
    /// `price_changed`, which carries the current price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schema(minimum = 1))]
    pub unit_price_paise: Option<i64>,
}

/// One line of an order as placed: the product's name and price taken from the catalog at
/// that moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct OrderLine {
    pub sku: String,
    /// The product's name when the order was placed (empty for orders placed before the
    /// catalog existed).
    #[serde(default)]
    pub name: String,
    pub qty: i64,
    /// Paise, the catalog's price when the order was placed.
    pub unit_price_paise: i64,
}

/// Body of `POST /api/orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// 1 to 100 lines, each SKU at most once.
    #[cfg_attr(feature = "schema", schema(min_items = 1, max_items = 100))]
    pub items: Vec<Item>,
    /// 1 to 500 bytes, not blank, no control characters but newlines.
    #[cfg_attr(feature = "schema", schema(min_length = 1, max_length = 500))]
    pub address: String,
}

/// Most lines in one order.
pub const MAX_ITEMS: usize = 100;
pub const MAX_ADDRESS_LEN: usize = 500;
pub const MAX_SKU_LEN: usize = 64;
/// The highest order-total cap an operator may configure: ₹10 crore. The revenue total is
/// an `i64` of paise (≈ 9.2 × 10¹⁸), so at this cap it takes more than 900 million maximal
/// orders to reach it — and reaching it is still only a refused payment, never a wrong total.
pub const ORDER_TOTAL_CEILING_PAISE: i64 = 1_000_000_000;

/// Caps on a new order's money, so no body can make the server store or sum absurd values
/// (beyond any of them: 422). Configurable (`SWITCHYARD_MAX_ITEM_QTY`,
/// `SWITCHYARD_MAX_UNIT_PRICE_PAISE`, `SWITCHYARD_MAX_ORDER_TOTAL_PAISE`); the defaults fit a
/// quick-commerce basket: a phone is ₹1.5 lakh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLimits {
    /// Largest `qty` of one line.
    pub max_qty: i64,
    /// Largest `unit_price_paise` of one line.
    pub max_unit_price_paise: i64,
    /// Largest order total (Σ qty × unit price), at most [`ORDER_TOTAL_CEILING_PAISE`].
    pub max_total_paise: i64,
}

impl Default for OrderLimits {
    fn default() -> Self {
        OrderLimits {
            max_qty: 1_000,
            max_unit_price_paise: 50_000_000, // ₹5 lakh
            max_total_paise: 100_000_000,     // ₹10 lakh
        }
    }
}

impl OrderLimits {
    /// Refuses limits that are not positive or whose total passes the ceiling.
    pub fn check(&self) -> Result<(), String> {
        if self.max_qty < 1 || self.max_unit_price_paise < 1 || self.max_total_paise < 1 {
            return Err("order limits must be at least 1".into());
        }
        if self.max_total_paise > ORDER_TOTAL_CEILING_PAISE {
            return Err(format!(
                "SWITCHYARD_MAX_ORDER_TOTAL_PAISE may be at most {ORDER_TOTAL_CEILING_PAISE}"
            ));
        }
        Ok(())
    }
}

impl NewOrder {
    /// Validates the order's shape against `limits`: line count, SKU grammar, each SKU once,
    /// quantities, the prices a client sent, the address. The prices charged and the total
    /// come from the catalog ([`order_total`]).
    pub fn validate(&self, limits: &OrderLimits) -> Result<(), String> {
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return Err(format!("items must hold 1 to {MAX_ITEMS} entries"));
        }
        let address = self.address.trim();
        if address.is_empty() || self.address.len() > MAX_ADDRESS_LEN {
            return Err(format!("address must be 1 to {MAX_ADDRESS_LEN} bytes"));
        }
        if self.address.chars().any(|c| c.is_control() && c != '\n') {
            return Err("address may not contain control characters".into());
        }
        let OrderLimits {
            max_qty,
            max_unit_price_paise,
            ..
        } = *limits;
        let mut seen = std::collections::HashSet::new();
        for (i, item) in self.items.iter().enumerate() {
            if !crate::catalog::is_valid_sku(&item.sku) {
                return Err(format!(
                    "items[{i}].sku must be 1 to {MAX_SKU_LEN} characters of A-Z, a-z, 0-9, '_' and '-'"
                ));
            }
            if !seen.insert(item.sku.as_str()) {
                return Err(format!(
                    "items[{i}].sku {:?} is listed twice; order it once with the total qty",
                    item.sku
                ));
            }
            if !(1..=max_qty).contains(&item.qty) {
                return Err(format!("items[{i}].qty must be 1 to {max_qty}"));
            }
            if let Some(price) = item.unit_price_paise
                && !(1..=max_unit_price_paise).contains(&price)
            {
                return Err(format!(
                    "items[{i}].unit_price_paise must be 1 to {max_unit_price_paise}"
                ));
            }
        }
        Ok(())
    }
}

/// The total of `lines` (Σ qty × unit price) under the caps of `limits`, summed with checked
/// arithmetic, so no line overflows it before the cap refuses it.
pub fn order_total(lines: &[OrderLine], limits: &OrderLimits) -> Result<i64, String> {
    let mut total: i64 = 0;
    for line in lines {
        if !(1..=limits.max_unit_price_paise).contains(&line.unit_price_paise) {
            return Err(format!(
                "{} costs {} paise, over SWITCHYARD_MAX_UNIT_PRICE_PAISE ({})",
                line.sku, line.unit_price_paise, limits.max_unit_price_paise
            ));
        }
        let max_total_paise = limits.max_total_paise;
        total = line
            .qty
            .checked_mul(line.unit_price_paise)
            .and_then(|amount| total.checked_add(amount))
            .filter(|t| *t <= max_total_paise)
            .ok_or_else(|| format!("the order total may be at most {max_total_paise} paise"))?;
    }
    if total == 0 {
        return Err("the order total must be above zero".into());
    }
    Ok(total)
}

/// A partner's last known position, as stored and shown in snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// The partner device's timestamp (ms since epoch), when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// When the gateway accepted the fix (ms since epoch).
    pub received_at: i64,
}

/// An order as the REST API returns it and as order-room snapshots carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Order {
    /// Opaque string id; also the id in `order:{id}`.
    pub id: String,
    pub customer: String,
    pub partner: Option<String>,
    pub status: OrderStatus,
    pub items: Vec<OrderLine>,
    pub address: String,
    pub total_paise: i64,
    pub paid: bool,
    /// Cancelled after it was paid: its payment was refunded (revenue went down by it).
    #[serde(default)]
    pub refunded: bool,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    pub last_location: Option<Location>,
}

/// Revenue totals (`GET /api/revenue`, `admin:revenue` snapshots and `revenue.updated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Revenue {
    /// Always `INR`.
    pub currency: String,
    /// Payments minus refunds, paise.
    pub total_paise: i64,
    /// Orders paid and not refunded.
    pub paid_orders: i64,
}

/// A refund of a cancelled order's payment, as `order.refunded` and `revenue.updated` carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Refund {
    pub refund_id: String,
    pub payment_id: String,
    pub order_id: String,
    pub amount_paise: i64,
    /// Milliseconds since the Unix epoch.
    pub refunded_at: i64,
}

/// A successful payment, as `order.paid` and `revenue.updated` carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Payment {
    pub payment_id: String,
    pub order_id: String,
    pub amount_paise: i64,
    /// Milliseconds since the Unix epoch.
    pub paid_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn admin() -> Party {
        Party {
            role: Role::Admin,
            is_customer: false,
            is_partner: false,
        }
    }
    fn customer() -> Party {
        Party {
            role: Role::Customer,
            is_customer: true,
            is_partner: false,
        }
    }
    fn partner() -> Party {
        Party {
            role: Role::Partner,
            is_customer: false,
            is_partner: true,
        }
    }

    #[test]
    fn order_ids_are_canonical() {
        assert_eq!(parse_order_id("42"), Some(42));
        assert_eq!(parse_order_id("0042"), None);
        assert_eq!(parse_order_id("4a"), None);
        assert_eq!(parse_order_id("9999999999999999999"), None);
    }

    #[test]
    fn the_machine_has_exactly_these_edges() {
        let edges = [
            (Placed, Confirmed),
            (Confirmed, Packed),
            (Packed, OutForDelivery),
            (OutForDelivery, Delivered),
            (Placed, Cancelled),
            (Confirmed, Cancelled),
            (Packed, Cancelled),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    edges.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn admin_takes_any_valid_edge_but_not_invalid_ones() {
        assert!(check_transition(Placed, Confirmed, admin()).is_ok());
        assert!(check_transition(Packed, Cancelled, admin()).is_ok());
        assert_eq!(
            check_transition(Delivered, Cancelled, admin()),
            Err(TransitionError::Invalid {
                from: Delivered,
                to: Cancelled
            })
        );
        assert!(matches!(
            check_transition(Placed, Delivered, admin()),
            Err(TransitionError::Invalid { .. })
        ));
    }

    #[test]
    fn partner_only_moves_delivery() {
        assert!(check_transition(Packed, OutForDelivery, partner()).is_ok());
        assert!(check_transition(OutForDelivery, Delivered, partner()).is_ok());
        assert!(matches!(
            check_transition(Placed, Confirmed, partner()),
            Err(TransitionError::NotAllowed(_))
        ));
        let stranger = Party {
            is_partner: false,
            ..partner()
        };
        assert!(matches!(
            check_transition(Packed, OutForDelivery, stranger),
            Err(TransitionError::NotAllowed(_))
        ));
    }

    #[test]
    fn customer_only_cancels_early() {
        assert!(check_transition(Placed, Cancelled, customer()).is_ok());
        assert!(check_transition(Confirmed, Cancelled, customer()).is_ok());
        // May cancel, but not any more: the state refuses it (409), not the role (403).
        assert!(matches!(
            check_transition(Packed, Cancelled, customer()),
            Err(TransitionError::NotNow(_))
        ));
        // May never deliver, whatever the state: the role refuses it first.
        for from in [Placed, Packed, Delivered] {
            assert!(matches!(
                check_transition(from, Delivered, customer()),
                Err(TransitionError::NotAllowed(_))
            ));
        }
        assert!(matches!(
            check_transition(Placed, Confirmed, customer()),
            Err(TransitionError::NotAllowed(_))
        ));
    }

    #[test]
    fn new_order_validation() {
        let ok = NewOrder {
            items: vec![Item {
                sku: "milk-1l".into(),
                qty: 2,
                unit_price_paise: Some(6500),
            }],
            address: "12 MG Road".into(),
        };
        let limits = OrderLimits::default();
        assert_eq!(ok.validate(&limits), Ok(()));
        let mut bad = ok.clone();
        bad.items[0].qty = 0;
        assert!(bad.validate(&limits).is_err());
        let mut bad = ok.clone();
        bad.items.clear();
        assert!(bad.validate(&limits).is_err());
        let mut bad = ok.clone();
        bad.items[0].unit_price_paise = Some(0);
        assert!(bad.validate(&limits).is_err());
        let mut bad = ok.clone();
        bad.items[0].sku = "milk 1l".into();
        assert!(bad.validate(&limits).is_err());
        let mut bad = ok.clone();
        bad.items.push(bad.items[0].clone());
        assert!(bad.validate(&limits).is_err(), "a SKU twice");
        let mut bad = ok;
        bad.address = " ".into();
        assert!(bad.validate(&limits).is_err());
    }

    #[test]
    fn money_caps_hold_without_overflow() {
        let limits = OrderLimits::default();
        let line = |qty, unit_price_paise| OrderLine {
            sku: "x".into(),
            name: "X".into(),
            qty,
            unit_price_paise,
        };
        // Exactly at the total cap: accepted.
        let at_cap = [line(2, limits.max_total_paise / 2 / 1000)];
        assert!(order_total(&at_cap, &limits).is_ok());
        let at_cap = [line(4, limits.max_unit_price_paise)];
        assert_eq!(
            order_total(&at_cap, &limits),
            Err(format!(
                "the order total may be at most {} paise",
                limits.max_total_paise
            ))
        );
        let exact = [line(2, limits.max_unit_price_paise)];
        assert_eq!(order_total(&exact, &limits), Ok(limits.max_total_paise));
        // One paisa beyond it, over two lines: refused.
        let over = [line(2, limits.max_unit_price_paise), line(1, 1)];
        assert!(order_total(&over, &limits).is_err());
        // A price over the unit cap (a catalog written under a higher cap) is refused too.
        assert!(order_total(&[line(1, limits.max_unit_price_paise + 1)], &limits).is_err());
        let huge = OrderLimits {
            max_qty: i64::MAX,
            max_unit_price_paise: i64::MAX,
            max_total_paise: i64::MAX,
        };
        assert!(order_total(&[line(i64::MAX, 2)], &huge).is_err());
        assert!(order_total(&[line(1, i64::MAX), line(1, 1)], &huge).is_err());
        assert!(huge.check().is_err());
        assert!(limits.check().is_ok());
    }
}
