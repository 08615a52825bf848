//! The `alias` modifier: expands a recipient through `table` (required; looked
//! up as Postfix does: address, `@domain`, domain) into one or more addresses,
//! recursively, like Postfix virtual aliases. A value `@otherdomain` keeps the
//! local part. An address already on the expansion path is delivered as is
//! (so `a -> a` keeps `a`); results are deduplicated in first-seen order.

use super::rewrite_sender::table_target;
use super::{AliasLimit, Effects, Modifier, ModifierBuildContext, RewriteError};
use crate::address::Address;
use crate::tables::{Table, TableRef};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;

/// `[modifiers.NAME]` with `kind = "alias"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasOptions {
    table: TableRef,
}

/// How many alias levels one recipient may go through, as Postfix's
/// `virtual_alias_recursion_limit`.
const MAX_DEPTH: usize = 10;
/// How many distinct addresses one recipient may expand to, as Postfix's
/// `virtual_alias_expansion_limit`.
const MAX_ADDRESSES: usize = 1000;
/// Deduplication keeps the result small, but a table whose lists overlap at
/// every level could still make the walk itself exponential; this bounds the
/// work per recipient.
const MAX_LOOKUPS: usize = 10 * MAX_ADDRESSES;

/// The `alias` modifier.
pub struct AliasModifier {
    table: Arc<Table>,
}

impl AliasModifier {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let AliasOptions { table } = ctx
            .options
            .required(
                "table",
                "\"aliases\" (a [tables.NAME] block) or an inline table { \"sales@example.org\" = [\"alice@example.org\"] }",
            )
            .parse()?;
        let table = table.resolve(ctx.options, ctx.tables, "table")?;
        Some(Arc::new(AliasModifier { table }))
    }

    /// The full expansion of `recipient`, or `None` when the table does not
    /// know it.
    fn expand(&self, recipient: &Address) -> Result<Option<Vec<Address>>, RewriteError> {
        if recipient.is_null() {
            return Ok(None);
        }
        let Some((_, values)) = self.table.lookup_address(recipient) else {
            return Ok(None);
        };
        let mut walk = Walk {
            table: &self.table,
            root: recipient,
            path: vec![recipient.key()],
            seen: HashSet::new(),
            out: Vec::new(),
            lookups: 1,
        };
        walk.targets(recipient, &values, 1)?;
        Ok(Some(walk.out))
    }
}

impl Modifier for AliasModifier {
    fn effects(&self) -> Effects {
        Effects {
            recipients: true,
            ..Effects::default()
        }
    }

    fn rewrite_recipient(&self, recipient: &Address) -> Result<Option<Vec<Address>>, RewriteError> {
        let Some(expanded) = self.expand(recipient)? else {
            return Ok(None);
        };
        // An alias that resolves to the very recipient, spelled the same, is
        // no change; saying so spares the MTA a delete and re-add.
        if let [only] = expanded.as_slice()
            && only.original() == recipient.original()
        {
            return Ok(None);
        }
        Ok(Some(expanded))
    }
}

/// The state of one recipient's expansion.
struct Walk<'w> {
    table: &'w Table,
    root: &'w Address,
    /// Keys of the addresses being expanded, outermost first: the loop guard.
    path: Vec<String>,
    /// Keys already in `out`, for deduplication.
    seen: HashSet<String>,
    out: Vec<Address>,
    lookups: usize,
}

