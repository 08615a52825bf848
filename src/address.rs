//! Envelope addresses and domains, turned into one canonical form where they
//! enter so that matching is a plain string comparison. A local part is
//! reduced to the mailbox it names (RFC 5321 §4.1.2: `"joe"`, `"j\oe"` and
//! `joe` are one mailbox), NFC-normalised, and quoted again only where its
//! text needs quoting; the matching key is that form lowercased. Domains are
//! NFC-normalised, IDNA-mapped to their A-label form, lowercased and stripped
//! of a trailing dot. The spelling the MTA gave is kept for what goes back to
//! it. An address that cannot be read this way is an error, so that callers
//! refuse it instead of letting a looser rule match it.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use unicode_normalization::UnicodeNormalization;

/// An envelope address as the MTA gave it, with its canonical forms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// The null reverse-path `<>` (bounces, RFC 5321 §4.5.5).
    Null,
    /// A local part with no domain, such as the bare `postmaster` of
    /// RFC 5321 §4.1.1.3.
    Local(LocalPart),
    /// `local@domain`.
    Mailbox {
        /// The part before the `@`.
        local: LocalPart,
        /// The domain, normalized: lowercase A-labels without a final dot.
        domain: String,
    },
}

/// A local part: as spelled, as the mailbox it names, and as a matching key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LocalPart {
    /// The whole address as the MTA spelled it (without angle brackets or
    /// source route): what DELRCPT and rewrites hand back to the MTA.
    original: String,
    /// The mailbox name with quoting removed, NFC, case kept: `john smith`
    /// for `"john smith"`.
    text: String,
    /// `text` quoted where it needs quoting, lowercased: the matching key.
    key: String,
}

/// Why an address cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address \"{}\": {reason}", .address.escape_debug())]
pub struct InvalidAddress {
    /// The address as given.
    pub address: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Why an address written in the configuration or a table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigAddressError {
    /// Empty, in angle brackets or with a source route: the configuration
    /// writes a bare `local@domain` (or `<>`).
    #[error("invalid address \"{}\"", .0.escape_debug())]
    NotBare(String),
    /// Bare, but not a readable address.
    #[error(transparent)]
    Invalid(#[from] InvalidAddress),
}

/// Why a string is not a usable domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid domain \"{}\"", .0.escape_debug())]
pub struct InvalidDomain(pub String);

/// Normalise a domain for matching: NFC, IDNA (UTS #46) to A-labels, lowercase,
/// no trailing dot. `bücher.example` and `XN--BCHER-KVA.example.` give the same
/// key. An address literal keeps its brackets, with an IP address in its
/// canonical text form: `[192.0.2.1]`, `[ipv6:2001:db8::1]`.
pub fn normalize_domain(domain: &str) -> Result<String, InvalidDomain> {
    let invalid = || InvalidDomain(domain.to_string());
    let trimmed = domain.trim();
    if let Some(literal) = trimmed.strip_prefix('[') {
        let inner = literal.strip_suffix(']').ok_or_else(invalid)?;
        return normalize_literal(inner).ok_or_else(invalid);
    }
    // One trailing dot is the root; more is an empty label.
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if trimmed.is_empty()
        || trimmed.starts_with('.')
        || trimmed.ends_with('.')
        || trimmed.contains("..")
    {
        return Err(invalid());
    }
    // ASCII text is already in NFC: skip the per-character normalisation
    // pass, which is most of the cost of parsing an envelope address.
    let nfc: Cow<str> = if trimmed.is_ascii() {
        Cow::Borrowed(trimmed)
    } else {
        Cow::Owned(trimmed.nfc().collect())
    };
    let ascii = idna::domain_to_ascii(&nfc).map_err(|_| invalid())?;
    // IDNA maps the full-width and ideographic full stops (U+FF0E, U+3002,
    // U+FF61) to ".": the root dot may only appear now.
    let ascii = match ascii.strip_suffix('.') {
        Some(stripped) if !stripped.is_empty() && !stripped.ends_with('.') => stripped.to_string(),
        Some(_) => return Err(invalid()),
        None => ascii,
    };
    let valid_chars = ascii
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ascii.is_empty() || !valid_chars || ascii.starts_with('.') || ascii.contains("..") {
        return Err(invalid());
    }
    Ok(ascii)
}

/// An address literal's content (RFC 5321 §4.1.3), canonical: an IPv4
/// address, `ipv6:` and a compressed IPv6 address, or a general literal
/// `tag:text` lowercased.
fn normalize_literal(inner: &str) -> Option<String> {
    if let Ok(v4) = inner.parse::<Ipv4Addr>() {
        return Some(format!("[{v4}]"));
    }
    let (tag, text) = inner.split_once(':')?;
    if tag.eq_ignore_ascii_case("ipv6") {
        let v6 = text.parse::<Ipv6Addr>().ok()?;
        return Some(format!("[ipv6:{v6}]"));
    }
    // General-address-literal: a Standardized-tag and dcontent (%d33-90 /
    // %d94-126).
    let tag_ok = !tag.is_empty()
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !tag.ends_with('-');
    let text_ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b));
    (tag_ok && text_ok).then(|| format!("[{}]", inner.to_ascii_lowercase()))
}

