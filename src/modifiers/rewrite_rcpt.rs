//! The `rewrite_rcpt` modifier: replaces each envelope recipient by one new
//! address, with the same two forms as `rewrite_sender`: `pattern` (regex on
//! the address as spelled) + `replacement` (the new address, `$1`/`${name}`
//! for captures), or `table` (address, `@domain`, domain; first value wins,
//! `@otherdomain` keeps the local part). Use `alias` to fan one out to many.

use super::rewrite_sender::Rewrite;
use super::{Effects, Modifier, ModifierBuildContext, RewriteError};
use crate::address::Address;
use std::sync::Arc;

/// The `rewrite_rcpt` modifier.
pub struct RewriteRcptModifier {
    rewrite: Rewrite,
}

impl RewriteRcptModifier {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let rewrite = Rewrite::from_options(ctx)?;
        Some(Arc::new(RewriteRcptModifier { rewrite }))
    }
}

impl Modifier for RewriteRcptModifier {
    fn effects(&self) -> Effects {
        Effects {
            recipients: true,
            ..Effects::default()
        }
    }

    fn rewrite_recipient(&self, recipient: &Address) -> Result<Option<Vec<Address>>, RewriteError> {
        Ok(self.rewrite.apply(recipient)?.map(|new| vec![new]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::rewrite_sender::test_support::{build, has_error, tables};
    use super::*;
    use crate::tables::TableSet;

    fn modifier(src: &str, tables: &TableSet) -> Arc<dyn Modifier> {
        let (m, errors) = build(src, tables, RewriteRcptModifier::build);
        assert!(errors.is_empty(), "{errors:?}");
        m.unwrap()
    }

    fn rewrite(m: &Arc<dyn Modifier>, rcpt: &str) -> Option<Vec<String>> {
        m.rewrite_recipient(&Address::parse(rcpt).unwrap())
            .unwrap()
            .map(|v| v.iter().map(|a| a.original().to_string()).collect())
    }

    #[test]
    fn regex_rewrite_with_captures() {
        let m = modifier(
            r#"
            pattern = '^(?P<user>[^@+]+)\+(?P<tag>[^@]+)@lists\.example$'
            replacement = '${tag}-${user}@archive.example'
            "#,
            &TableSet::new(),
        );
        assert_eq!(
            m.effects(),
            Effects {
                recipients: true,
                ..Effects::default()
            }
        );
        assert_eq!(
            rewrite(&m, "<Bob+Rust@lists.example>"),
            Some(vec!["Rust-Bob@archive.example".to_string()])
        );
        assert_eq!(rewrite(&m, "<bob@lists.example>"), None);
        // The sender is not this modifier's business.
        assert_eq!(
            m.rewrite_sender(&Address::parse("bob+x@lists.example").unwrap())
                .unwrap(),
            None
        );
    }

    #[test]
    fn table_rewrite_gives_one_address() {
        let t = tables(
            "map",
            &[
                (
                    "info@example.org",
                    &["office@example.org", "second@example.org"],
                ),
                ("@old.example", &["@new.example"]),
                ("broken@example.org", &["broken"]),
            ],
        );
        let m = modifier("table = 'map'", &t);
        assert_eq!(
            rewrite(&m, "Info@Example.org"),
            Some(vec!["office@example.org".to_string()])
        );
        assert_eq!(
            rewrite(&m, "Sam@old.example"),
            Some(vec!["Sam@new.example".to_string()])
        );
        assert_eq!(rewrite(&m, "sam@example.org"), None);
        let err = m
            .rewrite_recipient(&Address::parse("broken@example.org").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"broken\""), "{err}");
    }

    #[test]
    fn invalid_result_is_an_error() {
        let m = modifier(
            "pattern = '^(.+)@(.+)$'\nreplacement = '$1'",
            &TableSet::new(),
        );
        let err = m
            .rewrite_recipient(&Address::parse("a@example.org").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an address with a domain"), "{err}");
    }

    #[test]
    fn config_errors() {
        let (m, errors) = build(
            "pattern = 'x'",
            &TableSet::new(),
            RewriteRcptModifier::build,
        );
        assert!(
            m.is_none() && has_error(&errors, "needs a `replacement`"),
            "{errors:?}"
        );
        let (m, errors) = build("", &TableSet::new(), RewriteRcptModifier::build);
        assert!(
            m.is_none() && has_error(&errors, "needs either"),
            "{errors:?}"
        );
    }
}
