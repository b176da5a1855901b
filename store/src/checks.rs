//! The order of checks every write makes, in one place:
//!
//! 1. **404** — the order exists and the caller may see it ([`can_see`]); an order the
//!    caller may not see is answered exactly like one that does not exist;
//! 2. **403** — the caller may make this kind of change at all, whatever the state;
//! 3. **409** — the change is valid in the order's current state;
//! 4. then the payload (422; the API also answers 400 and 415 there).
//!
//! (Authentication, 401, comes before all of it, in the API's extractor.) So a caller learns
//! nothing about an order's state that it may not act on, and a refusal never depends on
//! whether the payload happened to be valid.
//!
//! Each write runs [`authorize`] and [`admissible`] inside its own transaction, on the row it
//! is about to change. [`Store::precheck`] runs the same two read-only, for a request whose
//! payload is already known to be invalid: its answer is the first check that fails.

use crate::orders::{can_see, parse_order_id};
use crate::{Actor, Store, StoreError};
use switchyard_protocol::order::{Party, TransitionError, check_transition, may_request};
use switchyard_protocol::{Order, OrderStatus, Role};

/// The kind of change a write asks for, as far as the checks before the payload need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A status change; `None` when the request does not name a valid status.
    Status(Option<OrderStatus>),
    /// A partner assignment (admins).
    Assign,
    /// A payment (the order's customer, admins).
    Pay,
}

/// The caller's relation to an order.
fn party(order: &Order, actor: Actor<'_>) -> Party {
    Party {
        role: actor.role,
        is_customer: order.customer == actor.sub,
        is_partner: order.partner.as_deref() == Some(actor.sub),
    }
}

/// Steps 1 and 2: the order must exist and be visible (else 404), and the caller must be
/// allowed this kind of change (else 403). Returns the order.
pub fn authorize(
    order: Option<Order>,
    actor: Actor<'_>,
    change: Change,
) -> Result<Order, StoreError> {
    let order = order
        .filter(|o| can_see(o, actor))
        .ok_or(StoreError::NotFound)?;
    let forbidden = |why: &str| Err(StoreError::Forbidden(why.to_owned()));
    match change {
        Change::Status(to) => {
            if let Err(TransitionError::NotAllowed(why)) = may_request(to, party(&order, actor)) {
                return forbidden(why);
            }
        }
        Change::Assign if actor.role != Role::Admin => {
            return forbidden("only an admin may assign a partner");
        }
        Change::Pay if !matches!(actor.role, Role::Customer | Role::Admin) => {
            return forbidden("only the customer who placed the order or an admin may pay");
        }
        Change::Assign | Change::Pay => {}
    }
    Ok(order)
}

/// Step 3: the change must be valid in the order's current state (else 409).
pub fn admissible(order: &Order, actor: Actor<'_>, change: Change) -> Result<(), StoreError> {
    let conflict = |why: String| Err(StoreError::Conflict(why));
    match change {
        Change::Status(None) => Ok(()),
        Change::Status(Some(to)) => match check_transition(order.status, to, party(order, actor)) {
            Ok(()) => Ok(()),
            Err(TransitionError::NotAllowed(why)) => Err(StoreError::Forbidden(why.to_owned())),
            Err(TransitionError::Invalid { from, to }) => {
                conflict(format!("cannot move an order from {from} to {to}"))
            }
            Err(TransitionError::NotNow(why)) => conflict(why.to_owned()),
        },
        Change::Assign if order.status.is_final() => conflict(format!(
            "cannot assign a partner to a {} order",
            order.status
        )),
        Change::Pay if order.paid => conflict("order is already paid".into()),
        Change::Pay if order.status == OrderStatus::Cancelled => {
            conflict("order is cancelled".into())
        }
        Change::Assign | Change::Pay => Ok(()),
    }
}

impl Store {
    /// Steps 1 to 3 for `change` on order `id` (its path segment as sent), read-only.
    /// For a request whose payload is invalid: `Err` is the check that comes first, `Ok`
    /// means the payload's own error is the answer. An id that names no order is 404.
    pub async fn precheck(
        &self,
        id: &str,
        actor: Actor<'_>,
        change: Change,
    ) -> Result<(), StoreError> {
        let id = parse_order_id(id).ok_or(StoreError::NotFound)?;
        let order = authorize(self.order(id).await?, actor, change)?;
        admissible(&order, actor, change)
    }
}
