//! The offline commands: `check` validates a configuration, `test` runs the
//! policy on one message without an MTA. The binary only parses arguments
//! and calls these.

pub mod check;
pub mod dkim_record;
pub mod test;

/// sysexits' EX_CONFIG: the configuration is wrong (vector and others use it).
pub const EXIT_CONFIG: i32 = 78;
