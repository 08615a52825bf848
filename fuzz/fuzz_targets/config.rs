//! Fuzz target `config`: see `dispatch_milter_fuzz::config` for what it feeds
//! and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch_milter_fuzz::config(data));
