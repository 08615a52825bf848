//! Fuzz target `milter_wire`: see `dispatch_milter_fuzz::milter_wire` for what it feeds
//! and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch_milter_fuzz::milter_wire(data));
