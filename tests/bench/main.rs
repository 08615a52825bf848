//! Benchmarks: they print figures (docs/benchmarks.md) and assert nothing
//! about time. Not run by `cargo test` (`test = false` in Cargo.toml); run
//! one in a release build, for example
//!
//!     cargo test --release --test bench throughput -- --nocapture

#[path = "../common/mod.rs"]
mod common;

mod daemon;
mod header_flood;
mod latency;
mod postfix;
mod ttl_cache;
