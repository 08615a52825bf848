use super::file::*;
use super::*;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    assert_eq!(
        parse_map_file("# head\n  orphan\n")
            .unwrap_err()
            .to_string(),
        "line 2: continuation line without a key"
    );
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
