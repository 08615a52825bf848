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

use crate::address::{Address, normalize_domain};
use crate::config::options::Options;
use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use toml::Value;
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
    pub const MAX_SIZE: u64 = 64 << 20;
    /// How often a file table's watcher looks at the file's stamp (size,
    /// modification and change time, inode).
    pub const POLL: Duration = Duration::from_secs(1);
    /// How long a changed file must have stayed unchanged before it is read:
    /// longer than the pauses of an editor or script that rewrites the file
    /// in place, and than the one-second time stamps of some file systems.
    /// A file last modified at least this long ago counts as settled at once.
    pub const SETTLE: Duration = Duration::from_secs(2);
    /// The same for a file that now has no entries while the table has some:
    /// a shell's `> file` empties the file at once, and the program writing
    /// into it may take several seconds before its first buffered write.
    pub const SETTLE_EMPTY: Duration = Duration::from_secs(10);
    /// A watcher read that takes longer than this is logged (the old
    /// contents are served meanwhile).
    pub const SLOW_READ: Duration = Duration::from_secs(5);
    /// How long loading a configuration waits for a table file that keeps
    /// changing before it gives up with an error.
    pub const LOAD_WAIT: Duration = Duration::from_secs(10);
    /// A file that goes on changing this long without ever settling is
    /// logged once, because its new contents are not being applied.
    pub const KEEPS_CHANGING: Duration = Duration::from_secs(60);
}

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

type Entries = HashMap<String, Vec<String>>;

