//! Switchyard's bench harness.
//!
//! - `benches/hot_paths.rs`: criterion benches (`cargo bench -p switchyard-benches`).
//! - `src/bin/loadgen.rs`: the load generator (`cargo run --release -p switchyard-benches
//!   --bin loadgen -- --help`): real WebSocket clients with real JWTs, publishes through the
//!   server publish API, end-to-end latency in HDR histograms, loss detected by offsets.
//!
//! # Layout
//! - [`procstat`]: RSS and CPU time of server processes from `/proc`.

pub mod procstat;