/// RFC 5322 §3.2.3 atext, with RFC 6531's UTF-8 beyond ASCII.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

/// Whether `text` can be written without quotes: a Dot-string of
/// RFC 5321 §4.1.2, atoms separated by single dots.
fn is_dot_string(text: &str) -> bool {
    !text.is_empty()
        && text
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A local part's text spelled for an envelope: as it is when it is a
/// Dot-string, else as a quoted string with `"` and `\` escaped.
pub(crate) fn quote_local(text: &str) -> Cow<'_, str> {
    if is_dot_string(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Cow::Owned(out)
}

/// The mailbox a local part names: quoted strings and quoted pairs reduced
/// to their content. Quoted and unquoted runs may alternate, as Postfix reads
/// them (`"jo"e` is `joe`); dots outside quotes are taken as written, even
/// where RFC 5321 forbids them (`a..b`), since MTAs accept such mailboxes.
/// Refused: a character outside quotes that is neither atext nor a dot, a
/// control character anywhere, a backslash outside quotes, an unterminated
/// quote, and an empty local part that is not the quoted `""`.
fn unquote_local(local: &str) -> Result<String, &'static str> {
    let mut text = String::with_capacity(local.len());
    let mut quoted = false;
    let mut chars = local.chars();
    while let Some(c) = chars.next() {
        if c.is_control() {
            return Err("control character in the local part");
        }
        if quoted {
            match c {
                '"' => quoted = false,
                '\\' => match chars.next() {
                    // quoted-pairSMTP is a backslash and one printable ASCII
                    // character or space (RFC 5321 §4.1.2).
                    Some(p) if (' '..='~').contains(&p) => text.push(p),
                    _ => {
                        return Err(
                            "a backslash in a quoted string must escape a printable character",
                        );
                    }
                },
                c => text.push(c),
            }
        } else {
            match c {
                '"' => quoted = true,
                '.' => text.push('.'),
                c if is_atext(c) => text.push(c),
                '\\' => return Err("backslash outside a quoted string"),
                _ => return Err("character not allowed in a local part outside quotes"),
            }
        }
    }
    if quoted {
        return Err("unterminated quoted string");
    }
    if text.is_empty() && !local.starts_with('"') {
        return Err("empty local part");
    }
    Ok(text)
}

/// The characters of `s` that stand outside quoted strings, with their
/// byte offsets: a quote opens or closes a quoted string, and inside one a
/// backslash escapes the next character. Shared by everything that splits
/// text where an address may be quoted.
pub fn outside_quotes(s: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let (mut quoted, mut escaped) = (false, false);
    s.char_indices().filter(move |&(_, c)| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            '\\' if quoted => {
                escaped = true;
                false
            }
            '"' => {
                quoted = !quoted;
                false
            }
            _ => !quoted,
        }
    })
}

/// Where the domain starts: after the last `@` outside a quoted string.
fn split_at_domain(address: &str) -> Option<(&str, &str)> {
    let at = outside_quotes(address)
        .filter(|&(_, c)| c == '@')
        .last()
        .map(|(i, _)| i)?;
    Some((&address[..at], &address[at + 1..]))
}

