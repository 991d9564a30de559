//! herald-bench: load generator, baseline server and plotting helpers.
