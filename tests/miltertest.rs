//! The daemon against an independent MTA-side implementation: OpenDKIM's
//! `miltertest` (libmilter's protocol code) runs tests/miltertest/basic.lua
//! against the daemon started in-process on 127.0.0.1:0.
//!
//! Without `miltertest` the tests are skipped with one line, except under CI
//! (the `CI` environment variable set), where they fail.

mod common;

use common::daemon::{LISTEN, TestDaemon};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SCRIPT: &str = "tests/miltertest/basic.lua";
const POLICY: &str = include_str!("miltertest/basic.toml");
/// miltertest's own read timeout is 10 s (the script sets it); this bounds
/// the whole run.
const LIMIT: Duration = Duration::from_secs(30);

/// Whether to run: `miltertest` is installed, or we are not under CI. The
/// skip line is printed once per test binary.
fn miltertest_installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| {
        match std::process::Command::new("miltertest").arg("-V").output() {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("miltertest not installed: apt-get install miltertest");
                false
            }
            Err(e) => panic!("cannot run miltertest: {e}"),
        }
    });
    if !installed && std::env::var_os("CI").is_some() {
        panic!("miltertest not installed: apt-get install miltertest (required under CI)");
    }
    installed
}

/// Run basic.lua against `policy`; the process is killed if it overruns or
/// the test fails.
async fn run_script(policy: &str) -> Output {
    let mut d = TestDaemon::start(&format!("{LISTEN}{policy}")).await;
    let port = d.addr().port();
    let child = tokio::process::Command::new("miltertest")
        .arg("-s")
        .arg(SCRIPT)
        .arg("-D")
        .arg(format!("port={port}"))
        .current_dir(ROOT)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LIMIT, child)
        .await
        .unwrap_or_else(|_| panic!("miltertest ran longer than {LIMIT:?}"))
        .expect("run miltertest");
    // miltertest has closed its connection: nothing stays in flight.
    let waited = std::time::Instant::now();
    while d.daemon().messages_in_flight() != 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "a message stayed in flight after miltertest exited:\n{}",
            describe(&out)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.shutdown().await;
    out
}

fn describe(out: &Output) -> String {
    format!(
        "miltertest -s {SCRIPT}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn miltertest_basic_scenario_passes() {
    if !miltertest_installed() {
        return;
    }
    let out = run_script(POLICY).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("basic.lua: all checks passed"),
        "the script ran to its end:\n{}",
        describe(&out)
    );
}

/// The script's checks bite: with another header value, mt.eom_check fails
/// and miltertest exits non-zero with the script's message.
#[tokio::test]
async fn miltertest_script_fails_when_the_policy_differs() {
    if !miltertest_installed() {
        return;
    }
    let other = POLICY.replace("checked for {client_ip}", "checked for {helo}");
    assert_ne!(other, POLICY, "the policy has the header value to change");
    let out = run_script(&other).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FAIL: X-Dispatch-Test: expected"),
        "{}",
        describe(&out)
    );
}
