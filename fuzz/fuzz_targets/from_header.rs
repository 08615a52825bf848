//! Fuzz target `from_header`: see `dispatch_milter_fuzz::from_header` for what it feeds
//! and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch_milter_fuzz::from_header(data));
