//! Lookup tables: inline in TOML, a file of `key value` lines (Postfix map
//! style), or an ordered regex list. Tables are named in `[tables.NAME]` and
//! referred to by name from checks, modifiers and dispatch blocks.
//!
//! A file table never touches its file on the lookup path. A watcher thread
//! per table looks at the file's stamp once a second and swaps in new
//! contents only once the file has stopped changing and reads back whole,
//! regular and valid; a lookup clones the current snapshot. So a file
//! rewritten in place is never applied half-written, and nothing a file does
//! (a FIFO, `/dev/zero`, a hung file system) can stall mail or signals.

mod file;

use crate::address::{Address, normalize_domain};
use crate::config::options::{Options, Size};
use file::{FileMap, Timing};
use regex::Regex;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use unicode_normalization::UnicodeNormalization;

/// File table settings, and why each is what it is. Only `MAX_SIZE` is an
/// option (`max_size`); the rest are fixed.
pub mod defaults {
    use std::time::Duration;

    /// The largest table file read (`max_size`). A mailbox or alias map of
    /// half a million lines is about 30 MiB, so 64 MiB fits real maps with
    /// room to spare, while something like `/dev/zero` behind a symbolic
    /// link is refused long before memory runs out (a parsed table takes a
    /// few times its file's size).
    pub(crate) const MAX_SIZE: u64 = 64 << 20;
    /// How often a file table's watcher looks at the file's stamp (size,
    /// modification and change time, inode).
    pub(crate) const POLL: Duration = Duration::from_secs(1);
    /// How long a changed file must have stayed unchanged before it is read:
    /// longer than the pauses of an editor or script that rewrites the file
    /// in place, and than the one-second time stamps of some file systems.
    /// A file last modified at least this long ago counts as settled at once.
    pub(crate) const SETTLE: Duration = Duration::from_secs(2);
    /// The same for a file that now has no entries while the table has some:
    /// a shell's `> file` empties the file at once, and the program writing
    /// into it may take several seconds before its first buffered write.
    pub(crate) const SETTLE_EMPTY: Duration = Duration::from_secs(10);
    /// A watcher read that takes longer than this is logged (the old
    /// contents are served meanwhile).
    pub(crate) const SLOW_READ: Duration = Duration::from_secs(5);
    /// How long loading a configuration waits for a table file that keeps
    /// changing before it gives up with an error.
    pub(crate) const LOAD_WAIT: Duration = Duration::from_secs(10);
    /// A file that goes on changing this long without ever settling is
    /// logged once, because its new contents are not being applied.
    pub(crate) const KEEPS_CHANGING: Duration = Duration::from_secs(60);
}

/// The configuration's tables by name.
pub(crate) type TableSet = BTreeMap<String, Arc<Table>>;

/// A lookup table: inline, a map file kept current, or regex rules.
#[derive(Debug)]
pub struct Table {
    name: String,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Map(HashMap<String, Vec<String>>),
    File(FileMap),
    Regex(Vec<(Regex, String)>),
}

type Entries = HashMap<String, Vec<String>>;

/// Which part of an address matched in `Table::lookup_address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum AddressMatch {
    Address,
    Domain,
}

/// Keys compare case-insensitively and in NFC; an address key
/// (`user@domain`) gets the canonical form of `Address::key` (quoting that
/// changes nothing removed, the domain IDNA-normalised), so
/// `"Joe"@bücher.example.` in a table is the key `joe@xn--bcher-kva.example`.
/// The domain of `*@domain` and `@domain`, and a key that is a domain, get
/// the same domain normalisation. Normalising a key again changes nothing.
pub fn normalize_key(key: &str) -> String {
    let trimmed = key.trim();
    // Only a key that reads as `local@domain`: `@route:user` reads as a
    // source route and a bare user, whose key a plain key would not match.
    if let Some((local, _)) = trimmed.rsplit_once('@')
        && !local.is_empty()
        && local != "*"
        && let Ok(address) = Address::parse(trimmed)
        && address.domain().is_some()
    {
        return address.key();
    }
    // Lowercase, then NFC: lowercasing can undo NFC (see `Address::key`).
    let key = trimmed.to_lowercase().nfc().collect::<String>();
    match key.rsplit_once('@') {
        Some((local, domain)) if !domain.is_empty() => match normalize_domain(domain) {
            Ok(d) => format!("{local}@{d}"),
            Err(_) => key,
        },
        Some(_) => key,
        // A plain key (a user name, a domain): only a key that looks like a
        // domain changes; "alice" stays "alice".
        // An address literal ([192.0.2.1]) too: lookups use its canonical form.
        None if key.contains('.') || key.starts_with('[') || !key.is_ascii() => {
            normalize_domain(&key).unwrap_or(key)
        }
        None => key,
    }
}

