//! Built-in event names. The families `order.*`, `revenue.*` and `partner.*` are
//! reserved for Switchyard itself.

/// A customer placed an order → `user:{customer}`.
pub const ORDER_CREATED: &str = "order.created";
/// An order's status changed → `order:{id}`, `user:{customer}`.
pub const ORDER_STATUS: &str = "order.status";
/// A partner was assigned → `order:{id}`, `user:{customer}`, `user:{partner}`.
pub const ORDER_ASSIGNED: &str = "order.assigned";
/// An order was paid → `order:{id}`, `user:{customer}`.
pub const ORDER_PAID: &str = "order.paid";
/// A paid order was cancelled and its payment refunded → `order:{id}`, `user:{customer}`.
pub const ORDER_REFUNDED: &str = "order.refunded";
/// Revenue totals moved → `admin:revenue`.
pub const REVENUE_UPDATED: &str = "revenue.updated";
/// A partner's position → `order:{id}`.
pub const PARTNER_LOCATION: &str = "partner.location";

/// Events that only matter as their latest value: a backed-up connection keeps only the
/// newest one per room (conflation) instead of queueing every one.
pub const LATEST_VALUE: [&str; 2] = [PARTNER_LOCATION, REVENUE_UPDATED];

/// Whether `name` is a latest-value event (see [`LATEST_VALUE`]).
pub fn is_latest_value(name: &str) -> bool {
    LATEST_VALUE.contains(&name)
}

/// Families only Switchyard itself may publish.
pub const RESERVED_FAMILIES: [&str; 3] = ["order.", "revenue.", "partner."];

/// Why an event name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventNameError {
    /// Not `[a-z][a-z0-9_.-]{0,63}`.
    Grammar,
    /// In a family reserved for the built-in API.
    Reserved,
}

/// Checks a name for the server publish API: `[a-z][a-z0-9_.-]{0,63}`, outside the reserved
/// families.
pub fn check_publishable(name: &str) -> Result<(), EventNameError> {
    let bytes = name.as_bytes();
    let grammar = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(b));
    if !grammar {
        return Err(EventNameError::Grammar);
    }
    if RESERVED_FAMILIES.iter().any(|f| name.starts_with(f)) {
        return Err(EventNameError::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishable_names() {
        assert_eq!(check_publishable("eta.updated"), Ok(()));
        assert_eq!(check_publishable("promo_1-x.y"), Ok(()));
        assert_eq!(check_publishable(&format!("a{}", "b".repeat(63))), Ok(()));
        for bad in [
            "",
            "Eta",
            "1eta",
            "eta updated",
            "eta*",
            "é",
            &"a".repeat(65),
        ] {
            assert_eq!(
                check_publishable(bad),
                Err(EventNameError::Grammar),
                "{bad}"
            );
        }
        for reserved in ["order.status", "revenue.x", "partner.location"] {
            assert_eq!(check_publishable(reserved), Err(EventNameError::Reserved));
        }
        assert_eq!(
            check_publishable("orders.x"),
            Ok(()),
            "only the exact families"
        );
    }
}
