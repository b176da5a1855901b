//! Switchyard's bench harness.
//!
//! - `benches/hot_paths.rs`: criterion benches (`cargo bench -p switchyard-benches`).
//! - `src/bin/loadgen.rs`: the load generator (`target/release/loadgen --help`): real
//!   WebSocket clients with real JWTs against Switchyard or the Socket.IO peer
//!   (`benches/peer/`), publishes through Redis, end-to-end latency in HDR histograms, loss
//!   detected by per-room offsets / sequence numbers.
//! - `src/bin/crudload.rs`: the CRUD side (`target/release/crudload --help`): REST status
//!   change → WebSocket event, and payments, at stepped rates through one or more API
//!   processes (SQLite vs PostgreSQL in `run.sh`'s `crud` scenario, `crud_report.py`).
//! - `run.sh`: the whole side-by-side suite (`loadgen run/handshake/idle/locations`); `plot.py`
//!   renders BENCHMARKS.md and the plots; `analysis.md` is the hand-written part of it.
//!
//! # Layout
//! - [`procstat`]: RSS and CPU time of server processes from `/proc`.
//! - [`proto`]: the client protocols (one file per system).
//! - [`net`]: client sockets bound to several loopback source addresses.
//! - [`hist`]: latency histograms and their serialization for merging.
//! - [`wire`]: the load generator's WebSocket client (frames parsed in place).

pub mod hist;
pub mod net;
pub mod procstat;
pub mod proto;
pub mod wire;