impl Table {
    /// A table of the given entries; keys are normalised here.
    pub(crate) fn inline(name: &str, entries: HashMap<String, Vec<String>>) -> Table {
        let entries = entries
            .into_iter()
            .map(|(k, v)| (normalize_key(&k), v))
            .collect();
        Table {
            name: name.to_string(),
            source: Source::Map(entries),
        }
    }

    /// The table's name, for messages.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The values stored for `key`, or `None` when the key is absent. For a
    /// regex table, the replacement of the first pattern that matches.
    pub(crate) fn lookup(&self, key: &str) -> Option<Vec<String>> {
        match &self.source {
            Source::Map(map) => map.get(&normalize_key(key)).cloned(),
            Source::File(file) => file.current().get(&normalize_key(key)).cloned(),
            Source::Regex(rules) => rules.iter().find_map(|(re, replacement)| {
                let caps = re.captures(key.trim())?;
                let mut out = String::new();
                caps.expand(replacement, &mut out);
                Some(split_values(&out))
            }),
        }
    }

    /// Whether the table has a value for `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.lookup(key).is_some()
    }

    /// Look an address up as Postfix does: the full address, then `@domain`,
    /// then the bare domain.
    pub(crate) fn lookup_address(&self, address: &Address) -> Option<(AddressMatch, Vec<String>)> {
        if let Some(v) = self.lookup(&address.key()) {
            return Some((AddressMatch::Address, v));
        }
        let domain = address.domain()?;
        self.lookup(&format!("@{domain}"))
            .or_else(|| self.lookup(domain))
            .map(|v| (AddressMatch::Domain, v))
    }

    /// Build a table from a `[tables.NAME]` block. Relative paths resolve
    /// against `base_dir`, the directory of the config file.
    pub(crate) fn build(
        name: &str,
        options: &mut Options<'_, '_>,
        base_dir: &Path,
    ) -> Option<Table> {
        let TableType { kind } = options.take()?;
        let source = match kind {
            TableKind::Inline => {
                let InlineOptions { entries } = options.parse()?;
                return Some(Table::inline(name, entries.into_values()));
            }
            TableKind::File => {
                let FileOptions { path, max_size } = options.parse()?;
                let max_size = match max_size {
                    None => defaults::MAX_SIZE,
                    Some(Size(0)) => {
                        options.invalid("max_size", "must be more than 0");
                        return None;
                    }
                    Some(Size(n)) => n,
                };
                let full = base_dir.join(&path);
                match FileMap::load(name, &full, max_size, Timing::DEFAULT) {
                    Ok(map) => Source::File(map),
                    Err(e) => {
                        let message = if Path::new(&path).is_absolute() {
                            format!("cannot read table file \"{path}\": {e}")
                        } else {
                            format!(
                                "cannot read table file \"{path}\" (relative to the configuration's directory): {e}"
                            )
                        };
                        let span = options.span_of("path").unwrap_or_else(|| options.span());
                        match e.hint() {
                            Some(hint) => options.diag().error_hint(span, message, hint),
                            None => options.error(span, message),
                        }
                        return None;
                    }
                }
            }
            TableKind::Regex => {
                let RegexOptions { entries } = options.parse()?;
                let mut rules = Vec::new();
                for RegexRule(pattern, replacement) in entries {
                    match Regex::new(&format!("(?i){pattern}")) {
                        Ok(re) => rules.push((re, replacement)),
                        Err(e) => {
                            let span = options.span_of("entries").unwrap_or_else(|| options.span());
                            options.error(
                                span,
                                format!(
                                    "invalid regex \"{pattern}\" in table \"{name}\": {}",
                                    crate::config::error::regex_error_text(&e)
                                ),
                            )
                        }
                    }
                }
                Source::Regex(rules)
            }
        };
        Some(Table {
            name: name.to_string(),
            source,
        })
    }
}

/// The key every table block has: which kind of table it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableType {
    #[serde(rename = "type")]
    kind: TableKind,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum TableKind {
    Inline,
    File,
    Regex,
}

/// `type = "inline"`: the entries in the configuration itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineOptions {
    entries: InlineEntries,
}

/// `type = "file"`: a Postfix-style map file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    path: String,
    max_size: Option<Size>,
}

/// `type = "regex"`: `[pattern, replacement]` pairs, tried in order.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexOptions {
    entries: Vec<RegexRule>,
}

/// One `["pattern", "replacement"]` pair of a regex table.
struct RegexRule(String, String);

impl<'de> Deserialize<'de> for RegexRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RegexRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [\"pattern\", \"replacement\"] pair")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RegexRule, A::Error> {
                let pattern: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let replacement: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(RegexRule(pattern, replacement))
            }
        }
        d.deserialize_any(V)
    }
}

