//! File tables against hostile files: rewritten in place while in use,
//! replaced by a FIFO, pointing at `/dev/zero`, larger than `max_size`.
//! Nothing a table file does may lose a key that never left it, stall mail
//! that needs no table, or keep the daemon from answering signals.
//!
//! The real binary is driven as in `serve_binary.rs`: its JSON log on
//! stderr, milter sessions with indymilter-test, signals with kill(1).
//! Every wait is bounded and every process is killed by a Drop guard.

use crate::common;

use common::daemon::reject_with;
use common::position;
use common::serve::{
    BIN, Serve, WAIT, field_str, finish_message, message_of, rcpt_answer, scrape_metrics,
    start_message, threads,
};
use common::wait;
use indymilter_test::Status;
use std::ffi::CString;
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// sysexits' EX_CONFIG.
const EXIT_CONFIG: i32 = 78;
/// What "promptly" means for an exit after SIGTERM or a refused `check`.
const PROMPTLY: Duration = Duration::from_secs(5);

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Backdate a file's modification time, so a configuration load takes it as
/// settled and reads it at once instead of waiting to see it unchanged.
fn backdate(path: &Path) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open to backdate");
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
}

/// Run `dispatch-milter check -c CONFIG` with a memory limit (so a file read
/// without bound fails instead of filling the machine's memory) and a time
/// limit; return its exit code and stderr.
fn check(config: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("check")
        .arg("-c")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let mut status = None;
    let exited = wait::within_blocking(PROMPTLY, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let Some(status) = status.filter(|_| exited) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`check` did not finish within {PROMPTLY:?}");
    };
    let text = reader.join().expect("stderr reader");
    (status.code(), text)
}

/// A configuration with one file table at `path` (as written in the file).
fn table_config(path: &str, extra: &str) -> String {
    format!(
        "[tables.mailboxes]\ntype = \"file\"\npath = \"{path}\"\n{extra}\n\n[pipelines.mx]\n\n[[pipelines.mx.destination]]\ntable = \"mailboxes\"\naction = \"accept\"\n\n[pipelines.mx.default]\naction = \"reject\"\n"
    )
}

#[test]
fn check_refuses_a_fifo_table_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    mkfifo(&dir.path().join("mailboxes"));
    let config = dir.path().join("milter-config.toml");
    std::fs::write(&config, table_config("mailboxes", "")).expect("write config");
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(EXIT_CONFIG), "{stderr}");
    let expected = format!(
        "{}:3:8: cannot read table file \"mailboxes\" (relative to the configuration's directory): it is a FIFO, not a regular file\n  hint: a table file must be a regular file or a symbolic link to one",
        config.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn check_refuses_a_configuration_that_is_a_fifo_or_a_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("milter-config.toml");
    mkfifo(&fifo);
    let (code, stderr) = check(&fifo);
    assert_eq!(code, Some(EXIT_CONFIG), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: cannot read the configuration: it is a FIFO, not a regular file",
            fifo.display()
        )),
        "{stderr}"
    );
    let (code, stderr) = check(Path::new("/dev/zero"));
    assert_eq!(code, Some(EXIT_CONFIG), "{stderr}");
    assert!(
        stderr.contains(
            "/dev/zero: cannot read the configuration: it is a character device, not a regular file"
        ),
        "{stderr}"
    );
}

#[test]
fn check_refuses_dev_zero_and_a_link_to_it_without_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("zero");
    std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
    let config = dir.path().join("milter-config.toml");
    for path in ["/dev/zero", "zero"] {
        std::fs::write(&config, table_config(path, "")).expect("write config");
        // Reading it would fail on the 1 GiB memory limit, or time out.
        let (code, stderr) = check(&config);
        assert_eq!(code, Some(EXIT_CONFIG), "{path}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{}:3:8: cannot read table file \"{path}\"",
                config.display()
            )),
            "{stderr}"
        );
        assert!(
            stderr.contains("it is a character device, not a regular file"),
            "{stderr}"
        );
    }
}

