//! The `rewrite_sender` modifier: replaces the envelope sender, either with
//! `pattern` (a regex on the address's canonical spelling: quoting that changes
//! nothing removed, the domain lowercase ASCII) + `replacement` (the whole new
//! address, `$1`/`${name}` for captures) or with `table` (looked up as Postfix
//! does: address, `@domain`, domain; the first value is the new address, and a
//! value `@otherdomain` keeps the local part). The null sender is never touched.

use super::{Effects, Modifier, ModifierBuildContext, RewriteError};
use crate::address::Address;
use crate::tables::{Table, TableRef};
use regex::Regex;
use serde::Deserialize;
use std::sync::Arc;

/// The keys of `rewrite_sender` and `rewrite_rcpt`: `pattern` and
/// `replacement`, or `table`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteOptions {
    pattern: Option<String>,
    replacement: Option<String>,
    table: Option<TableRef>,
}

/// The `rewrite_sender` modifier.
pub struct RewriteSenderModifier {
    rewrite: Rewrite,
}

impl RewriteSenderModifier {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let rewrite = Rewrite::from_options(ctx)?;
        Some(Arc::new(RewriteSenderModifier { rewrite }))
    }
}

impl Modifier for RewriteSenderModifier {
    fn effects(&self) -> Effects {
        Effects {
            sender: true,
            ..Effects::default()
        }
    }

    fn rewrite_sender(&self, sender: &Address) -> Result<Option<Address>, RewriteError> {
        self.rewrite.apply(sender)
    }
}

/// One address rewrite, in either of its two configured forms. Shared with
/// `rewrite_rcpt` (and the helpers below with `alias`) so all of them treat
/// patterns and table values the same way.
pub(crate) enum Rewrite {
    Pattern { pattern: Regex, replacement: String },
    Table(Arc<Table>),
}

