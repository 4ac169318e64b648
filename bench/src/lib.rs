//! Benchmarks live in `benches/`; run `cargo bench -p veer-bench`.
