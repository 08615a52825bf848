//! Fuzz target `auth_records`: see `dispatch_milter_fuzz::auth_records` for what it feeds
//! and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch_milter_fuzz::auth_records(data));
