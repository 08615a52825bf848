//! Fuzz target `map_file`: see `dispatch_milter_fuzz::map_file` for what it feeds
//! and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch_milter_fuzz::map_file(data));
