//! The Switchyard wire contract: every type that crosses a socket or an HTTP body.
//!
//! This crate is deliberately small and dependency-light (serde only) so that
//! clients, the load generator and the servers share one definition of the
//! protocol, typed in both directions: what the server decodes a Rust client encodes with
//! the same type, and the other way round. `protocol/README.md` is the prose version of the
//! same contract. The `schema` feature derives the JSON schemas the OpenAPI and AsyncAPI
//! documents are generated from (utoipa).
//!
//! # Layout
//! - [`room`]: room names (`user:{id}`, `order:{id}`, `admin:revenue`) and their grammar.
//! - [`id`]: `UserId` and `OrderId`, validated once, each naming its room infallibly.
//! - [`role`]: who a token says the caller is.
//! - [`client`]: frames a client sends (`subscribe`, `unsubscribe`, `location`, `ping`,
//!   `refresh`), decoded in one pass with errors that still carry the request id.
//! - [`server`]: frames the server sends (`welcome`, `ok`, `error`, `revoked`, `gap`,
//!   `event`), encoded once, decoded by clients.
//! - [`events`]: the built-in events, typed, with their latest-value property.
//! - [`error`]: the one error shape (`{"error","message"}`) of REST, handshake and socket.
//! - [`chat`]: order chat messages, their REST bodies and the rules of their text.
//! - [`catalog`]: products, the admin writes, and the catalog's refusals of an order.
//! - [`order`]: orders, their status machine, payments and revenue as they appear on the wire.
//! - [`presence`]: who is in a room (`presence` in subscribe replies, `GET /api/presence`).
//! - [`rest`]: the other REST bodies (pages, receipts, the publish API).
//! - [`close`]: why a connection is closed ([`close::Disconnect`]: a code and a reason) and
//!   what a client should do on each code.
//! - `asyncapi` (feature `schema`): the protocol as an AsyncAPI 3.0 document
//!   (`protocol/asyncapi.yaml`).

#[cfg(feature = "schema")]
pub mod asyncapi;
pub mod catalog;
pub mod chat;
pub mod client;
pub mod close;
pub mod error;
pub mod events;
pub mod id;
pub mod order;
pub mod presence;
pub mod rest;
pub mod role;
pub mod room;
pub mod server;

pub use catalog::Product;
pub use client::{ClientMessage, ClientOp, DecodeError};
pub use error::{ErrorBody, ErrorCode};
pub use events::BuiltinEvent;
pub use id::{OrderId, UserId};
pub use order::{Item, Location, Order, OrderLine, OrderStatus, Payment, Revenue};
pub use role::Role;
pub use room::{Room, RoomError};
pub use server::ServerMessage;

/// The WebSocket subprotocol a browser offers (next to `bearer.<jwt>`).
pub const SUBPROTOCOL: &str = "switchyard.v1";
/// Prefix of the subprotocol entry that carries the token for browsers.
pub const BEARER_SUBPROTOCOL_PREFIX: &str = "bearer.";
