//! The `switchyard` program: one binary, several process roles.
//!
//! # Layout
//! - [`config`]: flags and environment variables, documented where they are parsed.
//! - [`server`]: a server process's whole lifecycle — start ([`server::build`] → an
//!   [`server::App`] with its router), serve, drain, stop ([`server::serve`]) — in one place.
//! - [`listener`]: the HTTP/1.1 accept loop: handshake deadline, graceful shutdown.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`backend`]: what the gateway asks about orders — the store in-process (embedded), or
//!   Redis and the API (a distributed gateway, which has no database).
//! - [`database`]: the API's database at start-up, and the `switchyard migrate` command.
//! - [`token`]: the `switchyard token` command.
//! - [`publish`]: the `switchyard publish` command.
//! - [`demo`]: the `switchyard demo` command — `all` plus the simulator of `switchyard-demo`.
//!
//! Tests build an [`server::App`] from typed settings (`switchyard-testkit`'s `TestApp`) and
//! drive its router with `oneshot` or serve it on a listener on port 0; or run the binary.

pub mod backend;
pub mod config;
pub mod database;
pub mod demo;
pub mod health;
pub mod listener;
pub mod publish;
pub mod server;
pub mod token;
