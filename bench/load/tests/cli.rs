//! The `dispatch-milter-load` binary's command line.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_dispatch-milter-load");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run the binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn says_when_its_message_file_cannot_be_read() {
    let out = run(&[
        "--connect",
        "inet:127.0.0.1:9",
        "--message",
        "/nonexistent/message.eml",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--message: cannot read /nonexistent/message.eml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn refuses_an_address_the_daemon_would_refuse() {
    let out = run(&["--connect", "127.0.0.1:7357"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--connect: invalid address \"127.0.0.1:7357\""),
        "{}",
        stderr(&out)
    );
}
