//! The `command` check: runs an external program (no shell) with facts about
//! the session in its environment and, at end of message, the message on its
//! stdin; the exit code is the result and the first line of stdout the reason.
//!
//! Options: `program` (required; an executable, relative paths resolve
//! against the configuration file's directory), `args`
//! (optional list of arguments), `stage` ("mail" or "eom", default "eom"; at
//! "mail" stdin is empty), `env` (optional table of extra environment
//! variables; `PATH` may be overridden, `DISPATCH_*` may not).
//!
//! Environment: PATH=/usr/local/bin:/usr/bin:/bin plus, when known,
//! DISPATCH_CLIENT_IP, DISPATCH_CLIENT_NAME, DISPATCH_HELO,
//! DISPATCH_DAEMON_NAME, DISPATCH_AUTH_USER, DISPATCH_TLS_VERSION,
//! DISPATCH_SENDER (no brackets, empty for `<>`), DISPATCH_RECIPIENTS (space
//! separated), DISPATCH_QUEUE_ID and DISPATCH_STAGE.
//!
//! Exit codes: 0 pass, 1 fail, 2 softfail, 3 neutral, 4 none, 75 temperror,
//! anything else or a signal permerror. A first stdout line `score=N text`
//! sets the score N and the reason "text".

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::config::options::OneOrMany;
use crate::message::Message;
use crate::stage::Stage;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How much of stdout is kept; the rest is read and dropped so that a chatty
/// program never blocks on a full pipe.
const STDOUT_LIMIT: usize = 64 * 1024;
/// How much of stderr is kept for the debug log.
const STDERR_LIMIT: usize = 4 * 1024;
/// Longest reason taken from stdout, in characters.
const REASON_LIMIT: usize = 200;
/// sysexits.h EX_TEMPFAIL.
const EX_TEMPFAIL: i32 = 75;

/// The `command` check: the external program to run, its arguments and
/// environment.
pub struct CommandCheck {
    program: PathBuf,
    args: Vec<String>,
    stage: Stage,
    env: Vec<(String, String)>,
}

/// `[checks.NAME]` with `kind = "command"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandOptions {
    program: String,
    args: Option<OneOrMany>,
    #[serde(default)]
    stage: CommandStage,
    #[serde(default)]
    env: Env,
}

/// When the program runs: at MAIL (no message on stdin) or at end of message.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case", expecting = "\"mail\" or \"eom\"")]
enum CommandStage {
    Mail,
    #[default]
    Eom,
}

/// `env = { NAME = "value" }`: extra variables for the program, checked
/// after reading (names, `DISPATCH_*`, NUL characters).
#[derive(Default)]
struct Env(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Env {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Env;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of strings such as { LANG = \"C.UTF-8\" }")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Env, A::Error> {
                let mut vars = Vec::new();
                while let Some((name, EnvValue(value))) = map.next_entry::<String, EnvValue>()? {
                    vars.push((name, value));
                }
                Ok(Env(vars))
            }
        }
        d.deserialize_any(V)
    }
}

/// The value of one `env` variable: a string; a number must be quoted, so
/// that what the program sees is exactly what was written.
struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (quote numbers and true or false)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The variables of `env` a program may be given; `None` after reporting
/// every one that it may not.
fn check_env(ctx: &mut CheckBuildContext<'_, '_, '_>, env: Env) -> Option<Vec<(String, String)>> {
    let what = ctx.options.what().to_string();
    let span = ctx
        .options
        .span_of("env")
        .unwrap_or_else(|| ctx.options.span());
    let mut ok = true;
    for (name, value) in &env.0 {
        let problem = if name.is_empty() || name.contains(['=', '\0']) {
            format!("`env` in {what} has an invalid variable name {name:?}")
        } else if name.starts_with("DISPATCH_") {
            format!(
                "`env` in {what} may not set \"{name}\": the check sets DISPATCH_* variables itself; use another name"
            )
        } else if value.contains('\0') {
            format!("`env.{name}` in {what} may not contain a NUL character")
        } else {
            continue;
        };
        ctx.options.error(span.clone(), problem);
        ok = false;
    }
    ok.then_some(env.0)
}

