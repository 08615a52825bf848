//! Configuration: the TOML file as written (`raw`), its validation with file,
//! line and column (`error`, `options`), and its compilation into the
//! immutable [`Policy`](crate::policy::Policy) the engine runs (`compile`).

pub mod error;
pub mod options;
