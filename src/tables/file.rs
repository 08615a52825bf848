//! File tables: reading a map file safely (size cap, non-blocking open,
//! regular files only), and the watcher thread that applies a changed file
//! only once it has settled and reads back whole.

use super::{Entries, defaults, parse_map_file};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
#[derive(Debug)]
pub(super) struct FileMap {
    /// What lookups see; the watcher swaps in a new snapshot.
    pub(super) current: Arc<RwLock<Arc<Entries>>>,
    /// Dropped with the table, which ends its watcher.
    pub(super) _stop: mpsc::Sender<()>,
    /// Not joined: the thread ends on its own once `_stop` is dropped.
    pub(super) _watcher: std::thread::JoinHandle<()>,
}

/// Why a table file could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
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
    Parse(super::MapFileError),
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
            ReadError::Parse(e) => write!(f, "{e}"),
            ReadError::Thread(e) => write!(f, "cannot start a thread for it: {e}"),
        }
    }
}

impl ReadError {
    pub(super) fn hint(&self) -> Option<String> {
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
pub(super) struct Stamp {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) len: u64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

impl Stamp {
    pub(super) fn of(meta: &Metadata) -> Stamp {
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
    pub(super) fn modified_before(&self, now: SystemTime, age: Duration) -> bool {
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
pub(super) fn read_file(path: &Path, max_size: u64) -> Result<(Entries, Stamp), ReadError> {
    read_file_then(path, max_size, || {})
}

/// As [`read_file`], calling `before_read` between the first look at the
/// open file and reading it (tests change the file there).
pub(super) fn read_file_then(
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
pub(super) struct Timing {
    pub(super) poll: Duration,
    pub(super) settle: Duration,
    pub(super) settle_empty: Duration,
    pub(super) slow_read: Duration,
    pub(super) keeps_changing: Duration,
    pub(super) load_wait: Duration,
    /// How often a configuration load looks at a file while it waits.
    pub(super) load_poll: Duration,
}

impl Timing {
    pub(super) const DEFAULT: Timing = Timing {
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
pub(super) fn read_settled(
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

pub(super) fn snapshot(current: &RwLock<Arc<Entries>>) -> Arc<Entries> {
    match current.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl FileMap {
    /// Read the file (see [`read_settled`]) and start its watcher.
    pub(super) fn load(
        table: &str,
        path: &Path,
        max_size: u64,
        timing: Timing,
    ) -> Result<FileMap, ReadError> {
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
    pub(super) fn current(&self) -> Arc<Entries> {
        snapshot(&self.current)
    }
}

/// When a changed file may be read and applied: bookkeeping over the stamps
/// the watcher sees, with the times passed in so tests can make them up.
#[derive(Debug)]
pub(super) struct Settle {
    pub(super) settle: Duration,
    /// The version being served.
    pub(super) applied: Stamp,
    /// A version that failed to load; not tried again until the file changes.
    pub(super) rejected: Option<Stamp>,
    /// The newest version seen that differs from `applied`.
    pub(super) pending: Option<Pending>,
    /// Since when the file has differed from `applied`, for a warning.
    pub(super) changing_since: Option<Instant>,
    pub(super) warned: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    pub(super) stamp: Stamp,
    /// When the watcher first saw this version.
    pub(super) since: Instant,
    /// How long it must stay unchanged before it is applied.
    pub(super) needed: Duration,
}

impl Pending {
    pub(super) fn settled(&self, now: Instant, wall: SystemTime) -> bool {
        now.duration_since(self.since) >= self.needed
            || self.stamp.modified_before(wall, self.needed)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// The file is the version served (or one that failed): nothing to do.
    Nothing,
    /// It changed and has not settled yet.
    Wait,
    /// It changed and has settled: read it.
    Read,
}

impl Settle {
    pub(super) fn new(applied: Stamp, settle: Duration) -> Settle {
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
    pub(super) fn observe(&mut self, seen: Stamp, now: Instant, wall: SystemTime) -> Next {
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
    pub(super) fn still_pending(&mut self, read: Stamp, now: Instant) -> bool {
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
    pub(super) fn hold(&mut self, needed: Duration, now: Instant, wall: SystemTime) -> bool {
        match self.pending.as_mut() {
            Some(p) => {
                p.needed = p.needed.max(needed);
                !p.settled(now, wall)
            }
            None => false,
        }
    }

    pub(super) fn applied(&mut self, stamp: Stamp) {
        *self = Settle::new(stamp, self.settle);
    }

    /// The pending version failed to load.
    pub(super) fn rejected(&mut self) {
        self.rejected = self.pending.take().map(|p| p.stamp);
        self.changing_since = None;
        self.warned = false;
    }

    /// The file changed while it was read: watch it settle again.
    pub(super) fn forget(&mut self) {
        self.pending = None;
    }

    /// True, once, when the file has been changing for `after` without
    /// ever settling.
    pub(super) fn keeps_changing(&mut self, now: Instant, after: Duration) -> bool {
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
pub(super) struct Watcher {
    pub(super) table: String,
    pub(super) path: PathBuf,
    pub(super) max_size: u64,
    pub(super) timing: Timing,
    pub(super) current: Weak<RwLock<Arc<Entries>>>,
    /// Disconnected once the table is dropped.
    pub(super) stopped: mpsc::Receiver<()>,
    pub(super) settle: Settle,
    /// The file could not be looked at, and that was logged.
    pub(super) unreadable: bool,
}

impl Watcher {
    pub(super) fn run(mut self) {
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

    pub(super) fn table_gone(&self) -> bool {
        matches!(
            self.stopped.try_recv(),
            Ok(()) | Err(TryRecvError::Disconnected)
        )
    }

    /// One look at the file; false once the table is gone.
    pub(super) fn step(&mut self) -> bool {
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
    pub(super) fn load(&mut self) -> bool {
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
    pub(super) fn read(&self) -> Option<Result<(Entries, Stamp), ReadError>> {
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