impl LocalPart {
    fn parse(original: &str, local: &str) -> Result<LocalPart, &'static str> {
        let text = unquote_local(local)?;
        // ASCII text is already in NFC, and ASCII and Unicode lowercase agree
        // on it: skip the normalisation passes.
        let text = if text.is_ascii() {
            text
        } else {
            text.nfc().collect()
        };
        let spelled = quote_local(&text);
        let key = if spelled.is_ascii() {
            spelled.to_ascii_lowercase()
        } else {
            // Lowercasing can undo NFC: `İ` becomes `i` and a combining
            // dot, which NFC orders after other marks and composes with
            // some. Normalise again so that the key parses to itself, since
            // a table lookup normalises the key it is given once more.
            spelled.to_lowercase().nfc().collect()
        };
        Ok(LocalPart {
            original: original.to_string(),
            text,
            key,
        })
    }
}

impl Address {
    /// Parse an address as a milter receives it: with or without angle
    /// brackets, possibly with an obsolete source route (RFC 5321 §4.1.2),
    /// which is dropped.
    pub fn parse(raw: &str) -> Result<Address, InvalidAddress> {
        let invalid = |reason| InvalidAddress {
            address: raw.to_string(),
            reason,
        };
        let mut s = raw.trim_matches([' ', '\t']);
        if let Some(inner) = s.strip_prefix('<') {
            s = inner
                .strip_suffix('>')
                .ok_or_else(|| invalid("unbalanced angle brackets"))?
                .trim_matches([' ', '\t']);
        }
        // "@a,@b:user@c": the route holds domains only, so the first colon
        // ends it.
        if s.starts_with('@') {
            let idx = s
                .find(':')
                .ok_or_else(|| invalid("source route without a colon"))?;
            s = &s[idx + 1..];
            if s.is_empty() {
                return Err(invalid("source route without an address"));
            }
        }
        if s.is_empty() {
            return Ok(Address::Null);
        }
        match split_at_domain(s) {
            Some((local, domain)) => {
                if domain.is_empty() {
                    return Err(invalid("empty domain"));
                }
                let domain = normalize_domain(domain).map_err(|_| invalid("invalid domain"))?;
                let local = LocalPart::parse(s, local).map_err(invalid)?;
                Ok(Address::Mailbox { local, domain })
            }
            None => {
                let local = LocalPart::parse(s, s).map_err(invalid)?;
                // `<"">` names no mailbox: Postfix reads it as the null
                // sender (its internal form of the address is empty).
                if local.text.is_empty() {
                    return Ok(Address::Null);
                }
                Ok(Address::Local(local))
            }
        }
    }

    /// Parse an address written in the configuration or a table value: no
    /// angle brackets or source route, `<>` for the null sender.
    pub fn parse_config(raw: &str) -> Result<Address, ConfigAddressError> {
        let s = raw.trim();
        if s == "<>" {
            return Ok(Address::Null);
        }
        if s.is_empty() || s.starts_with(['<', '@']) || s.ends_with('>') {
            return Err(ConfigAddressError::NotBare(raw.to_string()));
        }
        Ok(Address::parse(s)?)
    }

    /// The key used for exact-address matching: `local@domain`, `<>` or
    /// `local`, in canonical form.
    pub fn key(&self) -> String {
        match self {
            Address::Null => "<>".to_string(),
            Address::Local(local) => local.key.clone(),
            Address::Mailbox { local, domain } => {
                // Called per recipient and table lookup: one exact-size
                // allocation instead of the formatting machinery.
                let mut key = String::with_capacity(local.key.len() + 1 + domain.len());
                key.push_str(&local.key);
                key.push('@');
                key.push_str(domain);
                key
            }
        }
    }

    /// The address in canonical spelling with the local part's case kept:
    /// what patterns of `rewrite_sender` and `rewrite_rcpt` see, so that
    /// quoting cannot get around them.
    pub fn canonical(&self) -> String {
        match self {
            Address::Null => String::new(),
            Address::Local(local) => quote_local(&local.text).into_owned(),
            Address::Mailbox { local, domain } => {
                format!("{}@{domain}", quote_local(&local.text))
            }
        }
    }

