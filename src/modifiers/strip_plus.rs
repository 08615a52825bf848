//! The `strip_plus` modifier: drops the address extension, `user+tag@domain`
//! becoming `user@domain`. `separator` (default "+") lists the separator
//! characters, each one counting, like Postfix's `recipient_delimiter`;
//! `sender` (default false) strips the envelope sender too.

use super::{Effects, Modifier, ModifierBuildContext, RewriteError};
use crate::address::{Address, quote_local};
use serde::Deserialize;
use std::sync::Arc;

/// `[modifiers.NAME]` with `kind = "strip_plus"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StripPlusOptions {
    separator: Option<String>,
    #[serde(default)]
    sender: bool,
}

/// The `strip_plus` modifier.
pub struct StripPlusModifier {
    separators: Vec<char>,
    sender: bool,
}

impl StripPlusModifier {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let StripPlusOptions { separator, sender } = ctx.options.parse()?;
        let separators = match separator {
            None => vec!['+'],
            Some(s) => Self::separators(ctx, &s)?,
        };
        Some(Arc::new(StripPlusModifier { separators, sender }))
    }

    fn separators(ctx: &mut ModifierBuildContext<'_, '_, '_>, s: &str) -> Option<Vec<char>> {
        let chars: Vec<char> = s.chars().collect();
        // `@` would cut into the domain, a quote would unbalance quoting, and
        // white space or control characters never occur in a plain local part.
        let usable = !chars.is_empty()
            && chars
                .iter()
                .all(|&c| c != '@' && c != '"' && !c.is_whitespace() && !c.is_control());
        if !usable {
            ctx.options.invalid(
                "separator",
                format_args!(
                    "must be one or more characters such as \"+\" or \"+-\", without @, quotes or white space, found \"{}\"",
                    s.escape_debug()
                ),
            );
            return None;
        }
        Some(chars)
    }

    /// The address without its extension, or `None` when it has none. The
    /// extension is cut from the mailbox name with quoting removed, as Postfix
    /// applies `recipient_delimiter` to it, so `"joe+x"@example.org` loses
    /// its extension like `joe+x@example.org`.
    fn strip(&self, address: &Address) -> Option<Address> {
        let text = address.local_text()?;
        let cut = text.find(|c| self.separators.contains(&c))?;
        // `+tag@domain` has no user to keep; leave such addresses alone.
        if cut == 0 {
            return None;
        }
        let local = quote_local(&text[..cut]);
        // The domain as the MTA spelled it.
        let stripped = match address.original_domain() {
            Some(domain) => format!("{local}@{domain}"),
            None => local.into_owned(),
        };
        Address::parse(&stripped).ok()
    }
}

impl Modifier for StripPlusModifier {
    fn effects(&self) -> Effects {
        Effects {
            sender: self.sender,
            recipients: true,
            headers: false,
        }
    }

    fn rewrite_sender(&self, sender: &Address) -> Result<Option<Address>, RewriteError> {
        if !self.sender {
            return Ok(None);
        }
        Ok(self.strip(sender))
    }

    fn rewrite_recipient(&self, recipient: &Address) -> Result<Option<Vec<Address>>, RewriteError> {
        Ok(self.strip(recipient).map(|a| vec![a]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::rewrite_sender::test_support::{build, has_error};
    use super::*;
    use crate::tables::TableSet;

    fn modifier(src: &str) -> Arc<dyn Modifier> {
        let (m, errors) = build(src, &TableSet::new(), StripPlusModifier::build);
        assert!(errors.is_empty(), "{errors:?}");
        m.unwrap()
    }

    fn rcpt(m: &Arc<dyn Modifier>, a: &str) -> Option<String> {
        m.rewrite_recipient(&Address::parse(a).unwrap())
            .unwrap()
            .map(|v| {
                assert_eq!(v.len(), 1);
                v[0].original().to_string()
            })
    }

    #[test]
    fn strips_at_the_first_separator_keeping_spelling() {
        let m = modifier("");
        assert_eq!(
            rcpt(&m, "<User+Tag@Example.ORG>").as_deref(),
            Some("User@Example.ORG")
        );
        assert_eq!(
            rcpt(&m, "user+a+b@example.org").as_deref(),
            Some("user@example.org")
        );
        assert_eq!(
            rcpt(&m, "user+@example.org").as_deref(),
            Some("user@example.org")
        );
        assert_eq!(rcpt(&m, "postmaster+x").as_deref(), Some("postmaster"));
        let stripped = m
            .rewrite_recipient(&Address::parse("User+x@Example.ORG").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(stripped[0].key(), "user@example.org");
    }

    #[test]
    fn leaves_addresses_without_a_usable_extension() {
        let m = modifier("");
        assert_eq!(rcpt(&m, "user@example.org"), None);
        assert_eq!(rcpt(&m, "+tag@example.org"), None);
        assert_eq!(rcpt(&m, "user-tag@example.org"), None);
        // Quoted or not, an extension with no user before it stays.
        assert_eq!(rcpt(&m, "\"+b\"@example.org"), None);
        // A separator in the domain is not an extension.
        assert_eq!(rcpt(&modifier("separator = '_'"), "user@a_b.example"), None);
        assert_eq!(m.rewrite_recipient(&Address::Null).unwrap(), None);
    }

    #[test]
    fn quoting_does_not_hide_an_extension() {
        // Postfix cuts the extension from the unquoted mailbox name, so
        // these are alice's mail and must be dispatched as hers.
        let m = modifier("");
        assert_eq!(
            rcpt(&m, "\"alice+x\"@Example.org").as_deref(),
            Some("alice@Example.org")
        );
        assert_eq!(
            rcpt(&m, "\"al\\ice\"+x@example.org").as_deref(),
            Some("alice@example.org")
        );
        // What still needs quotes keeps them.
        assert_eq!(
            rcpt(&m, "\"john smith+x\"@example.org").as_deref(),
            Some("\"john smith\"@example.org")
        );
    }

    #[test]
    fn several_separator_characters() {
        let m = modifier("separator = '+-'");
        assert_eq!(
            rcpt(&m, "user-tag@example.org").as_deref(),
            Some("user@example.org")
        );
        assert_eq!(
            rcpt(&m, "user-a+b@example.org").as_deref(),
            Some("user@example.org")
        );
        assert_eq!(
            rcpt(&m, "user+a-b@example.org").as_deref(),
            Some("user@example.org")
        );
        let m = modifier("separator = '-'");
        assert_eq!(rcpt(&m, "user+tag@example.org"), None);
    }

    #[test]
    fn sender_only_when_enabled() {
        let m = modifier("");
        assert_eq!(
            m.effects(),
            Effects {
                recipients: true,
                ..Effects::default()
            }
        );
        assert_eq!(
            m.rewrite_sender(&Address::parse("a+b@example.org").unwrap())
                .unwrap(),
            None
        );

        let m = modifier("sender = true");
        assert_eq!(
            m.effects(),
            Effects {
                sender: true,
                recipients: true,
                headers: false
            }
        );
        let s = m
            .rewrite_sender(&Address::parse("a+b@example.org").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(s.original(), "a@example.org");
        assert_eq!(m.rewrite_sender(&Address::Null).unwrap(), None);
    }

    #[test]
    fn bad_options() {
        for src in [
            "separator = ''",
            "separator = '+@'",
            "separator = '+ '",
            "separator = 3",
            "sender = 'yes'",
        ] {
            let (m, errors) = build(src, &TableSet::new(), StripPlusModifier::build);
            assert!(has_error(&errors, "`se"), "{src}: {errors:?}");
            assert!(m.is_none(), "{src}");
        }
    }
}
