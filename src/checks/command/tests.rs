use super::*;
use crate::address::Address;
use crate::checks::require_tls::tests::{build_err, build_ok, input, run};
use crate::message::{AuthInfo, Envelope, Header};
use std::path::Path;
use std::time::Duration;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn config(program: &Path, extra: &str) -> String {
    format!("program = {:?}\n{extra}", program.display().to_string())
}

fn eom_input(body: Vec<u8>) -> CheckInput {
    let mut i = input(Stage::Eom);
    Arc::make_mut(&mut i.connection).client_ip = Some("192.0.2.7".parse().unwrap());
    Arc::make_mut(&mut i.connection).helo = Some("mx.example.net".into());
    Arc::make_mut(&mut i.connection).auth = Some(AuthInfo {
        user: "alice".into(),
        mechanism: None,
    });
    i.envelope = Some(Envelope {
        rewritten_sender: None,
        sender: Address::parse("<Alice@example.org>").unwrap(),
        mail_args: vec![],
        recipients: vec![
            Address::parse("<b@example.net>").unwrap(),
            Address::parse("<c@example.net>").unwrap(),
        ],
    });
    i.message = Some(Arc::new(Message {
        headers: vec![
            Header::new("Subject", "hi\n there"),
            Header::new("From", "alice@example.org"),
        ],
        size: body.len() as u64,
        body: body.into(),
        body_truncated: false,
    }));
    i.queue_id = Some("4AbC".into());
    i
}

#[test]
fn stdout_line_parsing() {
    assert_eq!(first_line(b""), (None, None));
    assert_eq!(
        first_line(b"\n  \n hello \nworld"),
        (None, Some("hello".into()))
    );
    assert_eq!(
        first_line(b"score=2.5 looks like spam\n"),
        (Some(2.5), Some("looks like spam".into()))
    );
    assert_eq!(first_line(b"score=-1"), (Some(-1.0), None));
    assert_eq!(first_line(b"score=x y"), (None, Some("score=x y".into())));
    let long = "x".repeat(500);
    assert_eq!(
        first_line(long.as_bytes()).1.unwrap().chars().count(),
        REASON_LIMIT
    );
    assert_eq!(first_line(b"a\tb\r\n"), (None, Some("a b".into())));
}

#[tokio::test]
async fn exit_codes_map_to_statuses() {
    let dir = tempfile::tempdir().unwrap();
    // $1 is the exit code, $2 what to print.
    let prog = script(
        dir.path(),
        "exit.sh",
        "[ -n \"$2\" ] && echo \"$2\"\nexit \"$1\"",
    );
    let cases: &[(&str, &str, CheckResult)] = &[
        ("0", "", CheckResult::pass()),
        ("1", "spam found", CheckResult::fail("spam found")),
        (
            "1",
            "",
            CheckResult::fail("program \"exit.sh\" returned fail"),
        ),
        (
            "2",
            "score=3.5 probably spam",
            CheckResult {
                score: Some(3.5),
                ..CheckResult::with_reason(Status::Softfail, "probably spam")
            },
        ),
        ("3", "meh", CheckResult::with_reason(Status::Neutral, "meh")),
        ("4", "n/a", CheckResult::with_reason(Status::None, "n/a")),
        ("75", "db down", CheckResult::temperror("db down")),
    ];
    for (code, out, want) in cases {
        let src = config(
            &prog,
            &format!("args = [{code:?}, {out:?}]\nstage = \"mail\""),
        );
        let check = build_ok(CommandCheck::build, &src);
        assert_eq!(check.inputs(), Stage::Mail);
        assert!(!check.needs_body());
        let got = run(&check, input(Stage::Mail)).await;
        assert_eq!(&got, want, "exit {code}");
    }
    let check = build_ok(
        CommandCheck::build,
        &config(&prog, "args = [\"9\", \"oops\"]"),
    );
    let got = run(&check, eom_input(vec![])).await;
    assert_eq!(got.status, Status::Permerror);
    let reason = got.reason.unwrap();
    assert!(reason.contains("exited with status 9: oops"), "{reason}");
}

