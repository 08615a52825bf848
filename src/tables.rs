//! Lookup tables: inline in TOML, a file of `key value` lines (Postfix map
//! style), or an ordered regex list. Tables are named in `[tables.NAME]` and
//! referred to by name from checks, modifiers and dispatch blocks. File tables
//! notice when their file changes and reload it; a file that fails to reload
//! keeps the previous contents and logs why.

use crate::address::{Address, normalize_domain};
use crate::config::options::Options;
use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use toml::Value;
use unicode_normalization::UnicodeNormalization;

/// How often a file table looks at its file's modification time at most.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub type TableSet = BTreeMap<String, Arc<Table>>;

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

#[derive(Debug)]
struct FileMap {
    path: PathBuf,
    entries: RwLock<Arc<HashMap<String, Vec<String>>>>,
    stamp: Mutex<FileStamp>,
}

#[derive(Debug, Clone, Copy)]
struct FileStamp {
    checked: Instant,
    modified: Option<SystemTime>,
    len: u64,
}

/// Which part of an address matched in `Table::lookup_address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressMatch {
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
        None if key.contains('.') || !key.is_ascii() => normalize_domain(&key).unwrap_or(key),
        None => key,
    }
}

impl Table {
    pub fn inline(name: &str, entries: HashMap<String, Vec<String>>) -> Table {
        let entries = entries
            .into_iter()
            .map(|(k, v)| (normalize_key(&k), v))
            .collect();
        Table {
            name: name.to_string(),
            source: Source::Map(entries),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The values stored for `key`, or `None` when the key is absent. For a
    /// regex table, the replacement of the first pattern that matches.
    pub fn lookup(&self, key: &str) -> Option<Vec<String>> {
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

    pub fn contains(&self, key: &str) -> bool {
        self.lookup(key).is_some()
    }

    /// Look an address up as Postfix does: the full address, then `@domain`,
    /// then the bare domain.
    pub fn lookup_address(&self, address: &Address) -> Option<(AddressMatch, Vec<String>)> {
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
    pub fn build(name: &str, options: &mut Options<'_, '_>, base_dir: &Path) -> Option<Table> {
        let kind = options.required_string("type")?;
        let table = match kind.get_ref().as_str() {
            "inline" => {
                let entries = options.value("entries");
                let Some(entries) = entries else {
                    let span = options.span();
                    options.error(span, format!("table \"{name}\" needs `entries`"));
                    return None;
                };
                let map = inline_entries(entries.get_ref()).or_else(|| {
                    options.error(
                        entries.span(),
                        "`entries` of an inline table must be a table of strings or lists of strings, like { \"alice\" = [\"alice@example.org\"] }",
                    );
                    None
                })?;
                Table::inline(name, map)
            }
            "file" => {
                let path = options.required_string("path")?;
                let full = base_dir.join(path.get_ref());
                match FileMap::load(&full) {
                    Ok(map) => Table {
                        name: name.to_string(),
                        source: Source::File(map),
                    },
                    Err(e) => {
                        options.error(
                            path.span(),
                            if Path::new(path.get_ref()).is_absolute() {
                                format!("cannot read table file \"{}\": {e}", path.get_ref())
                            } else {
                                format!(
                                    "cannot read table file \"{}\" (relative to the configuration's directory): {e}",
                                    path.get_ref()
                                )
                            },
                        );
                        return None;
                    }
                }
            }
            "regex" => {
                let entries = options.value("entries");
                let Some(entries) = entries else {
                    let span = options.span();
                    options.error(span, format!("table \"{name}\" needs `entries`"));
                    return None;
                };
                let Some(pairs) = regex_pairs(entries.get_ref()) else {
                    options.error(
                        entries.span(),
                        "`entries` of a regex table must be a list of [\"pattern\", \"replacement\"] pairs",
                    );
                    return None;
                };
                let mut rules = Vec::new();
                for (pattern, replacement) in pairs {
                    match Regex::new(&format!("(?i){pattern}")) {
                        Ok(re) => rules.push((re, replacement)),
                        Err(e) => options.error(
                            entries.span(),
                            format!(
                                "invalid regex \"{pattern}\" in table \"{name}\": {}",
                                crate::config::error::regex_error_text(&e)
                            ),
                        ),
                    }
                }
                Table {
                    name: name.to_string(),
                    source: Source::Regex(rules),
                }
            }
            other => {
                options.error(
                    kind.span(),
                    format!(
                        "unknown table type \"{other}\": use \"inline\", \"file\" or \"regex\""
                    ),
                );
                return None;
            }
        };
        Some(table)
    }
}

fn inline_entries(value: &Value) -> Option<HashMap<String, Vec<String>>> {
    let table = value.as_table()?;
    table
        .iter()
        .map(|(k, v)| {
            let values = match v {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()?,
                Value::Boolean(true) => Vec::new(),
                _ => return None,
            };
            Some((k.clone(), values))
        })
        .collect()
}

fn regex_pairs(value: &Value) -> Option<Vec<(String, String)>> {
    value
        .as_array()?
        .iter()
        .map(|pair| {
            let pair = pair.as_array()?;
            match pair.as_slice() {
                [Value::String(p), Value::String(r)] => Some((p.clone(), r.clone())),
                _ => None,
            }
        })
        .collect()
}

/// Values on a table line are separated by commas and/or white space.
fn split_values(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parse a Postfix-style map file: `key value, value`; `#` comments and blank
/// lines ignored; a line starting with white space continues the previous one.
pub fn parse_map_file(text: &str) -> Result<HashMap<String, Vec<String>>, String> {
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
                None => return Err(format!("line {}: continuation line without a key", n + 1)),
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
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&line[..i], &line[i..]),
            _ => {}
        }
    }
    (line, "")
}

impl FileMap {
    fn load(path: &Path) -> Result<FileMap, String> {
        let (entries, stamp) = Self::read(path)?;
        Ok(FileMap {
            path: path.to_path_buf(),
            entries: RwLock::new(Arc::new(entries)),
            stamp: Mutex::new(stamp),
        })
    }

    fn read(path: &Path) -> Result<(HashMap<String, Vec<String>>, FileStamp), String> {
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let entries = parse_map_file(&text)?;
        let stamp = FileStamp {
            checked: Instant::now(),
            modified: meta.modified().ok(),
            len: meta.len(),
        };
        Ok((entries, stamp))
    }

    /// The current contents, reloading first when the file changed.
    fn current(&self) -> Arc<HashMap<String, Vec<String>>> {
        self.reload_if_changed();
        match self.entries.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn reload_if_changed(&self) {
        let Ok(mut stamp) = self.stamp.try_lock() else {
            // Another lookup is checking right now; use what we have.
            return;
        };
        if stamp.checked.elapsed() < RELOAD_CHECK_INTERVAL {
            return;
        }
        stamp.checked = Instant::now();
        let Ok(meta) = std::fs::metadata(&self.path) else {
            tracing::error!(path = %self.path.display(), "table file vanished; keeping its previous contents");
            return;
        };
        if meta.modified().ok() == stamp.modified && meta.len() == stamp.len {
            return;
        }
        match Self::read(&self.path) {
            Ok((entries, new_stamp)) => {
                *stamp = new_stamp;
                let mut guard = match self.entries.write() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *guard = Arc::new(entries);
                tracing::info!(path = %self.path.display(), "table file reloaded");
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "table file reload failed; keeping its previous contents");
            }
        }
    }

    #[cfg(test)]
    fn force_recheck(&self) {
        if let Ok(mut s) = self.stamp.lock() {
            s.checked = Instant::now() - RELOAD_CHECK_INTERVAL * 2;
        }
    }
}

/// Read a table option: either the name of a `[tables.NAME]` block or an
/// inline TOML table written in place (`table = { alice = ["alice@example.org"] }`).
pub fn table_option(
    options: &mut Options<'_, '_>,
    tables: &TableSet,
    key: &'static str,
) -> Option<Arc<Table>> {
    let value = options.value(key)?;
    match value.get_ref() {
        Value::String(name) => match tables.get(name) {
            Some(t) => Some(t.clone()),
            None => {
                let hint =
                    crate::config::error::did_you_mean(name, tables.keys().map(String::as_str))
                        .map(|s| format!("did you mean \"{s}\"?"))
                        .unwrap_or_else(|| "define it in a [tables.NAME] block".to_string());
                options
                    .diag()
                    .error_hint(value.span(), format!("unknown table \"{name}\""), hint);
                None
            }
        },
        other => match inline_entries(other) {
            Some(map) => Some(Arc::new(Table::inline(
                &format!("{} {key}", options.what()),
                map,
            ))),
            None => {
                let msg = format!(
                    "`{key}` in {} must name a table or be an inline table of strings",
                    options.what()
                );
                options.error(value.span(), msg);
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_normalise_like_match_entries() {
        assert_eq!(normalize_key("Bücher.Example."), "xn--bcher-kva.example");
        assert_eq!(
            normalize_key("Joe@Bücher.example"),
            "joe@xn--bcher-kva.example"
        );
        assert_eq!(normalize_key("*@Example.ORG."), "*@example.org");
        assert_eq!(normalize_key("@example.org"), "@example.org");
        assert_eq!(normalize_key("Alice"), "alice");
        let mut m = HashMap::new();
        m.insert("bücher.example".to_string(), vec![]);
        let t = Table::inline("t", m);
        assert!(
            t.lookup_address(&Address::parse("<kim@xn--bcher-kva.example>").unwrap())
                .is_some()
        );
    }

    /// Found by the fuzz targets: keys whose lowercase is not in NFC, and
    /// a key that reads as a source route and a bare user, were normalised
    /// differently the second time, so a table never found them.
    #[test]
    fn normalising_a_key_again_changes_nothing() {
        for key in [
            "\u{130}\u{334}x@x.example",
            "\u{130}\u{334}x",
            "@a@route.example:j\u{f6}rg",
            "@bblec*@ba:cp\u{450}u",
        ] {
            let once = normalize_key(key);
            assert_eq!(normalize_key(&once), once, "{key:?}");
        }
        let mut m = HashMap::new();
        m.insert(
            "\u{130}\u{334}x@x.example".to_string(),
            vec!["v".to_string()],
        );
        let t = Table::inline("t", m);
        let address = Address::parse("<\u{130}\u{334}x@X.example>").unwrap();
        assert!(t.lookup_address(&address).is_some(), "the key finds itself");
    }

    #[test]
    fn map_file_format() {
        let map = parse_map_file(
            "# aliases\n\nSales@Example.org  alice@example.org, bob@example.org\n  carol@example.org\nexample.net\n",
        )
        .unwrap();
        assert_eq!(
            map["sales@example.org"],
            vec!["alice@example.org", "bob@example.org", "carol@example.org"]
        );
        assert_eq!(map["example.net"], Vec::<String>::new());
        assert!(parse_map_file("  orphan\n").is_err());
        let quoted = parse_map_file("\"John Smith\"@Example.org  john@example.org\n").unwrap();
        assert_eq!(
            quoted["\"john smith\"@example.org"],
            vec!["john@example.org"]
        );
    }

    #[test]
    fn address_lookup_order() {
        let mut m = HashMap::new();
        m.insert("joe@example.org".to_string(), vec!["a".to_string()]);
        m.insert("example.org".to_string(), vec!["d".to_string()]);
        let t = Table::inline("t", m);
        let joe = Address::parse("<JOE@example.org>").unwrap();
        assert_eq!(
            t.lookup_address(&joe),
            Some((AddressMatch::Address, vec!["a".into()]))
        );
        let ann = Address::parse("<ann@Example.ORG>").unwrap();
        assert_eq!(
            t.lookup_address(&ann),
            Some((AddressMatch::Domain, vec!["d".into()]))
        );
        assert_eq!(
            t.lookup_address(&Address::parse("<x@other.org>").unwrap()),
            None
        );
        assert_eq!(t.lookup_address(&Address::Null), None);
    }

    #[test]
    fn regex_table_expands_captures_in_order() {
        let t = Table {
            name: "r".into(),
            source: Source::Regex(vec![
                (
                    Regex::new("(?i)^(.+)@old\\.example$").unwrap(),
                    "$1@new.example".into(),
                ),
                (
                    Regex::new("(?i)^.*$").unwrap(),
                    "fallback@example.org".into(),
                ),
            ]),
        };
        assert_eq!(
            t.lookup("Joe@OLD.example"),
            Some(vec!["Joe@new.example".to_string()])
        );
        assert_eq!(
            t.lookup("x@y"),
            Some(vec!["fallback@example.org".to_string()])
        );
    }

    #[test]
    fn file_table_reloads_and_keeps_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "a@example.org ok\n").unwrap();
        let file = FileMap::load(&path).unwrap();
        let t = Table {
            name: "f".into(),
            source: Source::File(file),
        };
        assert!(t.contains("a@example.org"));
        std::fs::write(&path, "b@example.org ok\nc@example.org ok\n").unwrap();
        let Source::File(f) = &t.source else {
            unreachable!()
        };
        f.force_recheck();
        assert!(t.contains("b@example.org"));
        assert!(!t.contains("a@example.org"));
        std::fs::write(&path, "  broken continuation\n").unwrap();
        f.force_recheck();
        assert!(
            t.contains("b@example.org"),
            "old contents kept after a bad reload"
        );
    }

    use proptest::prelude::*;

    /// A key as an administrator might write one: an address (quoted or
    /// not, any case, a Unicode or ASCII domain), `@domain`, `*@domain`, a
    /// domain, or a user name.
    fn map_key() -> impl Strategy<Value = String> {
        let local = prop_oneof![
            "[A-Za-z0-9][A-Za-z0-9.+_-]{0,8}",
            "\"[A-Za-z0-9 #@,.]{1,10}\"",
        ];
        let domain = prop_oneof![
            "[A-Za-z0-9]{1,8}(\\.[A-Za-z]{2,4}){1,2}\\.?",
            Just("Bücher.Example".to_string()),
            Just("XN--BCHER-KVA.example.".to_string()),
        ];
        prop_oneof![
            (local, domain.clone()).prop_map(|(l, d)| format!("{l}@{d}")),
            domain.clone().prop_map(|d| format!("@{d}")),
            domain.clone().prop_map(|d| format!("*@{d}")),
            domain,
            "[A-Za-z][A-Za-z0-9_-]{0,8}",
        ]
    }

    /// How values of one line are separated, and whether a line break
    /// (a continuation line) comes before the value.
    fn separator() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(", ".to_string()),
            Just(",".to_string()),
            Just(" ".to_string()),
            Just("\t".to_string()),
            Just(",\n  ".to_string()),
            Just("\n\t".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the text, the parser returns, and what it returns has
        /// normalised keys and split values.
        #[test]
        fn any_text_gives_normalised_keys(
            lines in proptest::collection::vec("[ \t]{0,2}[#\"@a-zA-Z0-9 .,\t\\\\üÄ*-]{0,24}", 0..12),
            crlf in any::<bool>(),
        ) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            if let Ok(map) = parse_map_file(&text) {
                for (key, values) in &map {
                    prop_assert_eq!(&normalize_key(key), key);
                    for v in values {
                        prop_assert!(!v.is_empty() && !v.contains(|c: char| c == ',' || c.is_whitespace()));
                    }
                }
            }
        }

        /// A map written from keys and values, with comments, blank lines
        /// and continuation lines between them, reads back as those keys
        /// normalised (an address key as `Address::key` gives it) with
        /// those values; a later line for the same key wins.
        #[test]
        fn written_maps_read_back(
            entries in proptest::collection::vec(
                (map_key(), proptest::collection::vec(("[a-z0-9][a-z0-9.@+_-]{0,10}", separator()), 0..4)),
                0..8,
            ),
            comment_every in 1usize..4,
        ) {
            let mut text = String::new();
            let mut expected: HashMap<String, Vec<String>> = HashMap::new();
            for (i, (key, values)) in entries.iter().enumerate() {
                if i % comment_every == 0 {
                    text.push_str("# a comment, with words\n\n");
                }
                text.push_str(key);
                for (value, sep) in values {
                    text.push_str(if sep.starts_with(',') { "  " } else { sep });
                    text.push_str(value);
                    if sep.starts_with(',') {
                        text.push_str(sep);
                    }
                }
                text.push('\n');
                let normal = normalize_key(key);
                if key.contains('@') && !key.starts_with(['@', '*']) {
                    let address = Address::parse(key).expect("generated addresses parse");
                    prop_assert_eq!(&normal, &address.key());
                }
                expected.insert(normal, values.iter().map(|(v, _)| v.clone()).collect());
            }
            let map = parse_map_file(&text).map_err(|e| TestCaseError::fail(format!("{e} in {text:?}")))?;
            prop_assert_eq!(map, expected, "{}", text);
        }
    }
}