/// Why a configured program cannot be run, if it cannot.
fn program_problem(path: &std::path::Path, what: &str) -> Option<String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "`program` in {what} names \"{shown}\", which does not exist; install it or fix the path"
        )),
        Err(e) => Some(format!(
            "`program` in {what} names \"{shown}\", which cannot be used: {e}"
        )),
        Ok(meta) if !meta.is_file() => Some(format!(
            "`program` in {what} names \"{shown}\", which is not a regular file"
        )),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => Some(format!(
            "`program` in {what} names \"{shown}\", which is not executable; chmod +x it"
        )),
        Ok(_) => None,
    }
}

/// Kills a program's whole process group when the check is dropped before
/// the program ended (timeout or cancellation), so a script's children do not
/// outlive it.
struct GroupKill(Option<u32>);

impl GroupKill {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // The process group the child leads (process_group(0) made its
            // pgid its pid). Gone already is fine.
            let group = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl CommandCheck {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let options: CommandOptions = ctx
            .options
            .required("program", "\"/usr/local/libexec/filter\"")
            .parse()?;
        let what = ctx.options.what().to_string();
        // The daemon's working directory is not the config's directory:
        // resolve a relative path now, so it cannot silently mean something
        // else later.
        let program = ctx.base_dir.join(&options.program);
        let mut ok = true;
        if let Some(problem) = program_problem(&program, &what) {
            let span = ctx
                .options
                .span_of("program")
                .unwrap_or_else(|| ctx.options.span());
            ctx.options.error(span, problem);
            ok = false;
        }
        let env = check_env(ctx, options.env);
        let (true, Some(env)) = (ok, env) else {
            return None;
        };
        Some(Arc::new(CommandCheck {
            program,
            args: options.args.map(|a| a.0).unwrap_or_default(),
            stage: match options.stage {
                CommandStage::Mail => Stage::Mail,
                CommandStage::Eom => Stage::Eom,
            },
            env,
        }))
    }

