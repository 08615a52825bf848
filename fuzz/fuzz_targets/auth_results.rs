//! Fuzz target `auth_results`: see `dispatch_milter_fuzz::auth_results` for what it feeds
//! and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch_milter_fuzz::auth_results(data));
