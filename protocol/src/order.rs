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
    /// No such edge in the machine (HTTP 409).
    Invalid { from: OrderStatus, to: OrderStatus },
    /// The edge exists but this caller may not take it (HTTP 403).
    NotAllowed(&'static str),
}

/// Checks a status change: first the machine, then who may take the edge.
///
/// - admin: any valid transition;
/// - the assigned partner: `packed → out_for_delivery` and `out_for_delivery → delivered`;
/// - the customer who placed it: `cancelled` while `placed` or `confirmed`.
pub fn check_transition(
    from: OrderStatus,
    to: OrderStatus,
    who: Party,
) -> Result<(), TransitionError> {
    use OrderStatus::*;
    if !from.can_become(to) {
        return Err(TransitionError::Invalid { from, to });
    }
    let allowed = match who.role {
        Role::Admin => true,
        Role::Partner => who.is_partner && matches!(to, OutForDelivery | Delivered),
        Role::Customer => who.is_customer && to == Cancelled && matches!(from, Placed | Confirmed),
        Role::Service => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(TransitionError::NotAllowed(match who.role {
            Role::Partner => "the assigned partner may only set out_for_delivery and delivered",
            Role::Customer => "a customer may only cancel an order while it is placed or confirmed",
            _ => "this role may not change order status",
        }))
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub sku: String,
    pub qty: i64,
    pub unit_price_paise: i64,
}

/// Body of `POST /api/orders`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub items: Vec<Item>,
    pub address: String,
}

/// Limits on a new order, so a body cannot make the server store or sum absurd values.
pub const MAX_ITEMS: usize = 100;
pub const MAX_QTY: i64 = 10_000;
pub const MAX_UNIT_PRICE_PAISE: i64 = 10_000_000_000; // ₹10 crore
pub const MAX_ADDRESS_LEN: usize = 500;
pub const MAX_SKU_LEN: usize = 64;

impl NewOrder {
    /// Validates the order and returns its total in paise.
    pub fn validate(&self) -> Result<i64, String> {
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
        let mut total: i64 = 0;
        for (i, item) in self.items.iter().enumerate() {
            if item.sku.is_empty()
                || item.sku.len() > MAX_SKU_LEN
                || item.sku.chars().any(char::is_control)
            {
                return Err(format!(
                    "items[{i}].sku must be 1 to {MAX_SKU_LEN} printable bytes"
                ));
            }
            if !(1..=MAX_QTY).contains(&item.qty) {
                return Err(format!("items[{i}].qty must be 1 to {MAX_QTY}"));
            }
            if !(0..=MAX_UNIT_PRICE_PAISE).contains(&item.unit_price_paise) {
                return Err(format!(
                    "items[{i}].unit_price_paise must be 0 to {MAX_UNIT_PRICE_PAISE}"
                ));
            }
            total = item
                .qty
                .checked_mul(item.unit_price_paise)
                .and_then(|line| total.checked_add(line))
                .ok_or("order total overflows")?;
        }
        if total == 0 {
            return Err("the order total must be above zero".into());
        }
        Ok(total)
    }
}

/// A partner's last known position, as stored and shown in snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
pub struct Order {
    /// Opaque string id; also the id in `order:{id}`.
    pub id: String,
    pub customer: String,
    pub partner: Option<String>,
    pub status: OrderStatus,
    pub items: Vec<Item>,
    pub address: String,
    pub total_paise: i64,
    pub paid: bool,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    pub last_location: Option<Location>,
}

/// Revenue totals (`GET /api/revenue`, `admin:revenue` snapshots and `revenue.updated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revenue {
    pub currency: String,
    pub total_paise: i64,
    pub paid_orders: i64,
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
        assert!(matches!(
            check_transition(Packed, Cancelled, customer()),
            Err(TransitionError::NotAllowed(_))
        ));
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
                unit_price_paise: 6500,
            }],
            address: "12 MG Road".into(),
        };
        assert_eq!(ok.validate(), Ok(13_000));
        let mut bad = ok.clone();
        bad.items[0].qty = 0;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.items.clear();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.items[0].unit_price_paise = -1;
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.address = " ".into();
        assert!(bad.validate().is_err());
    }
}