#[test]
fn a_file_larger_than_max_size_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = dir.path().join("mailboxes");
    // 2048 bytes: 128 lines of 16.
    let text: String = (0..128)
        .map(|i| format!("u{i:02x}@example.org\n"))
        .collect();
    assert_eq!(text.len(), 2048);
    std::fs::write(&table, &text).expect("write table");
    backdate(&table);
    let config = dir.path().join("milter-config.toml");

    std::fs::write(&config, table_config("mailboxes", "max_size = \"1K\"")).expect("write");
    let errors = match dispatch_milter::config::load(&config) {
        Ok(_) => panic!("a 2048-byte table loaded under max_size = \"1K\""),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        errors,
        format!(
            "{}:3:8: cannot read table file \"mailboxes\" (relative to the configuration's directory): it is 2048 bytes, more than `max_size` (1024 bytes)\n  hint: if the file is meant to be this large, raise `max_size` in its [tables.NAME] block",
            config.display()
        )
    );

    // At the limit, and under the default, it loads.
    for extra in ["max_size = 2048", ""] {
        std::fs::write(&config, table_config("mailboxes", extra)).expect("write");
        let policy =
            dispatch_milter::config::load(&config).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert!(policy.tables["mailboxes"].contains("u7f@example.org"));
    }
}

/// The issue's case: a script truncates `mailboxes` and writes it again in
/// pieces, with pauses, over and over. A recipient that is in the old file
/// and the new one must never be missing, while lookups go on all the time;
/// once the writes stop, the new contents are served.
#[test]
fn a_table_rewritten_in_place_never_loses_a_key_it_keeps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = dir.path().join("mailboxes");
    let old: String = (0..200)
        .map(|i| format!("user{i}@example.org\n"))
        .chain(["kept@example.org\n".to_string()])
        .collect();
    std::fs::write(&table, &old).expect("write table");
    backdate(&table);
    let config = dir.path().join("milter-config.toml");
    std::fs::write(&config, table_config("mailboxes", "")).expect("write config");
    let policy = dispatch_milter::config::load(&config).expect("loads");
    let mailboxes = policy.tables["mailboxes"].clone();
    assert!(mailboxes.contains("kept@example.org"));

    // The new file: one more mailbox up front, the kept one last, so every
    // partial version (empty, half) lacks it.
    let new = format!("new@example.org\n{old}");
    let (first, second) = new.split_at(new.len() / 2);

    let stop = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicUsize::new(0));
    let misses = Arc::new(AtomicUsize::new(0));
    let hammer = {
        let (stop, lookups, misses, mailboxes) = (
            stop.clone(),
            lookups.clone(),
            misses.clone(),
            mailboxes.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if !mailboxes.contains("kept@example.org") {
                    misses.fetch_add(1, Ordering::Relaxed);
                }
                lookups.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    // Four rewrites of 620 ms: the file is partial 600 ms of each, so the
    // daemon's once-a-second look at it always has a partial file to find.
    // (These sleeps are the slow writer being played, not waits.)
    for _ in 0..4 {
        let mut f = std::fs::File::create(&table).expect("truncate");
        std::thread::sleep(Duration::from_millis(300));
        f.write_all(first.as_bytes()).expect("write");
        f.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(300));
        f.write_all(second.as_bytes()).expect("write");
        drop(f);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The finished file is applied once it stays unchanged.
    let applied = wait::within_blocking(WAIT, || mailboxes.contains("new@example.org"));
    assert!(applied, "the finished file was not applied within {WAIT:?}");
    stop.store(true, Ordering::Relaxed);
    hammer.join().expect("lookup thread");
    let (lookups, misses) = (
        lookups.load(Ordering::Relaxed),
        misses.load(Ordering::Relaxed),
    );
    assert!(lookups > 1000, "only {lookups} lookups");
    assert_eq!(
        misses, 0,
        "kept@example.org was missing in {misses} of {lookups} lookups"
    );
    assert!(mailboxes.contains("user0@example.org"));
}

/// A whole message through a `{daemon_name}` session; its EOM status.
async fn whole_message(addr: SocketAddr, daemon_name: &str, rcpt: &str) -> Status {
    let mut conn = start_message(addr, Some(daemon_name)).await;
    assert_eq!(conn.rcpt([rcpt]).await.expect("rcpt"), Status::Continue);
    let status = finish_message(&mut conn, "QID1").await;
    conn.close().await.expect("close");
    status
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr").port()
}

const REFUSED: &str = "550 5.1.1 no such mailbox";

fn refused() -> Status {
    reject_with(REFUSED)
}

/// Two pipelines: `mx` (the fallback) accepts the recipients in the
/// `mailboxes` file table and refuses the rest; `submission` (selected by
/// `{daemon_name}`) accepts everything and looks at no table. One worker
/// thread, as on a two-core host, so one blocked worker would be all of
/// them.
fn serving_config(metrics_port: u16, with_table: bool) -> String {
    let table = if with_table {
        "[tables.mailboxes]\ntype = \"file\"\npath = \"mailboxes\"\n\n"
    } else {
        ""
    };
    let destination = if with_table {
        "[[pipelines.mx.destination]]\ntable = \"mailboxes\"\naction = \"accept\"\n\n"
    } else {
        "[[pipelines.mx.destination]]\nmatch = [\"alice@example.org\"]\naction = \"accept\"\n\n"
    };
    format!(
        r#"[server]
log_format = "json"
log_level = "info"
worker_threads = 1
shutdown_grace = "10s"
metrics_listen = "127.0.0.1:{metrics_port}"

[[server.listen]]
address = "inet:127.0.0.1:0"

{table}[pipelines.mx]

{destination}[pipelines.mx.default]
action = "reject"
reply = {{ code = 550, status = "5.1.1", text = "no such mailbox" }}

[pipelines.submission]
daemon_names = ["submission"]

[pipelines.submission.default]
action = "accept"
"#
    )
}

/// The daemon's directory: the config and a `mailboxes` file with alice.
fn daemon_dir(with_table: bool) -> (tempfile::TempDir, PathBuf, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = dir.path().join("mailboxes");
    std::fs::write(&table, "alice@example.org\n").expect("write table");
    backdate(&table);
    let port = free_port();
    let config = dir.path().join("milter-config.toml");
    std::fs::write(&config, serving_config(port, with_table)).expect("write config");
    (dir, config, port)
}

#[tokio::test]
async fn a_table_file_replaced_by_a_fifo_stalls_nothing() {
    let (dir, config, metrics_port) = daemon_dir(true);
    let mut d = Serve::start(&config);
    let addr = d.ready().await;
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<alice@example.org>").await,
        Status::Continue
    );
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<bob@example.org>").await,
        refused()
    );

    // The file is replaced by a FIFO that no one ever writes to.
    let table = dir.path().join("mailboxes");
    std::fs::remove_file(&table).expect("remove table");
    mkfifo(&table);

    // Lookups go on from the contents the table had...
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<alice@example.org>").await,
        Status::Continue
    );
    // ...and the watcher, once the FIFO has stayed put, refuses it.
    let event = d
        .wait_for("table file reload failed; keeping its previous contents")
        .await;
    assert_eq!(event["level"], "ERROR", "{event}");
    assert_eq!(
        field_str(&event, "error"),
        "it is a FIFO, not a regular file",
        "{event}"
    );
    assert_eq!(field_str(&event, "table"), "mailboxes", "{event}");

    // Mail through the table, mail that needs no table, and the metrics
    // port are all answered.
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<alice@example.org>").await,
        Status::Continue
    );
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<bob@example.org>").await,
        refused()
    );
    assert_eq!(
        whole_message(addr, "submission", "<anyone@example.net>").await,
        Status::Continue
    );
    let body = scrape_metrics(SocketAddr::from(([127, 0, 0, 1], metrics_port))).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");

    let status = d.terminate(PROMPTLY).await;
    assert_eq!(status.code(), Some(0), "{}", d.log());
}

