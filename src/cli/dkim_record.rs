//! `dispatch-milter dkim-record KEYFILE --selector S`: print the DNS TXT
//! record that publishes the public half of a DKIM private key, as a zone
//! file line split into 255-byte strings. The key is parsed and checked as
//! `dkim_sign` would load it, so a key it prints a record for can sign.

use crate::modifiers::dkim_sign::{KeyError, LoadedKey, valid_selector};
use std::path::Path;

/// Why no record can be printed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// Not a DNS selector; kept as given.
    #[error(
        "--selector \"{}\" must be DNS labels of letters, digits, \"-\" and \"_\"",
        .0.escape_debug()
    )]
    Selector(String),
    /// The key cannot be used; the text follows the file's name.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The record line for the key in `pem` under `selector`.
pub(crate) fn record(pem: &str, selector: &str) -> Result<String, RecordError> {
    if !valid_selector(selector) {
        return Err(RecordError::Selector(selector.to_string()));
    }
    let key = LoadedKey::from_pem(pem)?;
    Ok(key.zone_record(selector))
}

/// Run `dkim-record`; returns the process exit status: 0, 1 when the key
/// cannot be read or used, 2 for a bad selector.
pub fn run(keyfile: &Path, selector: &str) -> i32 {
    if !valid_selector(selector) {
        eprintln!("{}", RecordError::Selector(selector.to_string()));
        return 2;
    }
    let text = match crate::files::read_regular(keyfile, 1 << 20) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => {
                eprintln!("{}: is not a PEM file (it is not text)", keyfile.display());
                return 1;
            }
        },
        Err(e) => {
            eprintln!("{}: cannot be read: {e}", keyfile.display());
            return 1;
        }
    };
    match record(&text, selector) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("{}: {e}", keyfile.display());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name);
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn records_for_rsa_and_ed25519() {
        let line = record(&key("rsa2048-pkcs8.pem"), "s2026").unwrap();
        assert!(
            line.starts_with("s2026._domainkey IN TXT ( \"v=DKIM1; k=rsa; p=MIIBIjAN"),
            "{line}"
        );
        let line = record(&key("ed25519.pem"), "ed").unwrap();
        assert!(
            line.starts_with("ed._domainkey IN TXT ( \"v=DKIM1; k=ed25519; p="),
            "{line}"
        );
    }

    #[test]
    fn problems_are_reported() {
        assert!(record(&key("ed25519.pem"), "bad selector").is_err());
        assert_eq!(
            record(&key("ed25519.pem"), "a\tb").unwrap_err().to_string(),
            "--selector \"a\\tb\" must be DNS labels of letters, digits, \"-\" and \"_\""
        );
        let e = record(&key("rsa768.pem"), "s").unwrap_err().to_string();
        assert!(e.contains("768 bits"), "{e}");
        assert_eq!(run(Path::new("/nonexistent/key.pem"), "s"), 1);
        assert_eq!(run(Path::new("/nonexistent/key.pem"), "a b"), 2);
    }
}
