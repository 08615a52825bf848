//! Authentication-Results (RFC 8601): the result vocabulary that every
//! method shares ([`Status`]), and reading the one part of a received
//! header that the daemon acts on: its authserv-id (§2.2), to delete every
//! header that claims to come from us, however the sender spelled the claim.

use crate::address::normalize_domain;
use serde::Serialize;
use std::fmt;

/// The result vocabulary of RFC 8601 §2.7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Softfail,
    Neutral,
    None,
    Temperror,
    Permerror,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Pass,
        Status::Fail,
        Status::Softfail,
        Status::Neutral,
        Status::None,
        Status::Temperror,
        Status::Permerror,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Softfail => "softfail",
            Status::Neutral => "neutral",
            Status::None => "none",
            Status::Temperror => "temperror",
            Status::Permerror => "permerror",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authserv-id an Authentication-Results value starts with: after
/// optional CFWS (white space, folding and comments, which nest and may
/// hold quoted pairs), a `value` of RFC 2045 §5.1, that is a token or a
/// quoted string, whose quoted pairs stand for their character. `None` when
/// the value does not start that way.
pub fn authserv_id(value: &str) -> Option<String> {
    let rest = skip_cfws(value)?;
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut id = String::new();
        let mut chars = quoted.chars();
        loop {
            match chars.next()? {
                '"' => return Some(id),
                // A fold right after the backslash is unfolded before the
                // pair is read (RFC 5322 §2.2.3): the break is no part of
                // the id, and no id holds a line break.
                '\\' => match chars.next()? {
                    '\r' | '\n' => {}
                    c => id.push(c),
                },
                // Folding inside a quoted string is white space.
                '\r' | '\n' => {}
                c => id.push(c),
            }
        }
    }
    let end = rest
        .find(|c: char| c.is_whitespace() || c.is_control() || TSPECIALS.contains(c))
        .unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_string())
}

/// RFC 2045 §5.1: the characters a token cannot hold.
const TSPECIALS: &str = "()<>@,;:\\\"/[]?=";

/// What follows leading white space and comments; `None` for a comment
/// that never closes.
fn skip_cfws(s: &str) -> Option<&str> {
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        let Some(comment) = rest.strip_prefix('(') else {
            return Some(rest);
        };
        let mut depth = 1u32;
        let mut chars = comment.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => {
                    chars.next()?;
                }
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        break i + 1;
                    }
                }
                _ => {}
            }
        };
        rest = &comment[end..];
    }
}

/// Whether an Authentication-Results value claims `ours` as its authserv-id:
/// compared case-insensitively, and as domains where both are (a U-label
/// and its A-label are one name; a trailing dot changes nothing).
pub fn claims(value: &str, ours: &str) -> bool {
    let Some(id) = authserv_id(value) else {
        return false;
    };
    if id.eq_ignore_ascii_case(ours) {
        return true;
    }
    match (normalize_domain(&id), normalize_domain(ours)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_ids() {
        assert_eq!(
            authserv_id("mx.example.org; spf=pass").as_deref(),
            Some("mx.example.org")
        );
        assert_eq!(
            authserv_id("mx.example.org 1; none").as_deref(),
            Some("mx.example.org")
        );
        assert_eq!(
            authserv_id("mx.example.org;dkim=pass").as_deref(),
            Some("mx.example.org")
        );
        assert_eq!(authserv_id("; dkim=pass"), None);
        assert_eq!(authserv_id(""), None);
    }

    /// Found by the `auth_results` fuzz target: a backslash before a line
    /// break put the break into the id.
    #[test]
    fn a_fold_after_a_backslash_is_unfolded_first() {
        assert_eq!(
            authserv_id("\"mx.\\\r\n example.org\"; dkim=pass").as_deref(),
            Some("mx. example.org")
        );
        assert_eq!(authserv_id("\"\\\n\0)\"").as_deref(), Some("\0)"));
    }

    #[test]
    fn every_spelling_of_our_id_is_ours() {
        for forged in [
            "mx.example.org; dkim=pass",
            "MX.Example.ORG; dkim=pass",
            "(x) mx.example.org; dkim=pass",
            "(a (nested) comment) mx.example.org; dkim=pass",
            "(with \\) a quoted pair) mx.example.org; dkim=pass",
            "\"mx.example.org\"; dkim=pass",
            "\"mx.exam\\ple.org\"; dkim=pass",
            "\r\n\t(folded)\r\n mx.example.org\r\n ; dkim=pass",
            "mx.example.org.; dkim=pass",
            " \"MX.EXAMPLE.ORG\" (c) 1; dkim=pass",
            // White space inside the quotes: a reader that trims would take
            // it for ours, so it goes too.
            "\"mx.example.org \"; dkim=pass",
        ] {
            assert!(claims(forged, "mx.example.org"), "{forged:?}");
        }
        assert!(claims("xn--bcher-kva.example; dkim=pass", "bücher.example"));
        assert!(claims(
            "mx.example.org\u{3002}; dkim=pass",
            "mx.example.org"
        ));
        for other in [
            "mx.example.org.evil; dkim=pass",
            "evil.example; dkim=pass (mx.example.org)",
            "(mx.example.org) evil.example; dkim=pass",
            "(unclosed mx.example.org; dkim=pass",
        ] {
            assert!(!claims(other, "mx.example.org"), "{other:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(value in any::<String>()) {
            let _ = claims(&value, "mx.example.org");
        }

        #[test]
        fn comments_and_quoting_do_not_hide_the_id(
            comments in proptest::collection::vec("[a-z ()\\\\]{0,8}", 0..3),
            quote in any::<bool>(),
            upper in any::<bool>(),
        ) {
            let id = if upper { "MX.EXAMPLE.ORG" } else { "mx.example.org" };
            let id = if quote { format!("\"{id}\"") } else { id.to_string() };
            // Only comments that are balanced once escaped.
            let prefix: String = comments
                .iter()
                .map(|c| {
                    let escaped: String = c
                        .chars()
                        .flat_map(|ch| match ch {
                            '(' | ')' | '\\' => vec!['\\', ch],
                            ch => vec![ch],
                        })
                        .collect();
                    format!("({escaped}) ")
                })
                .collect();
            let value = format!("{prefix}{id}; dkim=pass");
            prop_assert!(claims(&value, "mx.example.org"), "{}", value);
        }
    }
}
