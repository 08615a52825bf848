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
mod tests;
