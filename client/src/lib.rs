//! A small Rust client for Switchyard: the WebSocket protocol and the REST API, typed with
//! `switchyard-protocol`'s types — the ones the server itself encodes and decodes with, so
//! nothing here builds or picks apart JSON by hand. The demo simulator and the test suite
//! talk to the server through it; so can any Rust service.
//!
//! It is deliberately thin: no reconnect loop, no timers. Reconnecting with backoff and
//! recovering with `since` is the application's policy (the JavaScript client in
//! `clients/js/` shows one); every call here is one exchange with the server.
//!
//! # Layout
//! - [`socket`]: one WebSocket connection — connect with a token, the `welcome`, ops sent
//!   with fresh ids, replies matched to their op, frames decoded into
//!   [`switchyard_protocol::ServerMessage`].
//! - [`rest`]: the REST API as methods (orders, status, assignment, payments, revenue,
//!   publish, revoke), errors as the protocol's one error shape.

pub mod rest;
pub mod socket;

pub use rest::{Rest, RestError};
pub use socket::{ConnectError, Frame, ReadError, Socket};
