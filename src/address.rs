//! Envelope addresses and domains, normalised once so that matching is a plain
//! string comparison: domains are NFC-normalised, IDNA-mapped to their A-label
//! form, lowercased and stripped of a trailing dot; local parts are NFC and
//! lowercased for matching while the original spelling is kept for the MTA.

use std::borrow::Cow;
use std::fmt;
use unicode_normalization::UnicodeNormalization;

/// An envelope address as the MTA gave it, with its normalised matching key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// The null reverse-path `<>` (bounces, RFC 5321 §4.5.5).
    Null,
    /// A local part with no domain, such as the bare `postmaster` of
    /// RFC 5321 §4.1.1.3.
    Local { original: String, local: String },
    /// `local@domain`; `local` and `domain` are the matching keys.
    Mailbox {
        original: String,
        local: String,
        domain: String,
    },
}

/// Why a string is not a usable domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDomain(pub String);

impl fmt::Display for InvalidDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid domain \"{}\"", self.0)
    }
}

/// Normalise a domain for matching: NFC, IDNA (UTS #46) to A-labels, lowercase,
/// no trailing dot. `bücher.example` and `XN--BCHER-KVA.example.` give the same key.
pub fn normalize_domain(domain: &str) -> Result<String, InvalidDomain> {
    let trimmed = domain.trim().trim_end_matches('.');
    if trimmed.is_empty() || trimmed.starts_with('.') || trimmed.contains("..") {
        return Err(InvalidDomain(domain.to_string()));
    }
    // An address literal such as [192.0.2.1] is kept as is (RFC 5321 §4.1.3).
    if trimmed.starts_with('[') && trimmed.ends_with(']') {
        return Ok(trimmed.to_ascii_lowercase());
    }
    // ASCII text is already in NFC: skip the per-character normalisation
    // pass, which is most of the cost of parsing an envelope address.
    let nfc: Cow<str> = if trimmed.is_ascii() {
        Cow::Borrowed(trimmed)
    } else {
        Cow::Owned(trimmed.nfc().collect())
    };
    let ascii = idna::domain_to_ascii(&nfc).map_err(|_| InvalidDomain(domain.to_string()))?;
    let valid_chars = ascii
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ascii.is_empty() || !valid_chars {
        return Err(InvalidDomain(domain.to_string()));
    }
    Ok(ascii)
}

fn normalize_local(local: &str) -> String {
    // The same result for ASCII (already NFC; Unicode and ASCII lowercase
    // agree there), without the normalisation pass.
    if local.is_ascii() {
        return local.to_ascii_lowercase();
    }
    local.nfc().collect::<String>().to_lowercase()
}

impl Address {
    /// Parse an address as a milter receives it: with or without angle
    /// brackets, possibly with a source route. Never fails: an address whose
    /// domain cannot be normalised keeps its lowercased domain, so it simply
    /// matches no configured domain.
    pub fn parse(raw: &str) -> Address {
        let mut s = raw.trim();
        if let Some(inner) = s.strip_prefix('<').and_then(|r| r.strip_suffix('>')) {
            s = inner.trim();
        }
        // Drop an obsolete source route "@a,@b:user@c" (RFC 5321 §4.1.2).
        if s.starts_with('@')
            && let Some(idx) = s.find(':')
        {
            s = &s[idx + 1..];
        }
        if s.is_empty() {
            return Address::Null;
        }
        match s.rfind('@') {
            Some(at) if at > 0 && at + 1 < s.len() => {
                let (local, domain) = (&s[..at], &s[at + 1..]);
                let domain = normalize_domain(domain).unwrap_or_else(|_| domain.to_lowercase());
                Address::Mailbox {
                    original: s.to_string(),
                    local: normalize_local(local),
                    domain,
                }
            }
            _ => Address::Local {
                original: s.to_string(),
                local: normalize_local(s.trim_end_matches('@')),
            },
        }
    }

    /// Parse an address written in the configuration, where a bad domain is an
    /// error rather than something to carry through.
    pub fn parse_config(raw: &str) -> Result<Address, String> {
        let s = raw.trim();
        if s == "<>" {
            return Ok(Address::Null);
        }
        if s.contains(['<', '>', ' ', '\r', '\n', '\0']) {
            return Err(format!("invalid address \"{raw}\""));
        }
        match s.rfind('@') {
            Some(at) if at > 0 && at + 1 < s.len() => {
                normalize_domain(&s[at + 1..]).map_err(|e| format!("{e} in address \"{raw}\""))?;
                Ok(Address::parse(s))
            }
            Some(_) => Err(format!("invalid address \"{raw}\"")),
            None => Ok(Address::parse(s)),
        }
    }