#[tokio::test]
async fn killed_by_signal_is_permerror() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(dir.path(), "kill.sh", "kill -9 $$");
    let check = build_ok(CommandCheck::build, &config(&prog, ""));
    let got = run(&check, eom_input(vec![])).await;
    assert_eq!(got.status, Status::Permerror);
    assert!(got.reason.unwrap().contains("signal 9"));
}

#[tokio::test]
async fn environment_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let prog = script(
        dir.path(),
        "record.sh",
        &format!(
            "cat > {0:?}/stdin\nenv > {0:?}/env",
            out.display().to_string()
        ),
    );
    std::fs::create_dir(&out).unwrap();
    let check = build_ok(
        CommandCheck::build,
        &config(&prog, "env = { LANG = \"C\", PATH = \"/bin:/usr/bin\" }"),
    );
    assert!(check.needs_body());
    let got = run(&check, eom_input(b"line 1\r\nline 2\r\n".to_vec())).await;
    assert_eq!(got, CheckResult::pass());

    let stdin = std::fs::read(out.join("stdin")).unwrap();
    assert_eq!(
        stdin,
        b"Subject: hi\r\n there\r\nFrom: alice@example.org\r\n\r\nline 1\r\nline 2\r\n"
    );
    let env = std::fs::read_to_string(out.join("env")).unwrap();
    let mut vars: Vec<&str> = env.lines().filter(|l| !l.starts_with("PWD=")).collect();
    vars.sort();
    // `sh` may add a few of its own (SHLVL, _); ignore those.
    vars.retain(|l| !l.starts_with("SHLVL=") && !l.starts_with("_="));
    assert_eq!(
        vars,
        [
            "DISPATCH_AUTH_USER=alice",
            "DISPATCH_CLIENT_IP=192.0.2.7",
            "DISPATCH_HELO=mx.example.net",
            "DISPATCH_QUEUE_ID=4AbC",
            "DISPATCH_RECIPIENTS=b@example.net c@example.net",
            "DISPATCH_SENDER=Alice@example.org",
            "DISPATCH_STAGE=eom",
            "LANG=C",
            "PATH=/bin:/usr/bin",
        ]
    );
}

#[tokio::test]
async fn null_sender_is_empty_and_default_path() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "sender.sh",
        "echo \"[$DISPATCH_SENDER] ${DISPATCH_CLIENT_NAME-unset} $PATH\"",
    );
    let check = build_ok(CommandCheck::build, &config(&prog, "stage = \"mail\""));
    let mut i = eom_input(vec![]);
    i.stage = Stage::Mail;
    i.message = None;
    if let Some(env) = &mut i.envelope {
        env.sender = Address::Null;
    }
    let got = run(&check, i).await;
    assert_eq!(
        got.reason.as_deref(),
        Some(&*format!("[] unset {DEFAULT_PATH}"))
    );
}

#[tokio::test]
async fn program_that_ignores_stdin_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(dir.path(), "deaf.sh", "echo not listening\nexit 1");
    let check = build_ok(CommandCheck::build, &config(&prog, ""));
    // Far more than a pipe buffer holds.
    let body = vec![b'x'; 8 << 20];
    let got = tokio::time::timeout(Duration::from_secs(20), run(&check, eom_input(body)))
        .await
        .expect("check hung on a program that does not read stdin");
    assert_eq!(got, CheckResult::fail("not listening"));
}

#[tokio::test]
async fn chatty_program_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB on stdout and stderr before reading any input: feeding stdin
    // first and reading afterwards would deadlock against this.
    let prog = script(
        dir.path(),
        "chatty.sh",
        "echo first\nhead -c 1048576 /dev/zero\nhead -c 1048576 /dev/zero >&2\ncat > /dev/null\nexit 3",
    );
    let check = build_ok(CommandCheck::build, &config(&prog, ""));
    let body = vec![b'x'; 4 << 20];
    let got = tokio::time::timeout(Duration::from_secs(20), run(&check, eom_input(body)))
        .await
        .expect("check blocked on a full pipe");
    assert_eq!(got, CheckResult::with_reason(Status::Neutral, "first"));
}

