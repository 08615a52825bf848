//! The daemon against an independent MTA-side implementation: OpenDKIM's
//! `miltertest` (libmilter's protocol code) runs tests/miltertest/basic.lua
//! against the daemon started in-process on 127.0.0.1:0.
//!
//! The tests need `miltertest`, so they are `#[ignore]`d with what to
//! install (tests/common/tools.rs).

use crate::common;

use common::daemon::{LISTEN, TestDaemon};
use common::wait::{self, WAIT};
use std::process::Output;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SCRIPT: &str = "tests/miltertest/basic.lua";
const POLICY: &str = include_str!("../miltertest/basic.toml");
/// miltertest's own read timeout is 10 s (the script sets it); this bounds
/// the whole run.
const LIMIT: Duration = Duration::from_secs(30);

/// Fails the test unless `miltertest` runs here (tests/common/tools.rs).
fn require_miltertest() {
    common::tools::require_program("miltertest", &[], "apt-get install miltertest");
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
    let drained = wait::within(WAIT, || d.daemon().messages_in_flight() == 0).await;
    assert!(
        drained,
        "a message stayed in flight after miltertest exited:\n{}",
        describe(&out)
    );
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
#[ignore = "needs miltertest: apt-get install miltertest"]
async fn miltertest_basic_scenario_passes() {
    require_miltertest();
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
#[ignore = "needs miltertest: apt-get install miltertest"]
async fn miltertest_script_fails_when_the_policy_differs() {
    require_miltertest();
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
