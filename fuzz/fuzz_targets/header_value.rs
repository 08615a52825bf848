//! Fuzz target `header_value`: see `dispatch_milter_fuzz::header_value` for what it feeds
//! and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch_milter_fuzz::header_value(data));