#[tokio::test]
async fn a_reload_to_a_fifo_table_is_refused_and_sigterm_still_works() {
    let (dir, config, port) = daemon_dir(false);
    let mut d = Serve::start(&config);
    let addr = d.ready().await;
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<bob@example.org>").await,
        refused()
    );

    // The new configuration names a table that is a FIFO.
    std::fs::remove_file(dir.path().join("mailboxes")).expect("remove table");
    mkfifo(&dir.path().join("mailboxes"));
    std::fs::write(&config, serving_config(port, true)).expect("rewrite config");
    let event = d.reload().await;
    assert_eq!(
        message_of(&event),
        "reload failed; the running configuration stays",
        "{event}"
    );
    let (line, col) = position(&serving_config(port, true), "\"mailboxes\"");
    assert_eq!(
        field_str(&event, "errors"),
        format!(
            "{}:{line}:{col}: cannot read table file \"mailboxes\" (relative to the configuration's directory): it is a FIFO, not a regular file\n  hint: a table file must be a regular file or a symbolic link to one",
            d.config.display()
        )
    );

    // The old configuration serves on, and SIGTERM stops the daemon.
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<alice@example.org>").await,
        Status::Continue
    );
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<bob@example.org>").await,
        refused()
    );
    let status = d.terminate(PROMPTLY).await;
    assert_eq!(status.code(), Some(0), "{}", d.log());
}