impl Rewrite {
    /// Read `pattern` + `replacement` or `table`; exactly one form is allowed
    /// so the administrator never has to guess which one wins.
    pub(crate) fn from_options(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Rewrite> {
        let RewriteOptions {
            pattern,
            replacement,
            table,
        } = ctx.options.parse()?;
        let opts = &mut *ctx.options;
        let what = opts.what().to_string();
        match (pattern, replacement, table) {
            (Some(_), _, Some(_)) => {
                let span = opts.span_of("table").unwrap_or_else(|| opts.span());
                opts.error(
                    span,
                    format!("{what} has both `pattern` and `table`: keep only one of them"),
                );
                None
            }
            (None, Some(_), Some(_)) => {
                opts.invalid(
                    "replacement",
                    "only goes with `pattern`: remove it, the table gives the new address",
                );
                None
            }
            (None, None, Some(table)) => {
                table.resolve(opts, ctx.tables, "table").map(Rewrite::Table)
            }
            (Some(_), None, None) => {
                opts.invalid(
                    "pattern",
                    "needs a `replacement`, the new address such as \"$1@example.org\"",
                );
                None
            }
            (None, Some(_), None) => {
                opts.invalid(
                    "replacement",
                    "needs a `pattern` to match the address against",
                );
                None
            }
            (None, None, None) => {
                let span = opts.span();
                opts.error(
                    span,
                    format!("{what} needs either `pattern` and `replacement`, or `table`"),
                );
                None
            }
            (Some(pattern), Some(replacement), None) => {
                let pattern = opts.compile_regex("pattern", &pattern)?;
                if let Err(e) = check_group_refs(&pattern, &replacement) {
                    opts.invalid("replacement", e);
                    return None;
                }
                Some(Rewrite::Pattern {
                    pattern,
                    replacement,
                })
            }
        }
    }

    /// The new address, or `None` when nothing matched or the result is
    /// spelled exactly like the input (no point asking the MTA to change it).
    pub(crate) fn apply(&self, address: &Address) -> Result<Option<Address>, RewriteError> {
        // A bounce must keep its null sender (RFC 5321 §4.5.5), and there is
        // nothing meaningful to rewrite in it anyway.
        if address.is_null() {
            return Ok(None);
        }
        let new = match self {
            Rewrite::Pattern {
                pattern,
                replacement,
            } => {
                // The canonical spelling, so that quoting the local part
                // (`"joe"@example.org`) cannot get around the pattern.
                let canonical = address.canonical();
                let Some(caps) = pattern.captures(&canonical) else {
                    return Ok(None);
                };
                let mut out = String::new();
                caps.expand(replacement, &mut out);
                match parse_target(&out) {
                    Some(new) => new,
                    None => {
                        return Err(RewriteError::PatternResult {
                            pattern: pattern.as_str().to_string(),
                            address: address.original().to_string(),
                            result: out,
                        });
                    }
                }
            }
            Rewrite::Table(table) => {
                let Some((_, values)) = table.lookup_address(address) else {
                    return Ok(None);
                };
                let Some(first) = values.first() else {
                    return Err(RewriteError::EmptyEntry {
                        table: table.name().to_string(),
                        address: address.original().to_string(),
                    });
                };
                table_target(address, first, table)?
            }
        };
        if new.original() == address.original() {
            Ok(None)
        } else {
            Ok(Some(new))
        }
    }
}

/// Refuse replacements that name a group the pattern lacks: the regex crate
/// would silently expand them to nothing, and `$1_old` (read as the group
/// `1_old`) is an easy mistake to make. Follows the regex crate's own rules
/// for `$$`, `$name` and `${name}`.
fn check_group_refs(pattern: &Regex, replacement: &str) -> Result<(), UnknownGroup> {
    let mut rest = replacement;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            continue;
        }
        let name = if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                // An unclosed `${` is copied literally by the regex crate.
                continue;
            };
            rest = &r[end + 1..];
            &r[..end]
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                continue;
            }
            let name = &rest[..end];
            rest = &rest[end..];
            name
        };
        let known = match name.parse::<usize>() {
            Ok(n) => n < pattern.captures_len(),
            Err(_) => pattern.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            return Err(UnknownGroup {
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

/// A replacement's reference to a group its pattern does not have; the text
/// follows "`replacement` in MODIFIER".
#[derive(Debug, thiserror::Error)]
#[error(
    "refers to group \"{name}\", which `pattern` does not have: check the group, and write ${{1}} when a letter, digit or _ follows a group number"
)]
struct UnknownGroup {
    name: String,
}

/// Parse a rewrite result. It goes back to the MTA, so it must be a plain
/// `local@domain` with a valid domain: no brackets, white space or control
/// characters that could confuse the MTA, no leading `@` (a source route, or
/// a broken `@otherdomain`) and no `<>` (turning mail into a bounce is not a
/// rewrite).
pub(crate) fn parse_target(spelled: &str) -> Option<Address> {
    if spelled.starts_with('@') || spelled.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    Address::parse_config(spelled)
        .ok()
        .filter(|a| a.domain().is_some())
}

/// The address a table value stands for. `@otherdomain` keeps the local part
/// as spelled, as Postfix canonical and virtual maps do, so a domain key can
/// rename a whole domain.
pub(crate) fn table_target(
    from: &Address,
    value: &str,
    table: &Table,
) -> Result<Address, RewriteError> {
    let value = value.trim();
    let spelled = match (value.strip_prefix('@'), from.original_local()) {
        (Some(domain), Some(local)) if !domain.is_empty() && !domain.contains('@') => {
            format!("{local}@{domain}")
        }
        _ => value.to_string(),
    };
    parse_target(&spelled).ok_or_else(|| RewriteError::TableValue {
        table: table.name().to_string(),
        address: from.original().to_string(),
        value: value.to_string(),
    })
}

/// Building modifiers from TOML snippets in the tests of all modifier files.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::config::error::Diagnostics;
    use crate::config::options::{Options, RawOptions};
    use crate::modifiers::ModifierBuildContext;
    use crate::tables::{Table, TableSet};
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;

    /// Run `build` on the options in `src`; returns its result and the
    /// messages of every config error, unknown keys included.
    pub(crate) fn build<T>(
        src: &str,
        tables: &TableSet,
        build: impl FnOnce(&mut ModifierBuildContext<'_, '_, '_>) -> T,
    ) -> (T, Vec<String>) {
        let raw: RawOptions = toml::from_str(src).unwrap();
        let mut diag = Diagnostics::new(Path::new("t.toml"), src);
        let out = {
            let mut opts = Options::new("modifier \"t\"".into(), 0..0, raw, &mut diag);
            let out = build(&mut ModifierBuildContext {
                name: "t",
                options: &mut opts,
                tables,
                base_dir: Path::new("/nonexistent-config-dir"),
            });
            opts.finish();
            out
        };
        let errors = diag
            .into_errors()
            .0
            .into_iter()
            .map(|e| e.message)
            .collect();
        (out, errors)
    }

    pub(crate) fn tables(name: &str, entries: &[(&str, &[&str])]) -> TableSet {
        let map: HashMap<String, Vec<String>> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        let mut set = TableSet::new();
        set.insert(name.to_string(), Arc::new(Table::inline(name, map)));
        set
    }

    pub(crate) fn has_error(errors: &[String], needle: &str) -> bool {
        errors.iter().any(|e| e.contains(needle))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{build, has_error, tables};
    use super::*;
    use crate::tables::TableSet;

    fn modifier(src: &str, tables: &TableSet) -> Arc<dyn Modifier> {
        let (m, errors) = build(src, tables, RewriteSenderModifier::build);
        assert!(errors.is_empty(), "{errors:?}");
        m.unwrap()
    }

    fn rewrite(m: &Arc<dyn Modifier>, sender: &str) -> Option<String> {
        m.rewrite_sender(&Address::parse(sender).unwrap())
            .unwrap()
            .map(|a| a.original().to_string())
    }

    fn errors_of(src: &str) -> Vec<String> {
        let (m, errors) = build(src, &tables("map", &[]), RewriteSenderModifier::build);
        assert!(m.is_none());
        errors
    }

    #[test]
    fn regex_rewrite_with_numbered_and_named_captures() {
        let m = modifier(
            r#"
            pattern = '^(?P<user>[^@]+)@old\.example$'
            replacement = '${user}@new.example'
            "#,
            &TableSet::new(),
        );
        assert_eq!(
            m.effects(),
            Effects {
                sender: true,
                ..Effects::default()
            }
        );
        assert_eq!(
            rewrite(&m, "<Joe@old.example>").as_deref(),
            Some("Joe@new.example")
        );
        assert_eq!(rewrite(&m, "<joe@other.example>"), None);

        let m = modifier(
            "pattern = '^([^@]+)@([^@]+)$'\nreplacement = '$2-$1@relay.example'",
            &TableSet::new(),
        );
        assert_eq!(
            rewrite(&m, "a@b.example").as_deref(),
            Some("b.example-a@relay.example")
        );
    }

    #[test]
    fn regex_is_case_sensitive_unless_asked() {
        let m = modifier(
            "pattern = '^(.+)@OLD$'\nreplacement = '$1@new.example'",
            &TableSet::new(),
        );
        assert_eq!(rewrite(&m, "a@old"), None);
        let m = modifier(
            "pattern = '(?i)^(.+)@OLD$'\nreplacement = '$1@new.example'",
            &TableSet::new(),
        );
        assert_eq!(rewrite(&m, "a@old").as_deref(), Some("a@new.example"));
    }

    #[test]
    fn null_sender_is_never_rewritten() {
        let m = modifier(
            "pattern = '.*'\nreplacement = 'x@example.org'",
            &TableSet::new(),
        );
        assert_eq!(rewrite(&m, "<>"), None);
        let t = tables("map", &[("<>", &["x@example.org"])]);
        let m = modifier("table = 'map'", &t);
        assert_eq!(rewrite(&m, "<>"), None);
    }

    #[test]
    fn bad_results_are_errors_not_rewrites() {
        for replacement in [
            "nodomain",
            "<>",
            "",
            "a b@example.org",
            "a@exa mple.org",
            "<a@example.org>",
        ] {
            let src = format!("pattern = '^.*$'\nreplacement = '{replacement}'");
            let m = modifier(&src, &TableSet::new());
            let err = m
                .rewrite_sender(&Address::parse("joe@example.org").unwrap())
                .unwrap_err()
                .to_string();
            assert!(err.contains("not an address with a domain"), "{err}");
        }
        // Envelope data carrying a line break cannot reach a capture: such
        // an address does not parse.
        assert!(Address::parse("<a@b.example\r\nX: y>").is_err());
    }

    #[test]
    fn unchanged_result_is_no_rewrite() {
        let m = modifier("pattern = '^(.*)$'\nreplacement = '$1'", &TableSet::new());
        assert_eq!(rewrite(&m, "Joe@example.org"), None);
    }

    #[test]
    fn table_rewrite_by_address_and_domain() {
        let t = tables(
            "map",
            &[
                (
                    "joe@example.org",
                    &["joseph@example.org", "ignored@example.org"],
                ),
                ("@old.example", &["@new.example"]),
                ("legacy.example", &["catchall@example.org"]),
                ("bad@example.org", &["not-an-address"]),
                ("empty@example.org", &[]),
            ],
        );
        let m = modifier("table = 'map'", &t);
        assert_eq!(
            rewrite(&m, "<JOE@Example.org>").as_deref(),
            Some("joseph@example.org")
        );
        assert_eq!(
            rewrite(&m, "Ann.Lee@OLD.example").as_deref(),
            Some("Ann.Lee@new.example")
        );
        assert_eq!(
            rewrite(&m, "x@legacy.example").as_deref(),
            Some("catchall@example.org")
        );
        assert_eq!(rewrite(&m, "x@elsewhere.example"), None);
        let err = m
            .rewrite_sender(&Address::parse("bad@example.org").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"not-an-address\"") && err.contains("table \"map\""),
            "{err}"
        );
        assert!(
            m.rewrite_sender(&Address::parse("empty@example.org").unwrap())
                .is_err()
        );
    }

    #[test]
    fn inline_table_option() {
        let m = modifier(
            "table = { 'a@example.org' = 'b@example.org' }",
            &TableSet::new(),
        );
        assert_eq!(
            rewrite(&m, "a@example.org").as_deref(),
            Some("b@example.org")
        );
    }

    #[test]
    fn exactly_one_form_is_accepted() {
        assert!(has_error(
            &errors_of("pattern = 'a'\nreplacement = 'b@c.example'\ntable = 'map'"),
            "both `pattern` and `table`"
        ));
        assert!(has_error(
            &errors_of("pattern = 'a'"),
            "needs a `replacement`"
        ));
        assert!(has_error(
            &errors_of("replacement = 'x@y.example'"),
            "needs a `pattern`"
        ));
        assert!(has_error(
            &errors_of("table = 'map'\nreplacement = 'x@y.example'"),
            "only goes with `pattern`"
        ));
        assert!(has_error(
            &errors_of(""),
            "needs either `pattern` and `replacement`, or `table`"
        ));
        assert!(has_error(
            &errors_of("table = 'nope'"),
            "unknown table \"nope\""
        ));
        assert!(has_error(
            &errors_of("pattern = '('\nreplacement = 'x@y.example'"),
            "invalid regex"
        ));
    }

    #[test]
    fn replacement_groups_must_exist() {
        let errs = errors_of("pattern = '^(.+)@old$'\nreplacement = '$1_x@new.example'");
        assert!(has_error(&errs, "group \"1_x\""), "{errs:?}");
        assert!(has_error(
            &errors_of("pattern = '^(.+)$'\nreplacement = '$2@x.example'"),
            "group \"2\""
        ));
        assert!(has_error(
            &errors_of("pattern = '^(.+)$'\nreplacement = '${user}@x.example'"),
            "group \"user\""
        ));
        // `$$` is a literal dollar, `${1}` is fine even before letters.
        let (m, errors) = build(
            "pattern = '^(.+)@old$'\nreplacement = '${1}_x$$@new.example'",
            &TableSet::new(),
            RewriteSenderModifier::build,
        );
        assert!(errors.is_empty() && m.is_some(), "{errors:?}");
    }

    #[test]
    fn table_value_at_domain_keeps_local_spelling() {
        let t = tables("map", &[]);
        let table = t["map"].clone();
        let a = table_target(
            &Address::parse("Mr.X@old.example").unwrap(),
            "@New.example",
            &table,
        )
        .unwrap();
        assert_eq!(a.original(), "Mr.X@New.example");
        assert!(table_target(&Address::parse("x@old.example").unwrap(), "@", &table).is_err());
        assert!(table_target(&Address::parse("x@old.example").unwrap(), "@a@b", &table).is_err());
    }
}
