//! Fuzz target `dkim_key`: see `dispatch_milter_fuzz::dkim_key` for what it feeds
//! and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch_milter_fuzz::dkim_key(data));