/// Values on a table line are separated by commas and/or white space.
fn split_values(s: &str) -> Vec<String> {
    // Outside quoted strings only: `"john smith"@example.org` is one value.
    let mut values = Vec::new();
    let mut start = 0;
    for (i, c) in crate::address::outside_quotes(s) {
        if c == ',' || c.is_whitespace() {
            values.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    values.push(&s[start..]);
    values
        .into_iter()
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// Why a map file cannot be read as a table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapFileError {
    /// A line that starts with white space, before any key: there is
    /// nothing for it to continue (1-based line number).
    #[error("line {line}: continuation line without a key")]
    OrphanContinuation {
        /// The 1-based number of the line.
        line: usize,
    },
}

/// Parse a Postfix-style map file: `key value, value`; `#` comments and blank
/// lines ignored; a line starting with white space continues the previous one.
pub fn parse_map_file(text: &str) -> Result<HashMap<String, Vec<String>>, MapFileError> {
    let mut logical: Vec<(usize, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            match logical.last_mut() {
                Some((_, prev)) => {
                    prev.push(' ');
                    prev.push_str(trimmed);
                    continue;
                }
                None => return Err(MapFileError::OrphanContinuation { line: n + 1 }),
            }
        }
        logical.push((n + 1, trimmed.to_string()));
    }
    let mut map = HashMap::new();
    for (_, line) in logical {
        let (key, rest) = split_key(&line);
        map.insert(normalize_key(key), split_values(rest));
    }
    Ok(map)
}

/// A map line's key and the rest: the key ends at the first white space
/// outside a quoted string, so `"John Smith"@example.org` is one key.
fn split_key(line: &str) -> (&str, &str) {
    match crate::address::outside_quotes(line).find(|&(_, c)| c.is_whitespace()) {
        Some((i, _)) => (&line[..i], &line[i..]),
        None => (line, ""),
    }
}

/// A table option as written: the name of a `[tables.NAME]` block
/// (`table = "aliases"`) or an inline table written in place
/// (`table = { alice = ["alice@example.org"] }`). A kind's option struct
/// holds it; [`TableRef::resolve`] turns it into the table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TableRef {
    Named(String),
    Inline(HashMap<String, Vec<String>>),
}

impl<'de> Deserialize<'de> for TableRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TableRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the name of a table or an inline table of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TableRef, E> {
                Ok(TableRef::Named(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TableRef, A::Error> {
                read_inline(map).map(TableRef::Inline)
            }
        }
        d.deserialize_any(V)
    }
}

/// The entries of an inline table, `{ "alice" = ["alice@example.org"] }`.
struct InlineEntries(HashMap<String, Vec<String>>);

impl InlineEntries {
    fn into_values(self) -> HashMap<String, Vec<String>> {
        self.0
    }
}

impl<'de> Deserialize<'de> for InlineEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InlineEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table of strings or lists of strings, like { \"alice\" = [\"alice@example.org\"] }",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<InlineEntries, A::Error> {
                read_inline(map).map(InlineEntries)
            }
        }
        d.deserialize_any(V)
    }
}

/// Each key of an inline table with its values: a string, a list of
/// strings, or `true` for a key without values.
fn read_inline<'de, A: MapAccess<'de>>(
    mut map: A,
) -> Result<HashMap<String, Vec<String>>, A::Error> {
    struct Values(Vec<String>);
    impl<'de> Deserialize<'de> for Values {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Values;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string, a list of strings or true")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Values, E> {
                    Ok(Values(vec![v.to_string()]))
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<Values, E> {
                    if v {
                        Ok(Values(Vec::new()))
                    } else {
                        Err(E::invalid_value(de::Unexpected::Bool(v), &self))
                    }
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                    let mut out = Vec::new();
                    while let Some(s) = seq.next_element::<String>()? {
                        out.push(s);
                    }
                    Ok(Values(out))
                }
            }
            d.deserialize_any(V)
        }
    }
    let mut entries = HashMap::new();
    while let Some((key, Values(values))) = map.next_entry::<String, Values>()? {
        entries.insert(key, values);
    }
    Ok(entries)
}

impl TableRef {
    /// The table this names, or `None` after reporting an unknown name at
    /// `key`'s value.
    pub(crate) fn resolve(
        self,
        options: &mut Options<'_, '_>,
        tables: &TableSet,
        key: &str,
    ) -> Option<Arc<Table>> {
        match self {
            TableRef::Named(name) => match tables.get(&name) {
                Some(t) => Some(t.clone()),
                None => {
                    let hint = crate::config::error::did_you_mean(
                        &name,
                        tables.keys().map(String::as_str),
                    )
                    .map(|s| format!("did you mean \"{s}\"?"))
                    .unwrap_or_else(|| "define it in a [tables.NAME] block".to_string());
                    let span = options.span_of(key).unwrap_or_else(|| options.span());
                    options
                        .diag()
                        .error_hint(span, format!("unknown table \"{name}\""), hint);
                    None
                }
            },
            TableRef::Inline(map) => Some(Arc::new(Table::inline(
                &format!("{} {key}", options.what()),
                map,
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