#[derive(Debug)]
struct FileMap {
    /// What lookups see; the watcher swaps in a new snapshot.
    current: Arc<RwLock<Arc<Entries>>>,
    /// Dropped with the table, which ends its watcher.
    _stop: mpsc::Sender<()>,
    /// Not joined: the thread ends on its own once `_stop` is dropped.
    _watcher: std::thread::JoinHandle<()>,
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
        // An address literal ([192.0.2.1]) too: lookups use its canonical form.
        None if key.contains('.') || key.starts_with('[') || !key.is_ascii() => {
            normalize_domain(&key).unwrap_or(key)
        }
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
                let max_size = max_size_option(options);
                let path = options.required_string("path")?;
                let max_size = max_size?;
                let full = base_dir.join(path.get_ref());
                match FileMap::load(name, &full, max_size, Timing::DEFAULT) {
                    Ok(map) => Table {
                        name: name.to_string(),
                        source: Source::File(map),
                    },
                    Err(e) => {
                        let message = if Path::new(path.get_ref()).is_absolute() {
                            format!("cannot read table file \"{}\": {e}", path.get_ref())
                        } else {
                            format!(
                                "cannot read table file \"{}\" (relative to the configuration's directory): {e}",
                                path.get_ref()
                            )
                        };
                        match e.hint() {
                            Some(hint) => options.diag().error_hint(path.span(), message, hint),
                            None => options.error(path.span(), message),
                        }
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
    match crate::address::outside_quotes(line).find(|&(_, c)| c.is_whitespace()) {
        Some((i, _)) => (&line[..i], &line[i..]),
        None => (line, ""),
    }
}

/// `max_size` of a file table: the default when absent; `None` (with the
/// error reported) when it is not a size or is zero.
fn max_size_option(options: &mut Options<'_, '_>) -> Option<u64> {
    let Some(value) = options.value("max_size") else {
        return Some(defaults::MAX_SIZE);
    };
    match options.size("max_size")? {
        0 => {
            let message = format!("`max_size` in {} must be more than 0", options.what());
            options.error(value.span(), message);
            None
        }
        n => Some(n),
    }
}

/// Why a table file could not be read.
#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    /// What it is instead of a regular file: "a FIFO", "a directory", ...
    NotRegular(&'static str),
    /// Its size when known before reading, and the limit.
    TooLarge {
        len: Option<u64>,
        max: u64,
    },
    /// Its stamp changed between opening it and the end of the read.
    Changed,
    /// It did not stop changing while a configuration load waited for it.
    KeptChanging(Duration),
    NotUtf8 {
        line: usize,
    },
    Parse(String),
    /// No thread could be started to watch or read it.
    Thread(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            ReadError::TooLarge {
                len: Some(len),
                max,
            } => {
                write!(f, "it is {len} bytes, more than `max_size` ({max} bytes)")
            }
            ReadError::TooLarge { len: None, max } => {
                write!(
                    f,
                    "it grew past `max_size` ({max} bytes) while it was being read"
                )
            }
            ReadError::Changed => f.write_str("it changed while it was being read"),
            ReadError::KeptChanging(d) => write!(
                f,
                "it kept changing for {}, so it was never read whole",
                humantime::format_duration(*d)
            ),
            ReadError::NotUtf8 { line } => write!(f, "line {line} is not valid UTF-8"),
            ReadError::Parse(e) => f.write_str(e),
            ReadError::Thread(e) => write!(f, "cannot start a thread for it: {e}"),
        }
    }
}

impl ReadError {
    fn hint(&self) -> Option<String> {
        match self {
            ReadError::NotRegular(_) => Some(
                "a table file must be a regular file or a symbolic link to one".to_string(),
            ),
            ReadError::TooLarge { .. } => Some(
                "if the file is meant to be this large, raise `max_size` in its [tables.NAME] block"
                    .to_string(),
            ),
            ReadError::KeptChanging(_) => Some(
                "write the new file under another name in the same directory, then rename it into place (mv)"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

/// One version of a file, told apart without reading it: every write
/// changes the modification and change times (and usually the length), and
/// a file renamed into place is another inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file was last written at least `age` before `now` by the
    /// wall clock. A modification time in the future is not old.
    fn modified_before(&self, now: SystemTime, age: Duration) -> bool {
        let Some(limit) = now
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|n| n.checked_sub(age))
        else {
            return false;
        };
        let (secs, nanos) = self.mtime;
        let Ok(secs) = u64::try_from(secs) else {
            return true;
        };
        // A nanosecond field is below 10^9, so this cannot carry over.
        let nanos = u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0);
        Duration::new(secs, nanos) <= limit
    }
}

/// Read and parse a table file once: opened without blocking (a FIFO with
/// no writer would block `open` itself), refused unless it is a regular
/// file, read up to `max_size`, and refused if its stamp changed between
/// opening and the end of the read. Returns the stamp of what was read.
fn read_file(path: &Path, max_size: u64) -> Result<(Entries, Stamp), ReadError> {
    read_file_then(path, max_size, || {})
}

/// As [`read_file`], calling `before_read` between the first look at the
/// open file and reading it (tests change the file there).
fn read_file_then(
    path: &Path,
    max_size: u64,
    before_read: impl FnOnce(),
) -> Result<(Entries, Stamp), ReadError> {
    let (file, meta) = crate::files::open_regular(path).map_err(|e| match e {
        crate::files::OpenError::Io(e) => ReadError::Io(e),
        crate::files::OpenError::NotRegular(kind) => ReadError::NotRegular(kind),
    })?;
    if meta.len() > max_size {
        return Err(ReadError::TooLarge {
            len: Some(meta.len()),
            max: max_size,
        });
    }
    let stamp = Stamp::of(&meta);
    before_read();
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    (&file)
        .take(max_size.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > max_size {
        return Err(ReadError::TooLarge {
            len: None,
            max: max_size,
        });
    }
    let after = file.metadata().map_err(ReadError::Io)?;
    if Stamp::of(&after) != stamp || bytes.len() as u64 != stamp.len {
        return Err(ReadError::Changed);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        ReadError::NotUtf8 {
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
        }
    })?;
    let entries = parse_map_file(&text).map_err(ReadError::Parse)?;
    Ok((entries, stamp))
}

/// The timing of one file table: [`defaults`] in the daemon, shorter in
/// unit tests.
#[derive(Clone, Copy, Debug)]
struct Timing {
    poll: Duration,
    settle: Duration,
    settle_empty: Duration,
    slow_read: Duration,
    keeps_changing: Duration,
    load_wait: Duration,
    /// How often a configuration load looks at a file while it waits.
    load_poll: Duration,
}

impl Timing {
    const DEFAULT: Timing = Timing {
        poll: defaults::POLL,
        settle: defaults::SETTLE,
        settle_empty: defaults::SETTLE_EMPTY,
        slow_read: defaults::SLOW_READ,
        keeps_changing: defaults::KEEPS_CHANGING,
        load_wait: defaults::LOAD_WAIT,
        load_poll: Duration::from_millis(100),
    };
}

/// Read a table file for a configuration load, once it has settled: last
/// modified at least `settle` ago, or seen unchanged that long while we
/// wait (at most `load_wait`). Something that is not a regular file, or too
/// large, is refused at once.
fn read_settled(
    path: &Path,
    max_size: u64,
    timing: &Timing,
) -> Result<(Entries, Stamp), ReadError> {
    let started = Instant::now();
    let mut watching: Option<(Stamp, Instant)> = None;
    loop {
        let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
        if let Some(kind) = crate::files::not_regular(&meta) {
            return Err(ReadError::NotRegular(kind));
        }
        if meta.len() > max_size {
            return Err(ReadError::TooLarge {
                len: Some(meta.len()),
                max: max_size,
            });
        }
        let seen = Stamp::of(&meta);
        let now = Instant::now();
        let settled = seen.modified_before(SystemTime::now(), timing.settle)
            || match watching {
                Some((stamp, since)) if stamp == seen => now.duration_since(since) >= timing.settle,
                _ => {
                    watching = Some((seen, now));
                    false
                }
            };
        if settled {
            match read_file(path, max_size) {
                Ok((entries, read)) if read == seen => return Ok((entries, read)),
                // It changed since we looked, or while we read: someone is
                // writing it; wait until they are done.
                Ok(_) | Err(ReadError::Changed) => watching = None,
                Err(e) => return Err(e),
            }
        }
        if started.elapsed() >= timing.load_wait {
            return Err(ReadError::KeptChanging(timing.load_wait));
        }
        std::thread::sleep(timing.load_poll);
    }
}

fn snapshot(current: &RwLock<Arc<Entries>>) -> Arc<Entries> {
    match current.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl FileMap {
    /// Read the file (see [`read_settled`]) and start its watcher.
    fn load(table: &str, path: &Path, max_size: u64, timing: Timing) -> Result<FileMap, ReadError> {
        let (entries, stamp) = read_settled(path, max_size, &timing)?;
        let current = Arc::new(RwLock::new(Arc::new(entries)));
        let (stop, stopped) = mpsc::channel();
        let watcher = Watcher {
            table: table.to_string(),
            path: path.to_path_buf(),
            max_size,
            timing,
            current: Arc::downgrade(&current),
            stopped,
            settle: Settle::new(stamp, timing.settle),
            unreadable: false,
        };
        let watcher = std::thread::Builder::new()
            .name("table-watcher".to_string())
            .spawn(move || watcher.run())
            .map_err(ReadError::Thread)?;
        Ok(FileMap {
            current,
            _stop: stop,
            _watcher: watcher,
        })
    }

    /// The current contents. No file I/O: the watcher keeps them fresh.
    fn current(&self) -> Arc<Entries> {
        snapshot(&self.current)
    }
}

/// When a changed file may be read and applied: bookkeeping over the stamps
/// the watcher sees, with the times passed in so tests can make them up.
#[derive(Debug)]
struct Settle {
    settle: Duration,
    /// The version being served.
    applied: Stamp,
    /// A version that failed to load; not tried again until the file changes.
    rejected: Option<Stamp>,
    /// The newest version seen that differs from `applied`.
    pending: Option<Pending>,
    /// Since when the file has differed from `applied`, for a warning.
    changing_since: Option<Instant>,
    warned: bool,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    stamp: Stamp,
    /// When the watcher first saw this version.
    since: Instant,
    /// How long it must stay unchanged before it is applied.
    needed: Duration,
}

impl Pending {
    fn settled(&self, now: Instant, wall: SystemTime) -> bool {
        now.duration_since(self.since) >= self.needed
            || self.stamp.modified_before(wall, self.needed)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The file is the version served (or one that failed): nothing to do.
    Nothing,
    /// It changed and has not settled yet.
    Wait,
    /// It changed and has settled: read it.
    Read,
}

impl Settle {
    fn new(applied: Stamp, settle: Duration) -> Settle {
        Settle {
            settle,
            applied,
            rejected: None,
            pending: None,
            changing_since: None,
            warned: false,
        }
    }

    /// The watcher saw the file with stamp `seen`.
    fn observe(&mut self, seen: Stamp, now: Instant, wall: SystemTime) -> Next {
        if seen == self.applied || Some(seen) == self.rejected {
            self.pending = None;
            self.changing_since = None;
            self.warned = false;
            return Next::Nothing;
        }
        self.changing_since.get_or_insert(now);
        let pending = match self.pending {
            Some(p) if p.stamp == seen => p,
            _ => {
                let p = Pending {
                    stamp: seen,
                    since: now,
                    needed: self.settle,
                };
                self.pending = Some(p);
                p
            }
        };
        if pending.settled(now, wall) {
            Next::Read
        } else {
            Next::Wait
        }
    }

    /// After a read: whether what was read is the version that settled. If
    /// not, the file changed again, and that version must settle first.
    fn still_pending(&mut self, read: Stamp, now: Instant) -> bool {
        match self.pending {
            Some(p) if p.stamp == read => true,
            _ => {
                self.pending = Some(Pending {
                    stamp: read,
                    since: now,
                    needed: self.settle,
                });
                false
            }
        }
    }

    /// Require the pending version to stay unchanged for `needed` in all;
    /// true while it has not yet.
    fn hold(&mut self, needed: Duration, now: Instant, wall: SystemTime) -> bool {
        match self.pending.as_mut() {
            Some(p) => {
                p.needed = p.needed.max(needed);
                !p.settled(now, wall)
            }
            None => false,
        }
    }

    fn applied(&mut self, stamp: Stamp) {
        *self = Settle::new(stamp, self.settle);
    }

    /// The pending version failed to load.
    fn rejected(&mut self) {
        self.rejected = self.pending.take().map(|p| p.stamp);
        self.changing_since = None;
        self.warned = false;
    }

    /// The file changed while it was read: watch it settle again.
    fn forget(&mut self) {
        self.pending = None;
    }

    /// True, once, when the file has been changing for `after` without
    /// ever settling.
    fn keeps_changing(&mut self, now: Instant, after: Duration) -> bool {
        match self.changing_since {
            Some(since) if !self.warned && now.duration_since(since) >= after => {
                self.warned = true;
                true
            }
            _ => false,
        }
    }
}

/// The thread behind one file table. It ends when the table is dropped.
struct Watcher {
    table: String,
    path: PathBuf,
    max_size: u64,
    timing: Timing,
    current: Weak<RwLock<Arc<Entries>>>,
    /// Disconnected once the table is dropped.
    stopped: mpsc::Receiver<()>,
    settle: Settle,
    /// The file could not be looked at, and that was logged.
    unreadable: bool,
}

impl Watcher {
    fn run(mut self) {
        loop {
            match self.stopped.recv_timeout(self.timing.poll) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            if !self.step() {
                return;
            }
        }
    }

    fn table_gone(&self) -> bool {
        matches!(
            self.stopped.try_recv(),
            Ok(()) | Err(TryRecvError::Disconnected)
        )
    }

    /// One look at the file; false once the table is gone.
    fn step(&mut self) -> bool {
        let seen = match std::fs::metadata(&self.path) {
            Ok(meta) => {
                if std::mem::take(&mut self.unreadable) {
                    tracing::info!(table = %self.table, path = %self.path.display(), "table file is back; it is read once it stays unchanged");
                }
                Stamp::of(&meta)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.unreadable, true) {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        tracing::error!(table = %self.table, path = %self.path.display(), "table file vanished; keeping its previous contents");
                    } else {
                        tracing::error!(table = %self.table, path = %self.path.display(), error = %e, "cannot look at the table file; keeping its previous contents");
                    }
                }
                return true;
            }
        };
        let now = Instant::now();
        match self.settle.observe(seen, now, SystemTime::now()) {
            Next::Nothing => true,
            Next::Wait => {
                if self.settle.keeps_changing(now, self.timing.keeps_changing) {
                    tracing::warn!(table = %self.table, path = %self.path.display(), for_at_least = %humantime::format_duration(self.timing.keeps_changing), "table file keeps changing; still serving its previous contents");
                } else {
                    tracing::debug!(table = %self.table, path = %self.path.display(), "table file changed; waiting until it stays unchanged");
                }
                true
            }
            Next::Read => self.load(),
        }
    }

    /// Read the settled file and apply it; false once the table is gone.
    fn load(&mut self) -> bool {
        let Some(result) = self.read() else {
            return false;
        };
        let now = Instant::now();
        match result {
            Ok((entries, stamp)) => {
                if !self.settle.still_pending(stamp, now) {
                    tracing::debug!(table = %self.table, path = %self.path.display(), "table file changed again; waiting until it stays unchanged");
                    return true;
                }
                let Some(current) = self.current.upgrade() else {
                    return false;
                };
                if entries.is_empty() && !snapshot(&current).is_empty() {
                    if self
                        .settle
                        .hold(self.timing.settle_empty, now, SystemTime::now())
                    {
                        tracing::info!(table = %self.table, path = %self.path.display(), wait = %humantime::format_duration(self.timing.settle_empty), "table file is empty now; it is applied only if it stays unchanged that long");
                        return true;
                    }
                    tracing::warn!(table = %self.table, path = %self.path.display(), "table file is empty; applying it");
                }
                let count = entries.len();
                match current.write() {
                    Ok(mut guard) => *guard = Arc::new(entries),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(entries),
                }
                self.settle.applied(stamp);
                tracing::info!(table = %self.table, path = %self.path.display(), entries = count, "table file reloaded");
            }
            Err(ReadError::Changed) => {
                tracing::debug!(table = %self.table, path = %self.path.display(), "table file changed while it was read; waiting until it stays unchanged");
                self.settle.forget();
            }
            Err(e) => {
                tracing::error!(table = %self.table, path = %self.path.display(), error = %e, "table file reload failed; keeping its previous contents");
                self.settle.rejected();
            }
        }
        true
    }

    /// Read the file on a thread of its own, so a read that hangs (a dead
    /// NFS server) holds up that thread alone; log when it is slow. `None`
    /// when the table was dropped while waiting.
    fn read(&self) -> Option<Result<(Entries, Stamp), ReadError>> {
        let (tx, rx) = mpsc::channel();
        let path = self.path.clone();
        let max_size = self.max_size;
        let spawned = std::thread::Builder::new()
            .name("table-reader".to_string())
            .spawn(move || {
                let _ = tx.send(read_file(&path, max_size));
            });
        if let Err(e) = spawned {
            return Some(Err(ReadError::Thread(e)));
        }
        let started = Instant::now();
        let mut slow = false;
        loop {
            match rx.recv_timeout(self.timing.poll) {
                Ok(result) => {
                    if slow {
                        tracing::info!(table = %self.table, path = %self.path.display(), took = %humantime::format_duration(started.elapsed()), "slow table file read finished");
                    }
                    return Some(result);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Some(Err(ReadError::Io(std::io::Error::other(
                        "the thread reading it ended without an answer",
                    ))));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.table_gone() {
                return None;
            }
            if !slow && started.elapsed() >= self.timing.slow_read {
                slow = true;
                tracing::warn!(table = %self.table, path = %self.path.display(), after = %humantime::format_duration(self.timing.slow_read), "table file read is slow; serving its previous contents meanwhile");
            }
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

    /// Watcher timing scaled down so the tests take a fraction of a second.
    const FAST: Timing = Timing {
        poll: Duration::from_millis(20),
        settle: Duration::from_millis(200),
        settle_empty: Duration::from_millis(600),
        slow_read: Duration::from_millis(500),
        keeps_changing: Duration::from_secs(60),
        load_wait: Duration::from_secs(2),
        load_poll: Duration::from_millis(10),
    };

    fn file_table(path: &Path, timing: Timing) -> Table {
        Table {
            name: "f".into(),
            source: Source::File(FileMap::load("f", path, defaults::MAX_SIZE, timing).unwrap()),
        }
    }

    /// Poll `cond` until it holds; false after `limit`.
    fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        cond()
    }

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    }

    #[test]
    fn file_table_applies_a_settled_change_and_keeps_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "a@example.org ok\n").unwrap();
        let t = file_table(&path, FAST);
        assert!(t.contains("a@example.org"));

        std::fs::write(&path, "b@example.org ok\nc@example.org ok\n").unwrap();
        assert!(eventually(Duration::from_secs(5), || t.contains("b@example.org")));
        assert!(!t.contains("a@example.org"));

        // A file that does not parse is never applied: after it had every
        // chance to settle and be read, the old contents are still served.
        std::fs::write(&path, "  broken continuation\n").unwrap();
        std::thread::sleep(FAST.settle * 3);
        assert!(t.contains("b@example.org"), "old contents kept");

        // The watcher goes on: the next good version is applied.
        std::fs::write(&path, "d@example.org ok\n").unwrap();
        assert!(eventually(Duration::from_secs(5), || t.contains("d@example.org")));
    }

    #[test]
    fn a_change_is_applied_only_once_the_file_stays_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "old@example.org\n").unwrap();
        // Settling takes ten times the pause between writes, so that a busy
        // test machine does not stretch a pause into a settled file.
        let timing = Timing {
            settle: Duration::from_millis(500),
            ..FAST
        };
        let t = file_table(&path, timing);
        // Keep rewriting more often than the file takes to settle: nothing
        // is applied while the writes go on, however many polls pass.
        let writes_end = Instant::now() + timing.settle * 3;
        let mut n = 0;
        while Instant::now() < writes_end {
            n += 1;
            std::fs::write(&path, format!("new{n}@example.org\n")).unwrap();
            assert!(t.contains("old@example.org"), "applied while changing");
            std::thread::sleep(timing.settle / 10);
        }
        assert!(eventually(Duration::from_secs(5), || t
            .contains(&format!("new{n}@example.org"))));
    }