impl Walk<'_> {
    /// Resolve the table values of `from`, found at alias level `depth`.
    fn targets(
        &mut self,
        from: &Address,
        values: &[String],
        depth: usize,
    ) -> Result<(), RewriteError> {
        if values.is_empty() {
            // Dropping the recipient silently would lose mail over a typo.
            return Err(RewriteError::NoAliasTargets {
                table: self.table.name().to_string(),
                address: from.original().to_string(),
            });
        }
        for value in values {
            let target = table_target(from, value, self.table)?;
            let key = target.key();
            if self.path.contains(&key) {
                self.emit(target)?;
                continue;
            }
            self.lookups += 1;
            if self.lookups > MAX_LOOKUPS {
                return Err(self.limit(AliasLimit::Lookups(MAX_LOOKUPS)));
            }
            match self.table.lookup_address(&target) {
                None => self.emit(target)?,
                Some((_, next)) => {
                    if depth >= MAX_DEPTH {
                        return Err(self.limit(AliasLimit::Depth(MAX_DEPTH)));
                    }
                    self.path.push(key);
                    self.targets(&target, &next, depth + 1)?;
                    self.path.pop();
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, address: Address) -> Result<(), RewriteError> {
        if self.seen.insert(address.key()) {
            if self.out.len() >= MAX_ADDRESSES {
                return Err(self.limit(AliasLimit::Addresses(MAX_ADDRESSES)));
            }
            self.out.push(address);
        }
        Ok(())
    }

    /// A limit error; a partial list would deliver to some members and not
    /// others without anyone noticing, so the whole expansion fails.
    fn limit(&self, limit: AliasLimit) -> RewriteError {
        RewriteError::AliasLimit {
            address: self.root.original().to_string(),
            table: self.table.name().to_string(),
            limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rewrite_sender::test_support::{build, has_error, tables};
    use super::*;
    use crate::tables::TableSet;

    fn modifier(t: &TableSet) -> Arc<dyn Modifier> {
        let (m, errors) = build("table = 'aliases'", t, AliasModifier::build);
        assert!(errors.is_empty(), "{errors:?}");
        m.unwrap()
    }

    /// The recipients after the modifier ran, as spelled.
    fn expand(m: &Arc<dyn Modifier>, rcpt: &str) -> Vec<String> {
        let a = Address::parse(rcpt).unwrap();
        match m.rewrite_recipient(&a).unwrap() {
            Some(list) => list.iter().map(|a| a.original().to_string()).collect(),
            None => vec![a.original().to_string()],
        }
    }

    #[test]
    fn no_match_is_none() {
        let m = modifier(&tables(
            "aliases",
            &[("sales@example.org", &["a@example.org"])],
        ));
        assert_eq!(
            m.effects(),
            Effects {
                recipients: true,
                ..Effects::default()
            }
        );
        assert_eq!(
            m.rewrite_recipient(&Address::parse("x@example.org").unwrap())
                .unwrap(),
            None
        );
        assert_eq!(m.rewrite_recipient(&Address::Null).unwrap(), None);
    }

    #[test]
    fn expands_recursively_in_order() {
        let m = modifier(&tables(
            "aliases",
            &[
                (
                    "sales@example.org",
                    &["alice@example.org", "team@example.org", "zed@example.net"],
                ),
                (
                    "team@example.org",
                    &["bob@example.org", "carol@example.org"],
                ),
                ("carol@example.org", &["Carol.Home@example.net"]),
            ],
        ));
        assert_eq!(
            expand(&m, "<Sales@Example.org>"),
            [
                "alice@example.org",
                "bob@example.org",
                "Carol.Home@example.net",
                "zed@example.net"
            ]
        );
    }

    #[test]
    fn domain_keys_and_at_domain_values() {
        let m = modifier(&tables(
            "aliases",
            &[
                ("@old.example", &["@new.example"]),
                ("boss@new.example", &["ceo@example.org"]),
                ("keep@catch.example", &["keep@catch.example"]),
                ("catch.example", &["postmaster@example.org"]),
            ],
        ));
        assert_eq!(expand(&m, "Joe@old.example"), ["Joe@new.example"]);
        assert_eq!(expand(&m, "boss@old.example"), ["ceo@example.org"]);
        assert_eq!(
            expand(&m, "anyone@catch.example"),
            ["postmaster@example.org"]
        );
        // The usual exemption from a catch-all: an entry that lists itself.
        assert_eq!(
            m.rewrite_recipient(&Address::parse("keep@catch.example").unwrap())
                .unwrap(),
            None
        );
    }

    #[test]
    fn self_reference_keeps_the_address() {
        let m = modifier(&tables(
            "aliases",
            &[
                ("a@example.org", &["a@example.org"]),
                ("b@example.org", &["b@example.org", "copy@example.org"]),
            ],
        ));
        assert_eq!(expand(&m, "a@example.org"), ["a@example.org"]);
        assert_eq!(
            m.rewrite_recipient(&Address::parse("a@example.org").unwrap())
                .unwrap(),
            None
        );
        assert_eq!(
            expand(&m, "b@example.org"),
            ["b@example.org", "copy@example.org"]
        );
        // Spelled differently in the table: that spelling is the result.
        assert_eq!(expand(&m, "A@Example.org"), ["a@example.org"]);
    }

    #[test]
    fn loops_stop_at_the_repeated_address() {
        let m = modifier(&tables(
            "aliases",
            &[
                ("a@example.org", &["b@example.org"]),
                ("b@example.org", &["a@example.org"]),
                ("x@example.org", &["y@example.org"]),
                ("y@example.org", &["x@example.org", "z@example.org"]),
            ],
        ));
        assert_eq!(expand(&m, "a@example.org"), ["a@example.org"]);
        assert_eq!(expand(&m, "b@example.org"), ["b@example.org"]);
        assert_eq!(
            expand(&m, "x@example.org"),
            ["x@example.org", "z@example.org"]
        );
        assert_eq!(
            expand(&m, "y@example.org"),
            ["y@example.org", "z@example.org"]
        );
    }

    #[test]
    fn duplicates_removed_keeping_first_seen() {
        let m = modifier(&tables(
            "aliases",
            &[
                (
                    "all@example.org",
                    &["g1@example.org", "Bob@example.org", "g2@example.org"],
                ),
                ("g1@example.org", &["carol@example.org", "bob@example.org"]),
                (
                    "g2@example.org",
                    &["dave@example.org", "CAROL@example.org", "dave@example.org"],
                ),
            ],
        ));
        assert_eq!(
            expand(&m, "all@example.org"),
            ["carol@example.org", "bob@example.org", "dave@example.org"]
        );
    }

    #[test]
    fn depth_limit() {
        // A chain of exactly MAX_DEPTH aliases works; one more fails.
        let names: Vec<String> = (0..=MAX_DEPTH + 1)
            .map(|i| format!("a{i}@example.org"))
            .collect();
        let entries: Vec<(&str, Vec<&str>)> = (0..MAX_DEPTH)
            .map(|i| (names[i].as_str(), vec![names[i + 1].as_str()]))
            .collect();
        let pairs: Vec<(&str, &[&str])> = entries.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let m = modifier(&tables("aliases", &pairs));
        assert_eq!(expand(&m, "a0@example.org"), [names[MAX_DEPTH].as_str()]);

        let entries: Vec<(&str, Vec<&str>)> = (0..=MAX_DEPTH)
            .map(|i| (names[i].as_str(), vec![names[i + 1].as_str()]))
            .collect();
        let pairs: Vec<(&str, &[&str])> = entries.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let m = modifier(&tables("aliases", &pairs));
        let err = m
            .rewrite_recipient(&Address::parse("a0@example.org").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("alias expansion of \"a0@example.org\" exceeds 10 levels"),
            "{err}"
        );
    }

    #[test]
    fn address_limit() {
        let many: Vec<String> = (0..=MAX_ADDRESSES)
            .map(|i| format!("u{i}@example.org"))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let m = modifier(&tables("aliases", &[("big@example.org", &refs)]));
        let err = m
            .rewrite_recipient(&Address::parse("big@example.org").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("alias expansion of \"big@example.org\" exceeds 1000 addresses"),
            "{err}"
        );

        // Exactly the limit is fine, and duplicates do not count against it.
        let mut refs: Vec<&str> = many[..MAX_ADDRESSES].iter().map(String::as_str).collect();
        refs.push(many[0].as_str());
        let m = modifier(&tables("aliases", &[("big@example.org", &refs)]));
        assert_eq!(expand(&m, "big@example.org").len(), MAX_ADDRESSES);
    }

    #[test]
    fn overlapping_lists_cannot_explode() {
        // Every level lists the same 10 groups: few distinct results, but
        // 10^10 paths; the lookup budget stops it quickly.
        let groups: Vec<Vec<String>> = (0..9)
            .map(|l| (0..10).map(|g| format!("l{l}g{g}@example.org")).collect())
            .collect();
        let mut entries: Vec<(String, Vec<String>)> =
            vec![("top@example.org".to_string(), groups[0].clone())];
        for l in 0..8 {
            for g in &groups[l] {
                entries.push((g.clone(), groups[l + 1].clone()));
            }
        }
        let refs: Vec<(&str, Vec<&str>)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
            .collect();
        let pairs: Vec<(&str, &[&str])> = refs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let m = modifier(&tables("aliases", &pairs));
        let err = m
            .rewrite_recipient(&Address::parse("top@example.org").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceeds 10000 table lookups"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        let m = modifier(&tables(
            "aliases",
            &[
                ("a@example.org", &["ok@example.org", "nodomain"]),
                ("b@example.org", &["c@example.org"]),
                ("c@example.org", &["bad@exa mple.org"]),
                ("d@example.org", &[]),
            ],
        ));
        let err = m
            .rewrite_recipient(&Address::parse("a@example.org").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nodomain\"") && err.contains("table \"aliases\""),
            "{err}"
        );
        let err = m
            .rewrite_recipient(&Address::parse("b@example.org").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"bad@exa mple.org\""), "{err}");
        let err = m
            .rewrite_recipient(&Address::parse("d@example.org").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no addresses"), "{err}");
    }

    #[test]
    fn table_is_required() {
        let (m, errors) = build("", &TableSet::new(), AliasModifier::build);
        assert!(
            m.is_none() && has_error(&errors, "needs `table`"),
            "{errors:?}"
        );
        let (m, errors) = build("table = 'nope'", &TableSet::new(), AliasModifier::build);
        assert!(
            m.is_none() && has_error(&errors, "unknown table \"nope\""),
            "{errors:?}"
        );
        let (m, errors) = build("table = 3", &TableSet::new(), AliasModifier::build);
        assert!(
            m.is_none()
                && has_error(
                    &errors,
                    "must be the name of a table or an inline table of strings, found 3"
                ),
            "{errors:?}"
        );
    }
}