/// A reload that takes long (here: a table file that keeps changing, which
/// a configuration load waits for) holds up neither mail nor SIGTERM.
#[tokio::test]
async fn sigterm_is_answered_while_a_reload_hangs() {
    let (dir, config, _) = daemon_dir(true);
    let mut d = Serve::start(&config);
    let addr = d.ready().await;
    let table = dir.path().join("mailboxes");
    // Fresh before the first SIGHUP, so the load waits for it to settle.
    std::fs::write(&table, "alice@example.org\n# 0\n").expect("write table");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let _ = std::fs::write(&table, format!("alice@example.org\n# {n}\n"));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    d.signal("HUP");
    d.wait_for("SIGHUP: loading the configuration").await;
    // A second SIGHUP does not start a second load beside the first.
    d.signal("HUP");
    d.wait_for("SIGHUP during a reload; loading the configuration again once it is done")
        .await;
    // The daemon is loading in the background; mail is served meanwhile.
    assert_eq!(
        whole_message(addr, "submission", "<anyone@example.net>").await,
        Status::Continue
    );
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<alice@example.org>").await,
        Status::Continue
    );
    let status = d.terminate(PROMPTLY).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer thread");
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(
        !d.log().contains("configuration reloaded"),
        "the load cannot have finished:\n{}",
        d.log()
    );
}

/// Each loaded file table has a watcher thread; a reload replaces the
/// table, and the old table's watcher must end with it rather than pile up.
#[tokio::test]
async fn reloads_do_not_pile_up_watcher_threads() {
    let (_dir, config, _) = daemon_dir(true);
    let mut d = Serve::start(&config);
    d.ready().await;
    let pid = d.child.id();
    let before = threads(pid);
    for _ in 0..5 {
        let event = d.reload().await;
        assert_eq!(message_of(&event), "configuration reloaded", "{event}");
    }
    let ended = wait::within(WAIT, || threads(pid) <= before).await;
    assert!(
        ended,
        "{} threads after 5 reloads, {before} before",
        threads(pid)
    );
    let status = d.terminate(PROMPTLY).await;
    assert_eq!(status.code(), Some(0), "{}", d.log());
}

/// A load that does not finish within the deadline fails the reload, and
/// the running configuration stays. (A check kind whose builder takes 3 s
/// stands in for a file on a file system that does not answer.)
#[tokio::test]
async fn a_reload_that_takes_too_long_fails_and_the_old_configuration_stays() {
    use common::daemon::{LISTEN, TestDaemon};
    use dispatch_milter::checks::CheckBuildContext;

    let mut registry = dispatch_milter::config::Registry::builtin();
    registry.add_check(
        "stall",
        Arc::new(|_: &mut CheckBuildContext<'_, '_, '_>| {
            std::thread::sleep(Duration::from_secs(3));
            None
        }),
    );
    let mut d = TestDaemon::start_with(
        &format!("{LISTEN}[pipelines.mx]\n[pipelines.mx.default]\naction = \"accept\"\n"),
        registry,
    )
    .await;
    let addr = d.addr();

    d.rewrite_config(&format!(
        "{LISTEN}[checks.slow]\nkind = \"stall\"\n[pipelines.mx]\nchecks = [\"slow\"]\n[pipelines.mx.default]\naction = \"reject\"\n"
    ));
    let started = Instant::now();
    let errors = match d.daemon().reload_within(Duration::from_millis(300)).await {
        Ok(()) => panic!("a load that takes 3 s finished within 300 ms"),
        Err(e) => e.to_string(),
    };
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        errors,
        format!(
            "{}: loading the configuration took longer than 300ms; is a file it names on a file system that does not answer?",
            d.config.display()
        )
    );
    // While that thread still hangs, another reload starts no second one.
    let again = match d.daemon().reload_within(Duration::from_millis(300)).await {
        Ok(()) => panic!("a second load while the first still runs"),
        Err(e) => e.to_string(),
    };
    assert!(
        again.ends_with("the previous configuration load has not finished (a file it reads does not answer); not starting another"),
        "{again}"
    );
    assert_eq!(
        rcpt_answer(addr, Some("mx"), "<anyone@example.org>").await,
        Status::Continue
    );
    d.shutdown().await;
}