    #[test]
    fn the_watcher_ends_with_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "a@example.org\n").unwrap();
        let FileMap {
            current,
            _stop: stop,
            _watcher: watcher,
        } = FileMap::load("f", &path, defaults::MAX_SIZE, FAST).unwrap();
        std::thread::sleep(FAST.poll * 3);
        assert!(!watcher.is_finished());
        // Dropping the table drops these two.
        drop(stop);
        drop(current);
        assert!(eventually(Duration::from_secs(2), || watcher.is_finished()));
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let cases: [(&Path, &str); 4] = [
            (&fifo, "it is a FIFO, not a regular file"),
            (
                Path::new("/dev/zero"),
                "it is a character device, not a regular file",
            ),
            (&link, "it is a character device, not a regular file"),
            (dir.path(), "it is a directory, not a regular file"),
        ];
        for (path, expected) in cases {
            // Neither blocks (a FIFO without a writer would block `open`)
            // nor reads (`/dev/zero` never ends).
            let started = Instant::now();
            match read_file(path, defaults::MAX_SIZE) {
                Err(e) => assert_eq!(e.to_string(), expected, "{}", path.display()),
                Ok(_) => panic!("{} was read", path.display()),
            }
            let err = match read_settled(path, defaults::MAX_SIZE, &FAST) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{} was read", path.display()),
            };
            assert_eq!(err, expected);
            assert!(started.elapsed() < Duration::from_secs(1));
        }
        // A symbolic link to a regular file is fine.
        let target = dir.path().join("real");
        std::fs::write(&target, "a@example.org\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(
            read_file(&link, defaults::MAX_SIZE)
                .unwrap()
                .0
                .contains_key("a@example.org")
        );
    }

    #[test]
    fn files_larger_than_max_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "a@example.org\n".repeat(10)).unwrap(); // 140 bytes
        assert!(read_file(&path, 140).is_ok());
        let e = read_file(&path, 139).map(|_| ()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is 140 bytes, more than `max_size` (139 bytes)"
        );
        assert!(e.hint().unwrap().contains("raise `max_size`"));
    }

    #[test]
    fn a_file_that_changes_while_it_is_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "a@example.org\nb@example.org\n").unwrap();
        // Truncated (as an editor saving in place does) after the file was
        // opened and looked at, before it is read.
        let result = read_file_then(&path, defaults::MAX_SIZE, || {
            std::fs::write(&path, "a@example.org\n").unwrap();
        });
        assert!(matches!(result, Err(ReadError::Changed)), "{result:?}");
        // Grown past the limit after the look at its size.
        let result = read_file_then(&path, 20, || {
            std::fs::write(&path, "x".repeat(100)).unwrap();
        });
        assert!(
            matches!(result, Err(ReadError::TooLarge { len: None, max: 20 })),
            "{result:?}"
        );
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, b"a@example.org\nb@example.org \xff\n").unwrap();
        let e = read_file(&path, defaults::MAX_SIZE)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.to_string(), "line 2 is not valid UTF-8");
    }

    #[test]
    fn a_load_waits_for_a_file_that_is_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "a@example.org\n").unwrap();
        // A writer that appends a line every settle/4 for a while: the load
        // reads only once it has stopped, and so sees every line.
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                for i in 0..8 {
                    std::thread::sleep(FAST.settle / 4);
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap();
                    writeln!(f, "n{i}@example.org").unwrap();
                }
            })
        };
        std::thread::sleep(FAST.settle / 8);
        let (entries, _) = read_settled(&path, defaults::MAX_SIZE, &FAST).unwrap();
        writer.join().unwrap();
        assert_eq!(entries.len(), 9, "{entries:?}");

        // One that never stops is an error once the wait is over.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (started_tx, started) = mpsc::channel();
        let writer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    std::fs::write(&path, format!("x{n}@example.org\n")).unwrap();
                    let _ = started_tx.send(());
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        started.recv().unwrap();
        let timing = Timing {
            load_wait: Duration::from_millis(600),
            ..FAST
        };
        let result = read_settled(&path, defaults::MAX_SIZE, &timing);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        let e = result.map(|_| ()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it kept changing for 600ms, so it was never read whole"
        );
        assert!(e.hint().unwrap().contains("rename it into place"));
    }

    #[test]
    fn an_old_file_is_read_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "a@example.org\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        let timing = Timing {
            settle: Duration::from_secs(30),
            ..FAST
        };
        let started = Instant::now();
        read_settled(&path, defaults::MAX_SIZE, &timing).unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    fn stamp(n: i64) -> Stamp {
        Stamp {
            dev: 1,
            ino: 1,
            len: 10,
            mtime: (1_000_000 + n, 0),
            ctime: (1_000_000 + n, 0),
        }
    }

    #[test]
    fn settle_reads_a_version_once_it_stayed_unchanged() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        // Wall clock: no later than any stamp, so none is old yet.
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = Settle::new(stamp(0), ms(2000));
        assert_eq!(s.observe(stamp(0), t0, wall), Next::Nothing);
        assert_eq!(s.observe(stamp(1), t0, wall), Next::Wait);
        assert_eq!(s.observe(stamp(1), t0 + ms(1000), wall), Next::Wait);
        // Another write restarts the wait.
        assert_eq!(s.observe(stamp(2), t0 + ms(1500), wall), Next::Wait);
        assert_eq!(s.observe(stamp(2), t0 + ms(3000), wall), Next::Wait);
        assert_eq!(s.observe(stamp(2), t0 + ms(3500), wall), Next::Read);
        // The read found yet another version: that one must settle.
        assert!(!s.still_pending(stamp(3), t0 + ms(3600)));
        assert_eq!(s.observe(stamp(3), t0 + ms(4600), wall), Next::Wait);
        assert_eq!(s.observe(stamp(3), t0 + ms(5600), wall), Next::Read);
        assert!(s.still_pending(stamp(3), t0 + ms(5600)));
        s.applied(stamp(3));
        assert_eq!(s.observe(stamp(3), t0 + ms(6600), wall), Next::Nothing);

        // A version last written long before (by the wall clock) is read at
        // the first look.
        let later = UNIX_EPOCH + Duration::from_secs(1_000_100);
        assert_eq!(s.observe(stamp(4), t0 + ms(7000), later), Next::Read);
    }

    #[test]
    fn settle_holds_an_empty_file_longer_and_skips_a_failed_version() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = Settle::new(stamp(0), ms(2000));
        assert_eq!(s.observe(stamp(1), t0, wall), Next::Wait);
        assert_eq!(s.observe(stamp(1), t0 + ms(2000), wall), Next::Read);
        // It read back empty: it must stay so for 10 s in all.
        assert!(s.hold(ms(10_000), t0 + ms(2000), wall));
        assert_eq!(s.observe(stamp(1), t0 + ms(9000), wall), Next::Wait);
        assert_eq!(s.observe(stamp(1), t0 + ms(10_000), wall), Next::Read);
        assert!(!s.hold(ms(10_000), t0 + ms(10_000), wall));

        // A version that failed is not read again until the file changes.
        assert_eq!(s.observe(stamp(2), t0 + ms(11_000), wall), Next::Wait);
        assert_eq!(s.observe(stamp(2), t0 + ms(13_000), wall), Next::Read);
        s.rejected();
        assert_eq!(s.observe(stamp(2), t0 + ms(20_000), wall), Next::Nothing);
        assert_eq!(s.observe(stamp(3), t0 + ms(21_000), wall), Next::Wait);
    }

    #[test]
    fn settle_warns_once_about_a_file_that_never_settles() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = Settle::new(stamp(0), ms(2000));
        let mut warnings = 0;
        for i in 1..=100 {
            let now = t0 + ms(1000) * i as u32;
            assert_eq!(s.observe(stamp(i), now, wall), Next::Wait);
            if s.keeps_changing(now, ms(60_000)) {
                warnings += 1;
                assert_eq!(i, 61, "60 s after the first change was seen");
            }
        }
        assert_eq!(warnings, 1);
    }

    #[test]
    fn lookups_never_wait_for_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "a@example.org\n").unwrap();
        let t = file_table(&path, FAST);
        // Replaced by a FIFO no one writes to: reading it would block for
        // ever. Lookups go on answering from the last good contents, at
        // once, before and after the watcher has looked at it.
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let until = Instant::now() + FAST.settle * 3;
        while Instant::now() < until {
            let started = Instant::now();
            assert!(t.contains("a@example.org"));
            assert!(started.elapsed() < Duration::from_millis(500));
            std::thread::sleep(Duration::from_millis(5));
        }
        // And once a regular file is back, it is applied.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "b@example.org\n").unwrap();
        assert!(eventually(Duration::from_secs(5), || t.contains("b@example.org")));
    }

    #[test]
    fn an_emptied_file_is_applied_only_after_it_stays_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        std::fs::write(&path, "a@example.org\n").unwrap();
        let timing = Timing {
            settle_empty: Duration::from_secs(2),
            ..FAST
        };
        let t = file_table(&path, timing);
        // `> map` then a slow writer: empty for longer than `settle` but
        // shorter than `settle_empty`.
        std::fs::write(&path, "").unwrap();
        std::thread::sleep(timing.settle * 2);
        assert!(t.contains("a@example.org"), "the empty file was applied");
        std::fs::write(&path, "a@example.org\nb@example.org\n").unwrap();
        assert!(eventually(Duration::from_secs(5), || t.contains("b@example.org")));
        // Emptied for good: applied once it stayed empty long enough.
        std::fs::write(&path, "").unwrap();
        assert!(eventually(Duration::from_secs(5), || !t.contains("a@example.org")));
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
                        // Split at commas and white space outside quotes.
                        prop_assert!(
                            !v.is_empty()
                                && crate::address::outside_quotes(v)
                                    .all(|(_, c)| c != ',' && !c.is_whitespace()),
                            "{:?}",
                            v
                        );
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
