//! Fuzz target `address`: see `dispatch_milter_fuzz::address` for what it feeds
//! and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch_milter_fuzz::address(data));