    /// The domain in canonical form, for a `local@domain` address.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Address::Mailbox { domain, .. } => Some(domain),
            _ => None,
        }
    }

    /// The mailbox name without quoting, case kept (`john smith` for
    /// `"John Smith"@example.org` is `John Smith`).
    pub(crate) fn local_text(&self) -> Option<&str> {
        self.local().map(|l| l.text.as_str())
    }

    fn local(&self) -> Option<&LocalPart> {
        match self {
            Address::Null => None,
            Address::Local(local) | Address::Mailbox { local, .. } => Some(local),
        }
    }

    /// The domain as the MTA spelled it.
    pub(crate) fn original_domain(&self) -> Option<&str> {
        match self {
            Address::Mailbox { local, .. } => {
                split_at_domain(&local.original).map(|(_, domain)| domain)
            }
            _ => None,
        }
    }

    /// The local part as the MTA spelled it, for rewrites that keep it.
    pub(crate) fn original_local(&self) -> Option<&str> {
        match self {
            Address::Null => None,
            Address::Local(local) => Some(&local.original),
            Address::Mailbox { local, .. } => {
                split_at_domain(&local.original).map(|(spelled, _)| spelled)
            }
        }
    }

    /// The address as the MTA spelled it (without angle brackets); `""` for `<>`.
    pub fn original(&self) -> &str {
        self.local().map_or("", |l| l.original.as_str())
    }

    /// The address in angle brackets, as it goes back to the MTA.
    pub fn bracketed(&self) -> String {
        format!("<{}>", self.original())
    }

    /// Whether this is the null reverse-path `<>`.
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

    fn parse(s: &str) -> Address {
        Address::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

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
        // Every atext character, in both cases, through both paths.
        let all: String = (0x21u8..0x7f)
            .map(char::from)
            .filter(|&c| is_atext(c))
            .collect();
        for s in [all.as_str(), "Joe.Bloggs+Tag", "MiXeD-CaSe_1"] {
            let local = LocalPart::parse(s, s).unwrap();
            assert_eq!(local.key, s.nfc().collect::<String>().to_lowercase());
        }
        assert_eq!(
            normalize_domain("Mail.Example.ORG.").unwrap(),
            "mail.example.org"
        );
    }

    #[test]
    fn bad_domains_are_rejected() {
        for bad in [
            "",
            ".",
            "a..b",
            "a.b..",
            "exa mple.org",
            "-x-.org\u{0}",
            "[192.0.2.1",
            "[300.1.1.1]",
            "[ipv6:zz::1]",
            "[x]",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_full_width_root_dot_is_the_root_dot() {
        for spelling in [
            "example.org\u{3002}",
            "example.org\u{ff0e}",
            "Example.ORG\u{ff61}",
        ] {
            assert_eq!(
                normalize_domain(spelling).unwrap(),
                "example.org",
                "{spelling:?}"
            );
            assert_eq!(
                parse(&format!("<user@{spelling}>")).key(),
                "user@example.org"
            );
        }
        assert!(normalize_domain("example.org.\u{3002}").is_err());
        assert!(normalize_domain("\u{3002}").is_err());
    }

    #[test]
    fn an_empty_quoted_local_part_alone_is_the_null_sender() {
        assert_eq!(parse("<\"\">"), Address::Null);
        assert!(parse("<\"\"@example.org>").domain().is_some());
    }

    #[test]
    fn address_literals_are_canonical() {
        assert_eq!(normalize_domain("[192.0.2.1]").unwrap(), "[192.0.2.1]");
        assert_eq!(
            normalize_domain("[IPv6:2001:DB8:0:0::1]").unwrap(),
            "[ipv6:2001:db8::1]"
        );
    }

    #[test]
    fn parse_envelope_forms() {
        assert_eq!(parse("<>"), Address::Null);
        assert_eq!(parse(""), Address::Null);
        let a = parse("<User@EXAMPLE.org.>");
        assert_eq!(a.key(), "user@example.org");
        assert_eq!(a.original(), "User@EXAMPLE.org.");
        let pm = parse("<Postmaster>");
        assert_eq!(pm.key(), "postmaster");
        assert_eq!(pm.domain(), None);
        let routed = parse("<@relay.example,@b.example:joe@example.com>");
        assert_eq!(routed.key(), "joe@example.com");
        assert_eq!(routed.original(), "joe@example.com");
        let quoted = parse("<\"a@b\"@example.com>");
        assert_eq!(quoted.domain(), Some("example.com"));
        assert_eq!(quoted.key(), "\"a@b\"@example.com");
        assert_eq!(parse("<\"a@b\">").key(), "\"a@b\"");
    }

    #[test]
    fn quoting_that_changes_nothing_is_removed() {
        for spelling in [
            "blocked@example.org",
            "\"blocked\"@example.org",
            "\"Blocked\"@Example.org",
            "\"bl\\ocked\"@example.org",
            "\"bl\"ocked@example.org",
            "bl\"ock\"ed@example.org",
            "\"blocked\"@EXAMPLE.ORG.",
        ] {
            assert_eq!(parse(spelling).key(), "blocked@example.org", "{spelling}");
        }
        assert_eq!(parse("\"a.b\"@x.example").key(), "a.b@x.example");
        assert_eq!(parse("\"a\".\"b\"@x.example").key(), "a.b@x.example");
    }

    #[test]
    fn text_that_needs_quotes_stays_quoted_once() {
        let a = parse("\"John Smith\"@example.org");
        assert_eq!(a.key(), "\"john smith\"@example.org");
        assert_eq!(a.local_text(), Some("John Smith"));
        assert_eq!(a.canonical(), "\"John Smith\"@example.org");
        assert_eq!(parse("\"John\\ Smith\"@example.org").key(), a.key());
        assert_eq!(parse("\"a\\\"b\"@x.example").key(), "\"a\\\"b\"@x.example");
        // Dots a Dot-string cannot hold are kept and quoted.
        assert_eq!(parse("a..b@x.example").key(), "\"a..b\"@x.example");
        assert_eq!(parse("\"a..b\"@x.example").key(), "\"a..b\"@x.example");
        assert_eq!(parse(".a@x.example").key(), "\".a\"@x.example");
        assert_eq!(parse("\"\"@x.example").key(), "\"\"@x.example");
    }

    #[test]
    fn the_canonical_key_parses_to_itself() {
        for s in [
            "\"John Smith\"@example.org",
            "\"a\\\"b\"@x.example",
            "a..b@x.example",
            "Jöe@Bücher.example",
            // Found by the `address` fuzz target: lowercase `İ` is `i` and
            // U+0307, which NFC puts after a mark of a lower class.
            "\u{130}\u{334}x@x.example",
            "\u{130}\u{5bc}x@x.example",
            "I\u{307}\u{5bc}x@x.example",
        ] {
            let key = parse(s).key();
            assert_eq!(parse(&key).key(), key, "{s}");
        }
        assert_eq!(
            parse("\u{130}\u{334}x@x.example").key(),
            "i\u{334}\u{307}x@x.example"
        );
    }

    #[test]
    fn unreadable_addresses_are_errors() {
        for bad in [
            "<a@example.org",
            "a@example.org>",
            "\"blocked@example.org",
            "bl\"ocked@example.org",
            "a b@example.org",
            "a\\b@example.org",
            "a@b@example.org",
            "a\r\n@example.org",
            "\"a\u{7}\"@example.org",
            "\"a\\\u{e9}\"@example.org",
            "@example.org",
            "user@",
            "user@exa mple.org",
            "user@a..b",
            "<@relay.example>",
            "(comment)user@example.org",
            "user@[192.0.2.300]",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} accepted");
        }
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
        assert_eq!(
            Address::parse_config("\"blocked\"@example.org")
                .unwrap()
                .key(),
            "blocked@example.org"
        );
    }

    #[test]
    fn config_address_error_texts() {
        let text = |s: &str| Address::parse_config(s).unwrap_err().to_string();
        assert_eq!(text(" <a\tb> "), "invalid address \" <a\\tb> \"");
        assert_eq!(text("user@"), "invalid address \"user@\": empty domain");
        assert_eq!(
            normalize_domain("a..b").unwrap_err().to_string(),
            "invalid domain \"a..b\""
        );
    }

    #[test]
    fn original_domain_is_as_spelled() {
        assert_eq!(
            parse("\"a@b\"@Example.ORG").original_domain(),
            Some("Example.ORG")
        );
        assert_eq!(parse("postmaster").original_domain(), None);
    }
}
