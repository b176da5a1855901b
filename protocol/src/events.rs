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
/// Revenue totals moved → `admin:revenue`.
pub const REVENUE_UPDATED: &str = "revenue.updated";
/// A partner's position → `order:{id}`.
pub const PARTNER_LOCATION: &str = "partner.location";
