//! herald-bench: the shared benchmark payload, the per-client envelope encoder of the
//! baseline server, and the helpers of the load generator and plots.
//!
//! The benchmarks themselves are in `benches/` (criterion), the binaries in `src/bin/`:
//! `herald-loadgen` (WebSocket load generator), `herald-baseline` (the replaced node's way
//! of streaming: axum + `tokio::sync::broadcast` + per-client serialization) and
//! `herald-plot` (PNG plots of the results). `bench/RESULTS.md` has the numbers.

pub mod loadgen;
pub mod payload;
pub mod stream;