    fn command(&self, input: &CheckInput, stdin: bool) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(dispatch_env(input))
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The engine's timeout drops this future; the child must die with
            // it, and so must anything it started: its own process group lets
            // `GroupKill` reach them all.
            .kill_on_drop(true)
            .process_group(0);
        cmd
    }

    /// Spawn the program. exec(2) fails with ETXTBSY while any process still
    /// holds the file open for writing: an administrator replacing the
    /// script, or a fork elsewhere in this process that inherited a
    /// descriptor and has not exec'd yet. That passes within milliseconds,
    /// so try a few times before calling it an error.
    async fn spawn(
        &self,
        input: &CheckInput,
        stdin: bool,
    ) -> std::io::Result<tokio::process::Child> {
        let mut attempt = 0;
        loop {
            match self.command(input, stdin).spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn execute(&self, input: &CheckInput) -> CheckResult {
        let message = match (self.stage, &input.message) {
            (Stage::Eom, Some(m)) => Some(m.clone()),
            (Stage::Eom, None) => {
                return CheckResult::permerror("the message is not available");
            }
            _ => None,
        };
        let mut child = match self.spawn(input, message.is_some()).await {
            Ok(child) => child,
            Err(e) => {
                return CheckResult::permerror(format!(
                    "cannot run program \"{}\": {e}",
                    self.program.display()
                ));
            }
        };
        let mut group = GroupKill(child.id());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // All three pipes at once: a program that writes before it has read
        // all its input must not deadlock against us.
        let ((), out, err) = tokio::join!(
            async {
                if let (Some(stdin), Some(message)) = (stdin, message) {
                    feed(stdin, &message).await;
                }
            },
            read_capped(stdout, STDOUT_LIMIT),
            read_capped(stderr, STDERR_LIMIT),
        );
        if !err.is_empty() {
            tracing::debug!(
                program = %self.program.display(),
                stderr = %String::from_utf8_lossy(&err),
                "command check wrote to stderr"
            );
        }
        let waited = child.wait().await;
        group.disarm();
        match waited {
            Ok(status) => self.interpret(status, &out),
            Err(e) => CheckResult::temperror(format!(
                "cannot wait for program \"{}\": {e}",
                self.program.display()
            )),
        }
    }

    fn interpret(&self, exit: ExitStatus, stdout: &[u8]) -> CheckResult {
        let (score, reason) = first_line(stdout);
        let status = match exit.code() {
            Some(0) => Status::Pass,
            Some(1) => Status::Fail,
            Some(2) => Status::Softfail,
            Some(3) => Status::Neutral,
            Some(4) => Status::None,
            Some(EX_TEMPFAIL) => Status::Temperror,
            _ => {
                let how = match (exit.code(), exit.signal()) {
                    (Some(code), _) => format!("exited with status {code}"),
                    (None, Some(sig)) => format!("was killed by signal {sig}"),
                    (None, None) => "ended abnormally".to_string(),
                };
                let mut text = format!("program \"{}\" {how}", self.program.display());
                if let Some(r) = reason {
                    text.push_str(": ");
                    text.push_str(&r);
                }
                return CheckResult {
                    score,
                    ..CheckResult::permerror(text)
                };
            }
        };
        // Every non-pass result needs a reason, even from a silent program.
        let reason = reason.or_else(|| {
            (status != Status::Pass).then(|| {
                let name = self
                    .program
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("program \"{name}\" returned {status}")
            })
        });
        CheckResult {
            status,
            reason,
            score,
            ..CheckResult::new(status)
        }
    }
}

/// The DISPATCH_* variables for what is known; unknown facts stay unset so a
/// script can tell "empty" from "not known".
fn dispatch_env(input: &CheckInput) -> Vec<(&'static str, String)> {
    let c = &input.connection;
    let mut vars = Vec::new();
    let mut set = |name: &'static str, value: Option<String>| {
        if let Some(v) = value {
            // A NUL would make the spawn fail; milter macros cannot hold one,
            // but the program must not become unusable if one slipped in.
            vars.push((name, v.replace('\0', "")));
        }
    };
    set("DISPATCH_CLIENT_IP", c.client_ip.map(|ip| ip.to_string()));
    set("DISPATCH_CLIENT_NAME", c.client_name.clone());
    set("DISPATCH_HELO", c.helo.clone());
    set("DISPATCH_DAEMON_NAME", c.daemon_name.clone());
    set(
        "DISPATCH_AUTH_USER",
        c.auth.as_ref().map(|a| a.user.clone()),
    );
    set(
        "DISPATCH_TLS_VERSION",
        c.tls.as_ref().map(|t| t.version.clone()),
    );
    if let Some(env) = &input.envelope {
        set("DISPATCH_SENDER", Some(env.sender.original().to_string()));
        let rcpts: Vec<&str> = env.recipients.iter().map(|r| r.original()).collect();
        set("DISPATCH_RECIPIENTS", Some(rcpts.join(" ")));
    }
    set("DISPATCH_QUEUE_ID", input.queue_id.clone());
    set("DISPATCH_STAGE", Some(input.stage.as_str().to_string()));
    vars
}

/// Write the message as it would appear on the wire: headers with CRLF line
/// ends, a blank line, the body. Write errors are ignored: a program may
/// decide without reading everything and exit, closing the pipe.
async fn feed(mut stdin: ChildStdin, message: &Message) {
    let head = crate::message::header_block(&message.headers);
    if stdin.write_all(&head).await.is_err() {
        return;
    }
    for chunk in message.body.chunks() {
        if stdin.write_all(chunk).await.is_err() {
            return;
        }
    }
    let _ = stdin.shutdown().await;
    // Dropping stdin closes the pipe, which is the program's end of input.
}

/// Read a pipe to its end, keeping at most `limit` bytes.
async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, limit: usize) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

/// The score and reason carried by the first non-empty line of stdout.
fn first_line(stdout: &[u8]) -> (Option<f64>, Option<String>) {
    let text = String::from_utf8_lossy(stdout);
    let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return (None, None);
    };
    let (score, rest) = match line.strip_prefix("score=") {
        Some(after) => {
            let (num, rest) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
            match num.parse::<f64>() {
                Ok(n) if n.is_finite() => (Some(n), rest.trim()),
                _ => (None, line),
            }
        }
        None => (None, line),
    };
    // The reason may reach an SMTP reply: one line, bounded length.
    let reason: String = rest
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(REASON_LIMIT)
        .collect();
    let reason = reason.trim();
    (score, (!reason.is_empty()).then(|| reason.to_string()))
}

impl Check for CommandCheck {
    fn inputs(&self) -> Stage {
        self.stage
    }

    fn needs_body(&self) -> bool {
        self.stage == Stage::Eom
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.execute(&input).await })
    }
}

#[cfg(test)]
mod tests {
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
}
