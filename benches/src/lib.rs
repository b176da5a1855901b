//! Benchmarks live in `benches/` (criterion): `cargo bench -p switchyard-benches`.
