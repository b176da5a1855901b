//! The Switchyard wire contract: every type that crosses a socket or an HTTP body.
//!
//! This crate is deliberately small and dependency-light (serde only) so that
//! clients, the load generator and the servers share one definition of the
//! protocol. `protocol/README.md` is the prose version of the same contract.
//!
//! # Layout
//! - [`room`]: room names (`user:{id}`, `order:{id}`, `admin:revenue`) and their grammar.
//! - [`role`]: who a token says the caller is.
//! - [`client`]: frames a client sends (`subscribe`, `unsubscribe`, `location`, `ping`),
//!   decoded in one pass with errors that still carry the request id.
//! - [`server`]: frames the server sends (`welcome`, `ok`, `error`, `event`), encoded once.
//! - [`order`]: orders, their status machine, payments and revenue as they appear on the wire.
//! - [`close`]: WebSocket close codes and what a client should do on each.
//! - [`events`]: the built-in event names.

pub mod client;
pub mod close;
pub mod events;
pub mod order;
pub mod role;
pub mod room;
pub mod server;

pub use client::{ClientMessage, DecodeError};
pub use order::{Item, Location, Order, OrderStatus, Revenue};
pub use role::Role;
pub use room::{Room, RoomError};
pub use server::ErrorCode;

/// The WebSocket subprotocol a browser offers (next to `bearer.<jwt>`).
pub const SUBPROTOCOL: &str = "switchyard.v1";
/// Prefix of the subprotocol entry that carries the token for browsers.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "bearer.";