fn gone(pid: &str) -> bool {
    // A killed child that has not been reaped yet is a zombie: not running.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Run `script_body` (which writes the PID to watch into `pidfile`) as
/// a check, drop the check's future once the PID is known, and require
/// that process to be gone within 5 s.
async fn assert_dropping_kills(script_body: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let body = script_body.replace("PIDFILE", &format!("{:?}", pidfile.display().to_string()));
    let prog = script(dir.path(), "watched.sh", &body);
    let check = build_ok(CommandCheck::build, &config(&prog, "stage = \"mail\""));
    let mut fut = check.clone().run(Arc::new(input(Stage::Mail)));
    // Drive the check until the script has written the PID, so the kill
    // below is not a race against a slow start on a loaded machine.
    let pid = tokio::select! {
        r = &mut fut => panic!("{what} finished: {r:?}"),
        pid = async {
            loop {
                if let Ok(pid) = std::fs::read_to_string(&pidfile)
                    && pid.ends_with('\n')
                {
                    return pid.trim().to_string();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } => pid,
    };
    assert!(!gone(&pid), "{what} should be alive");
    drop(fut);
    let mut waited = Duration::ZERO;
    while !gone(&pid) {
        assert!(
            waited < Duration::from_secs(5),
            "{what} {pid} outlived its check"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
}

#[tokio::test]
async fn dropping_the_future_kills_the_programs_children_too() {
    // The child is not exec'd: only a process-group kill reaches it.
    assert_dropping_kills("sleep 30 &\necho $! > PIDFILE\nwait", "grandchild").await;
}

#[tokio::test]
async fn dropping_the_future_kills_the_program() {
    assert_dropping_kills("echo $$ > PIDFILE\nexec sleep 30", "program").await;
}

#[test]
fn program_must_exist_and_be_executable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sh");
    let e = build_err(CommandCheck::build, &config(&missing, ""));
    assert!(e.contains(&format!("\"{}\"", missing.display())), "{e}");
    assert!(e.contains("does not exist"), "{e}");
    let plain = dir.path().join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = build_err(CommandCheck::build, &config(&plain, ""));
    assert!(e.contains("not executable"), "{e}");
    let e = build_err(CommandCheck::build, &config(dir.path(), ""));
    assert!(e.contains("not a regular file"), "{e}");
    // Relative paths resolve against the configuration's directory.
    let e = build_err(CommandCheck::build, "program = \"bin/filter\"");
    assert!(e.contains("\"/nonexistent-config-dir/bin/filter\""), "{e}");
    let e = build_err(CommandCheck::build, "");
    assert!(e.contains("needs `program`"), "{e}");
}

#[test]
fn option_errors() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(dir.path(), "ok.sh", "exit 0");
    let e = build_err(CommandCheck::build, &config(&prog, "stage = \"rcpt\""));
    assert!(
        e.contains("\"mail\" or \"eom\"") && e.contains("\"rcpt\""),
        "{e}"
    );
    let e = build_err(CommandCheck::build, &config(&prog, "env = { N = 1 }"));
    assert!(
        e.contains("`env.N`") && e.contains("must be a string"),
        "{e}"
    );
    let e = build_err(
        CommandCheck::build,
        &config(&prog, "env = { N = \"a\\u0000b\" }"),
    );
    assert!(e.contains("`env.N`") && e.contains("NUL"), "{e}");
    let e = build_err(CommandCheck::build, &config(&prog, "stage = 1"));
    assert!(e.contains("must be \"mail\" or \"eom\", found 1"), "{e}");
    let e = build_err(
        CommandCheck::build,
        &config(&prog, "env = { DISPATCH_SENDER = \"x\" }"),
    );
    assert!(e.contains("DISPATCH_SENDER"), "{e}");
    let e = build_err(CommandCheck::build, &config(&prog, "env = \"A=1\""));
    assert!(e.contains("`env`"), "{e}");
    let e = build_err(CommandCheck::build, &config(&prog, "args = [1]"));
    assert!(
        e.contains("`args[0]` in check \"t\" must be a string, found 1"),
        "{e}"
    );
}

#[tokio::test]
async fn vanished_program_is_permerror() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(dir.path(), "gone.sh", "exit 0");
    let check = build_ok(CommandCheck::build, &config(&prog, "stage = \"mail\""));
    std::fs::remove_file(&prog).unwrap();
    let got = run(&check, input(Stage::Mail)).await;
    assert_eq!(got.status, Status::Permerror);
    assert!(got.reason.unwrap().contains("gone.sh"));
}