    /// The key used for exact-address matching: `local@domain`, `<>` or `local`.
    pub fn key(&self) -> String {
        match self {
            Address::Null => "<>".to_string(),
            Address::Local { local, .. } => local.clone(),
            Address::Mailbox { local, domain, .. } => {
                // Called per recipient and table lookup: one exact-size
                // allocation instead of the formatting machinery.
                let mut key = String::with_capacity(local.len() + 1 + domain.len());
                key.push_str(local);
                key.push('@');
                key.push_str(domain);
                key
            }
        }
    }

    pub fn domain(&self) -> Option<&str> {
        match self {
            Address::Mailbox { domain, .. } => Some(domain),
            _ => None,
        }
    }

    pub fn local_part(&self) -> Option<&str> {
        match self {
            Address::Null => None,
            Address::Local { local, .. } | Address::Mailbox { local, .. } => Some(local),
        }
    }

    /// The address as the MTA spelled it (without angle brackets); `""` for `<>`.
    pub fn original(&self) -> &str {
        match self {
            Address::Null => "",
            Address::Local { original, .. } | Address::Mailbox { original, .. } => original,
        }
    }

    /// The address in angle brackets, as it goes back to the MTA.
    pub fn bracketed(&self) -> String {
        format!("<{}>", self.original())
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Address::Null)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Null => f.write_str("<>"),
            other => f.write_str(other.original()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idna_and_case_give_one_domain() {
        let a = normalize_domain("Bücher.Example").unwrap();
        let b = normalize_domain("xn--bcher-kva.example.").unwrap();
        assert_eq!(a, "xn--bcher-kva.example");
        assert_eq!(a, b);
    }

    #[test]
    fn nfc_and_nfd_are_one_domain() {
        let nfd = "bu\u{0308}cher.example";
        assert_eq!(
            normalize_domain(nfd).unwrap(),
            normalize_domain("bücher.example").unwrap()
        );
    }

    #[test]
    fn ascii_fast_path_matches_the_unicode_path() {
        // Every printable ASCII character, in both cases, through both paths.
        let all: String = (0x21u8..0x7f).map(char::from).collect();
        for s in [all.as_str(), "Joe.Bloggs+Tag", "MiXeD-CaSe_1"] {
            assert_eq!(
                normalize_local(s),
                s.nfc().collect::<String>().to_lowercase()
            );
        }
        assert_eq!(
            normalize_domain("Mail.Example.ORG.").unwrap(),
            "mail.example.org"
        );
    }

    #[test]
    fn bad_domains_are_rejected() {
        for bad in ["", ".", "a..b", "exa mple.org", "-x-.org\u{0}"] {
            assert!(normalize_domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parse_envelope_forms() {
        assert_eq!(Address::parse("<>"), Address::Null);
        assert_eq!(Address::parse(""), Address::Null);
        let a = Address::parse("<User@EXAMPLE.org.>");
        assert_eq!(a.key(), "user@example.org");
        assert_eq!(a.original(), "User@EXAMPLE.org.");
        let pm = Address::parse("<Postmaster>");
        assert_eq!(pm.key(), "postmaster");
        assert_eq!(pm.domain(), None);
        let routed = Address::parse("<@relay.example:joe@example.com>");
        assert_eq!(routed.key(), "joe@example.com");
        let quoted = Address::parse("<\"a@b\"@example.com>");
        assert_eq!(quoted.domain(), Some("example.com"));
    }

    #[test]
    fn config_addresses_are_validated() {
        assert!(Address::parse_config("user@exa mple.org").is_err());
        assert!(Address::parse_config("user@").is_err());
        assert!(Address::parse_config("<user@example.org>").is_err());
        assert_eq!(Address::parse_config("<>").unwrap(), Address::Null);
        assert_eq!(
            Address::parse_config("Joe@Bücher.example").unwrap().key(),
            "joe@xn--bcher-kva.example"
        );
    }
}
