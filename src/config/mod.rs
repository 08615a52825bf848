//! Configuration: the TOML file as written (`raw`), its validation with file,
//! line and column (`error`, `options`), and its compilation into the
//! immutable [`Policy`](crate::policy::Policy) the engine runs (`compile`).

pub mod compile;
pub mod error;
pub mod options;
pub mod raw;
pub mod registry;

pub use compile::compile_str;
pub use error::{ConfigError, ConfigErrors};
pub use registry::Registry;

use crate::policy::Policy;
use std::path::Path;

/// Read and compile a configuration file with the built-in kinds.
pub fn load(path: &Path) -> Result<Policy, ConfigErrors> {
    load_with(path, &Registry::builtin())
}

/// The largest configuration file read: far beyond any real one (tables
/// belong in table files), and a bound on what a wrong path can cost.
const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// Why the configuration file could not be read as text.
#[derive(Debug, thiserror::Error)]
enum ReadConfigError {
    #[error(transparent)]
    File(#[from] crate::files::ReadError),
    #[error("it is not valid UTF-8")]
    NotUtf8,
}

fn read_config(path: &Path) -> Result<String, ReadConfigError> {
    let bytes = crate::files::read_regular(path, MAX_CONFIG_SIZE)?;
    String::from_utf8(bytes).map_err(|_| ReadConfigError::NotUtf8)
}

/// Read and compile a configuration file with the kinds of `registry`.
pub fn load_with(path: &Path, registry: &Registry) -> Result<Policy, ConfigErrors> {
    match read_config(path) {
        Ok(text) => compile_str(path, &text, registry),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            position: None,
            message: format!("cannot read the configuration: {e}"),
            hint: Some("check the path given with -c and the file's permissions".to_string()),
        }])),
    }
}
