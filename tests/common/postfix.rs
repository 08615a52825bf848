//! A throwaway Postfix instance behind the real daemon, for end-to-end tests.
//!
//! Everything lives in one temporary directory: Postfix's `config_directory`
//! (main.cf and master.cf written here), `queue_directory`,
//! `data_directory` and its `maillog_file`. Postfix listens on 127.0.0.1
//! only, talks to the milter on 127.0.0.1 and relays every message to
//! [`Sink`], a tiny SMTP server on 127.0.0.1 that records what it receives.
//! Nothing leaves the loopback interface and Postfix makes no DNS lookups.
//!
//! [`Postfix`] stops the instance when dropped (also when a test panics):
//! `postfix stop`, then SIGKILL by process id for anything of this instance
//! still running (the master from `master.pid`, and every process whose
//! environment names this instance's config directory).
//!
//! On a failure (or with `POSTFIX_E2E_MAILLOG=1`) the instance's maillog is
//! printed when it stops.
//!
//! Tests call [`installed`] first: without Postfix and swaks it prints one
//! line and the test returns, unless `CI` is set, where it fails. Postfix must
//! be started as root. Instances run one at a time ([`serial`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::wait;

pub const POSTFIX: &str = "/usr/sbin/postfix";
pub const SENDMAIL: &str = "/usr/sbin/sendmail";
pub const POSTQUEUE: &str = "/usr/sbin/postqueue";
pub const POSTCAT: &str = "/usr/sbin/postcat";
pub const POSTSUPER: &str = "/usr/sbin/postsuper";
pub const SWAKS: &str = "/usr/bin/swaks";

/// How long one SMTP reply, one command or one wait may take at most.
pub const STEP: Duration = Duration::from_secs(60);

/// What the Postfix tests' `#[ignore]` says they need.
pub const NEEDS: &str = "needs postfix, swaks and root: apt-get install postfix swaks";

/// Fails the test unless Postfix and swaks are installed and we are root
/// (Postfix's master must start as root); see tests/common/tools.rs.
pub fn require() {
    let missing: Vec<&str> = [POSTFIX, SENDMAIL, POSTQUEUE, POSTCAT, POSTSUPER, SWAKS]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    super::tools::require(
        missing.is_empty(),
        &format!("{NEEDS} ({} missing)", missing.join(", ")),
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    super::tools::require(root, &format!("{NEEDS} (not running as root)"));
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for a whole test: one Postfix instance at a time. A tokio mutex, so
/// a failed test does not poison it for the others.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub use super::wait::bounded;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Run a command with a time limit; the child is killed if it overruns.
pub async fn run(cmd: &mut tokio::process::Command, stdin: Option<&[u8]>) -> Output {
    let shown = format!("{:?}", cmd.as_std());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(input)
            .await
            .unwrap_or_else(|e| panic!("{shown}: writing stdin: {e}"));
        drop(pipe);
    }
    bounded(STEP, &shown, child.wait_with_output())
        .await
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ------------------------------------------------------------------ sink ---

/// One message as the sink received it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The MAIL FROM address, without angle brackets ("" for `<>`).
    pub mail_from: String,
    /// Every RCPT TO address, without angle brackets, in order.
    pub rcpt_to: Vec<String>,
    /// The ESMTP parameters after each of them ("" for none), in order.
    pub rcpt_params: Vec<String>,
    /// Headers and body, CRLF line ends, dot-stuffing removed.
    pub data: String,
}

impl Delivery {
    /// The header section (before the first empty line).
    pub fn head(&self) -> &str {
        self.data.split("\r\n\r\n").next().unwrap_or("")
    }

    /// Every value of header `name` (case-insensitive), unfolded and trimmed.
    pub fn header(&self, name: &str) -> Vec<String> {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in self.head().split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((n, v)) = line.split_once(':') {
                fields.push((n.to_string(), v.trim().to_string()));
            }
        }
        fields
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    pub fn subject(&self) -> String {
        self.header("Subject")
            .into_iter()
            .next()
            .unwrap_or_default()
    }
}

/// An SMTP server on 127.0.0.1:0 that accepts everything and records it.
pub struct Sink {
    pub addr: SocketAddr,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    task: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address inside `MAIL FROM:<a> ...` or `RCPT TO:<a> ...`.
fn path_of(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_string(),
        _ => arg.split_whitespace().next().unwrap_or("").to_string(),
    }
}

/// What follows the path in `RCPT TO:<a> ...`, trimmed.
fn params_of(arg: &str) -> String {
    arg.find('>')
        .map_or("", |end| arg[end + 1..].trim())
        .to_string()
}

async fn sink_session(stream: TcpStream, deliveries: Arc<Mutex<Vec<Delivery>>>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    // Not the name Postfix uses, or it would see its mail loop back.
    if write.write_all(b"220 sink.test ESMTP\r\n").await.is_err() {
        return;
    }
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut params: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.test\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(path_of(&line["MAIL FROM:".len()..]));
            rcpts.clear();
            params.clear();
            b"250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                b"503 5.5.1 MAIL first\r\n"
            } else {
                let arg = &line["RCPT TO:".len()..];
                rcpts.push(path_of(arg));
                params.push(params_of(arg));
                b"250 2.1.5 Ok\r\n"
            }
        } else if upper == "DATA" {
            if from.is_none() || rcpts.is_empty() {
                b"503 5.5.1 RCPT first\r\n"
            } else {
                if write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut data = Vec::new();
                loop {
                    buf.clear();
                    match read.read_until(b'\n', &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if buf == b".\r\n" || buf == b".\n" {
                        break;
                    }
                    let unstuffed = if buf.starts_with(b".") {
                        &buf[1..]
                    } else {
                        &buf[..]
                    };
                    data.extend_from_slice(unstuffed);
                }
                deliveries.lock().unwrap().push(Delivery {
                    mail_from: from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpts),
                    rcpt_params: std::mem::take(&mut params),
                    data: String::from_utf8_lossy(&data).into_owned(),
                });
                b"250 2.0.0 Ok: sunk\r\n"
            }
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            b"250 2.0.0 Ok\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 Ok\r\n"
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            b"502 5.5.2 Not implemented\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

impl Sink {
    pub async fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("sink bind");
        let addr = listener.local_addr().expect("sink address");
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let d = deliveries.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(sink_session(stream, d.clone()));
            }
        });
        Sink {
            addr,
            deliveries,
            task,
        }
    }

    /// Everything received so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// The deliveries whose Subject is `subject`.
    pub fn with_subject(&self, subject: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.subject() == subject)
            .collect()
    }

    /// Wait until `done` holds for what was received; panic after `limit`.
    pub async fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let mut all = Vec::new();
        let seen = wait::within(limit, || {
            all = self.deliveries();
            done(&all)
        })
        .await;
        assert!(
            seen,
            "sink: {what} not seen within {limit:?}; received:\n{all:#?}"
        );
        all
    }

    /// Wait for the recipients of the message with this Subject to add up
    /// to `rcpts` (Postfix may split one message over several deliveries),
    /// and return those deliveries.
    pub async fn wait_subject(&self, subject: &str, rcpts: usize) -> Vec<Delivery> {
        self.wait_until(
            STEP,
            &format!("{rcpts} recipient(s) of {subject:?}"),
            |all| {
                all.iter()
                    .filter(|d| d.subject() == subject)
                    .map(|d| d.rcpt_to.len())
                    .sum::<usize>()
                    >= rcpts
            },
        )
        .await;
        self.with_subject(subject)
    }
}

// ------------------------------------------------------------ SMTP client ---

/// One SMTP reply: the code and every line as received (code included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// All lines, joined with a newline.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

/// What Postfix answered to one SMTP transaction. A stage is `None` when
/// the client never got there (an earlier refusal ended the transaction).
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    pub greeting: Option<Reply>,
    pub ehlo: Option<Reply>,
    pub mail: Option<Reply>,
    pub rcpts: Vec<Reply>,
    /// The reply to DATA (354 when the message may follow).
    pub data: Option<Reply>,
    /// The reply after the message (250 ... queued as ID).
    pub end: Option<Reply>,
    /// The whole dialogue, for failure messages.
    pub log: String,
}

impl Transcript {
    /// Whether Postfix took the message (250 after the final dot).
    pub fn queued(&self) -> bool {
        self.end.as_ref().is_some_and(|r| r.code == 250)
    }

    /// The queue id from "250 2.0.0 Ok: queued as ID".
    pub fn queue_id(&self) -> Option<String> {
        let end = self.end.as_ref()?;
        let text = end.text();
        let (_, id) = text.split_once("queued as ")?;
        Some(id.split_whitespace().next()?.to_string())
    }

    /// The first refusal (4xx/5xx) Postfix gave, at whatever stage.
    pub fn refusal(&self) -> Option<&Reply> {
        self.greeting
            .iter()
            .chain(self.ehlo.iter())
            .chain(self.mail.iter())
            .chain(self.rcpts.iter())
            .chain(self.data.iter())
            .chain(self.end.iter())
            .find(|r| r.code >= 400)
    }
}

struct Client {
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
    log: String,
}

impl Client {
    async fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = bounded(STEP, "SMTP reply", self.read.read_line(&mut line))
                .await
                .unwrap_or_else(|e| panic!("reading a reply: {e}\n{}", self.log));
            if n == 0 {
                panic!("the server closed the connection\n{}", self.log);
            }
            let line = line.trim_end().to_string();
            self.log.push_str(&format!("<- {line}\n"));
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        let code = lines[0]
            .get(..3)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an SMTP reply: {lines:?}\n{}", self.log));
        Reply { code, lines }
    }

    async fn send(&mut self, line: &str) {
        self.log.push_str(&format!("-> {line}\n"));
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("sending {line:?}: {e}\n{}", self.log));
    }

    async fn command(&mut self, line: &str) -> Reply {
        self.send(line).await;
        self.reply().await
    }
}

/// Send one message over SMTP (EHLO, MAIL, RCPT..., DATA) and record every
/// reply. `message` is the message text with LF or CRLF line ends. A
/// recipient may carry ESMTP parameters after a space
/// (`"bob@example.org NOTIFY=NEVER"`).
pub async fn smtp_send(addr: SocketAddr, from: &str, rcpts: &[&str], message: &str) -> Transcript {
    let stream = bounded(STEP, "SMTP connect", TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).ok();
    let (read, write) = stream.into_split();
    let mut c = Client {
        read: BufReader::new(read),
        write,
        log: String::new(),
    };
    let mut t = Transcript::default();
    let greeting = c.reply().await;
    let go_on = greeting.code == 220;
    t.greeting = Some(greeting);
    if go_on {
        smtp_transaction(&mut c, &mut t, from, rcpts, message).await;
    }
    c.send("QUIT").await;
    // The 221 may never come if the server already hung up.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut line = String::new();
        c.read.read_line(&mut line).await
    })
    .await;
    t.log = c.log;
    t
}

async fn smtp_transaction(
    c: &mut Client,
    t: &mut Transcript,
    from: &str,
    rcpts: &[&str],
    message: &str,
) {
    let ehlo = c.command("EHLO client.example.test").await;
    let ok = ehlo.code == 250;
    t.ehlo = Some(ehlo);
    if !ok {
        return;
    }
    let mail = c.command(&format!("MAIL FROM:<{from}>")).await;
    let ok = mail.code == 250;
    t.mail = Some(mail);
    if !ok {
        return;
    }
    for r in rcpts {
        // "address PARAMETERS": the parameters go after the path.
        let reply = match r.split_once(' ') {
            Some((address, params)) => c.command(&format!("RCPT TO:<{address}> {params}")).await,
            None => c.command(&format!("RCPT TO:<{r}>")).await,
        };
        t.rcpts.push(reply);
    }
    if !t.rcpts.iter().any(|r| r.code == 250) {
        return;
    }
    let data = c.command("DATA").await;
    let ok = data.code == 354;
    t.data = Some(data);
    if !ok {
        return;
    }
    let mut wire = String::new();
    for line in message.lines() {
        if line.starts_with('.') {
            wire.push('.');
        }
        wire.push_str(line);
        wire.push_str("\r\n");
    }
    wire.push_str(".\r\n");
    c.log
        .push_str(&format!("-> ({} bytes of message)\n", wire.len()));
    c.write
        .write_all(wire.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("sending the message: {e}\n{}", c.log));
    t.end = Some(c.reply().await);
}

static MESSAGE_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A small message with a unique Message-ID; `subject` identifies it at the
/// sink.
pub fn message(from: &str, to: &str, subject: &str, body: &str) -> String {
    let n = MESSAGE_SEQ.fetch_add(1, Ordering::SeqCst);
    format!(
        "From: <{from}>\nTo: <{to}>\nSubject: {subject}\nDate: Sun, 29 Nov 2026 12:00:00 +0000\nMessage-ID: <e2e.{}.{n}@client.example.test>\n\n{body}\n",
        std::process::id()
    )
}

/// Run swaks against `addr` and return its transcript (stdout and stderr)
/// and its exit status.
pub async fn swaks(addr: SocketAddr, args: &[&str]) -> (String, Option<i32>) {
    let out = run(
        tokio::process::Command::new(SWAKS)
            .arg("--server")
            .arg(addr.ip().to_string())
            .arg("--port")
            .arg(addr.port().to_string())
            .args(["--helo", "client.example.test", "--timeout", "60"])
            .args(args),
        None,
    )
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.code())
}

// --------------------------------------------------------------- Postfix ---

/// Where Postfix talks to the milter and relays to.
#[derive(Clone, Debug)]
pub struct Wiring {
    /// `smtpd_milters` (both smtpd services).
    pub smtpd_milter: SocketAddr,
    /// `non_smtpd_milters` (sendmail(1) through pickup).
    pub non_smtpd_milter: SocketAddr,
    /// `relayhost`: the sink.
    pub relay: SocketAddr,
}

/// A running Postfix instance in a temporary directory.
pub struct Postfix {
    pub dir: PathBuf,
    pub config_dir: PathBuf,
    pub queue_dir: PathBuf,
    /// The MX smtpd (`milter_macro_daemon_name` left at its default,
    /// `$myhostname`).
    pub mx: SocketAddr,
    /// The submission smtpd (`-o milter_macro_daemon_name=submission`).
    pub submission: SocketAddr,
    master_pid: Option<i32>,
    stopped: bool,
    // Last, so the directory goes after the processes are stopped.
    _tmp: tempfile::TempDir,
}

fn main_cf(dir: &Path, w: &Wiring) -> String {
    let d = dir.display();
    format!(
        "# Written by tests/common/postfix.rs: a throwaway instance, loopback only.
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.test
mydomain = example.test
myorigin = $mydomain
# Nothing is local: every address is relayed to the sink.
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
local_transport = error:5.1.1 no local delivery in this test instance
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay}
default_transport = smtp
relay_transport = smtp
transport_maps =
sender_dependent_relayhost_maps =
smtp_fallback_relay =
# No DNS: the sink is an IP literal, clients are not looked up.
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
smtp_helo_name = mx.example.test
smtp_connect_timeout = 10s
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_milters = inet:{milter}
non_smtpd_milters = inet:{local}
milter_default_action = tempfail
milter_protocol = 6
milter_connect_timeout = 10s
milter_command_timeout = 30s
milter_content_timeout = 60s
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
# Deferred mail comes back quickly.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
biff = no
append_dot_mydomain = no
",
        relay = w.relay.port(),
        milter = w.smtpd_milter,
        local = w.non_smtpd_milter,
    )
}

/// `base` without the settings that `extra` makes, then `extra`. Not simply
/// appended: every Postfix process would log "overriding earlier entry" at
/// start, and postlogd, logging that about itself into its own socket
/// before it reads it, deadlocks once the socket's queue is full
/// (net.unix.max_dgram_qlen is 10 on some machines).
fn with_overrides(base: &str, extra: &str) -> String {
    let name = |line: &str| -> Option<String> {
        let (n, _) = line.split_once('=')?;
        let n = n.trim();
        (!n.is_empty() && !n.starts_with('#') && !line.starts_with([' ', '\t']))
            .then(|| n.to_string())
    };
    let replaced: Vec<String> = extra.lines().filter_map(name).collect();
    let mut out: String = base
        .lines()
        .filter(|l| name(l).is_none_or(|n| !replaced.contains(&n)))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(extra);
    out
}

fn master_cf(mx: u16, submission: u16) -> String {
    format!(
        "# Written by tests/common/postfix.rs. No chroot anywhere.
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{mx} inet n - n - - smtpd
127.0.0.1:{submission} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o milter_macro_daemon_name=submission
  -o smtpd_sasl_auth_enable=no
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
    )
}

/// A command that runs `program` (arguments to be added) in a mount
/// namespace of its own, in which `resolv_conf` is bind-mounted over
/// /etc/resolv.conf: for programs whose DNS lookups go through the C
/// library's stub resolver and cannot be given a name server otherwise.
/// The rest of the file system is shared; the namespace goes when its last
/// process exits (a daemon that forks keeps it). `unshare` does not fork,
/// so the command's process id is the program's. Needs root.
pub fn with_resolv_conf(
    resolv_conf: &Path,
    program: impl AsRef<std::ffi::OsStr>,
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--"])
        .args([
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#,
        ])
        .arg(resolv_conf)
        .arg(program);
    c
}

fn user_id(name: &str) -> (u32, u32) {
    let c = std::ffi::CString::new(name).expect("user name");
    // SAFETY: getpwnam returns a pointer to static storage or null; it is
    // read at once, before any other call could overwrite it.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    assert!(!pw.is_null(), "the system user {name:?} does not exist");
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// Processes whose environment says `MAIL_CONFIG=<config_dir>`: the master
/// and every daemon it started for this instance, and nothing else.
pub fn instance_processes(config_dir: &Path) -> Vec<i32> {
    let needle = format!("MAIL_CONFIG={}", config_dir.display());
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

fn alive(pid: i32) -> bool {
    // A zombie has exited; only its parent (init here) can reap it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

impl Postfix {
    /// Write main.cf and master.cf, run `postfix check`, start the instance
    /// and wait until it listens. Retries with other ports if one was taken
    /// in the meantime.
    pub async fn start(wiring: &Wiring) -> Postfix {
        Postfix::start_with(wiring, "").await
    }

    /// Like [`Postfix::start`], with the `name = value` lines of `extra` in
    /// main.cf, replacing the harness's own lines of those names (the
    /// benchmark turns the milters off this way).
    pub async fn start_with(wiring: &Wiring, extra: &str) -> Postfix {
        Postfix::start_in(Path::new("/tmp"), wiring, extra).await
    }

    /// Like [`Postfix::start_with`], with the instance's directory (config
    /// and queue) under `base` instead of /tmp: the benchmark puts it on a
    /// tmpfs, so that the file system's own costs do not blur the figures.
    pub async fn start_in(base: &Path, wiring: &Wiring, extra: &str) -> Postfix {
        Postfix::start_resolving(base, wiring, extra, None).await
    }

    /// Like [`Postfix::start_in`]; with `resolv_conf`, the instance runs in
    /// a mount namespace of its own in which that file is
    /// /etc/resolv.conf ([`with_resolv_conf`]), so that the lookups Postfix
    /// itself makes (`reject_rbl_client`) go to the name server it names,
    /// a loopback DNS server of the test, and nowhere else.
    pub async fn start_resolving(
        base: &Path,
        wiring: &Wiring,
        extra: &str,
        resolv_conf: Option<&Path>,
    ) -> Postfix {
        let mut last = String::new();
        for _ in 0..3 {
            match Postfix::try_start(base, wiring, extra, resolv_conf).await {
                Ok(p) => return p,
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("Postfix could not bind its ports:\n{last}");
    }

    async fn try_start(
        base: &Path,
        wiring: &Wiring,
        extra: &str,
        resolv_conf: Option<&Path>,
    ) -> Result<Postfix, String> {
        let tmp = tempfile::Builder::new()
            .prefix("pfx-e2e.")
            // Short: Postfix's UNIX sockets live in the queue directory.
            .tempdir_in(base)
            .unwrap_or_else(|e| panic!("a directory in {}: {e}", base.display()));
        let dir = tmp.path().to_path_buf();
        let config_dir = dir.join("conf");
        let queue_dir = dir.join("queue");
        let data_dir = dir.join("data");
        use std::os::unix::fs::PermissionsExt;
        // Postfix's daemons run as `postfix` and must reach the queue.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for d in [&config_dir, &queue_dir, &data_dir] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let (uid, gid) = user_id("postfix");
        std::os::unix::fs::chown(&data_dir, Some(uid), Some(gid)).expect("chown data_directory");
        let mx = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let submission = SocketAddr::from(([127, 0, 0, 1], free_port()));
        std::fs::write(
            config_dir.join("main.cf"),
            with_overrides(&main_cf(&dir, wiring), extra),
        )
        .expect("main.cf");
        std::fs::write(
            config_dir.join("master.cf"),
            master_cf(mx.port(), submission.port()),
        )
        .expect("master.cf");
        let mut p = Postfix {
            dir,
            config_dir,
            queue_dir,
            mx,
            submission,
            master_pid: None,
            stopped: false,
            _tmp: tmp,
        };

        let check = run(p.postfix_cmd().arg("check"), None).await;
        if !check.status.success() {
            return Err(format!(
                "postfix check failed: {}\nmaillog:\n{}",
                show(&check),
                p.maillog()
            ));
        }
        let mut start_cmd = match resolv_conf {
            None => p.postfix_cmd(),
            Some(conf) => {
                let mut c = with_resolv_conf(conf, POSTFIX);
                c.arg("-c").arg(&p.config_dir);
                c
            }
        };
        let start = run(start_cmd.arg("start"), None).await;
        let pid = std::fs::read_to_string(p.queue_dir.join("pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        p.master_pid = pid;
        if !start.status.success() || pid.is_none_or(|pid| !alive(pid)) {
            // Drop stops whatever did start.
            return Err(format!(
                "postfix start failed: {}\nmaillog:\n{}",
                show(&start),
                p.maillog()
            ));
        }
        // `master -w` returns once the master has bound every listener, so
        // the smtpd ports accept connections now. (Probing them would open
        // SMTP sessions and milter connections of its own.)
        Ok(p)
    }

    fn postfix_cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(POSTFIX);
        c.arg("-c").arg(&self.config_dir);
        c
    }

    /// The instance's log so far.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Wait until the maillog contains `needle`; panic after [`STEP`].
    pub async fn wait_log(&self, needle: &str) -> String {
        let mut log = String::new();
        let logged = wait::within(STEP, || {
            log = self.maillog();
            log.contains(needle)
        })
        .await;
        assert!(
            logged,
            "{needle:?} not logged within {STEP:?}; maillog:\n{log}"
        );
        log
    }

    pub fn master_pid(&self) -> Option<i32> {
        self.master_pid
    }

    /// `postqueue -j`: one JSON object per queued message.
    pub async fn queue(&self) -> Vec<serde_json::Value> {
        let out = run(
            tokio::process::Command::new(POSTQUEUE)
                .arg("-c")
                .arg(&self.config_dir)
                .arg("-j"),
            None,
        )
        .await;
        assert!(out.status.success(), "postqueue -j: {}", show(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("postqueue -j: {e}: {l}")))
            .collect()
    }

    /// Queue ids by queue name ("hold", "deferred", "active", ...).
    pub async fn queue_ids(&self) -> HashMap<String, Vec<String>> {
        let mut by_queue: HashMap<String, Vec<String>> = HashMap::new();
        for m in self.queue().await {
            let q = m["queue_name"].as_str().unwrap_or("?").to_string();
            let id = m["queue_id"].as_str().unwrap_or("?").to_string();
            by_queue.entry(q).or_default().push(id);
        }
        by_queue
    }

    /// Wait until the queue is empty (everything delivered or bounced).
    pub async fn wait_queue_empty(&self) {
        let mut q = Vec::new();
        let drained = wait::within_async(STEP, async || {
            q = self.queue().await;
            q.is_empty()
        })
        .await;
        assert!(
            drained,
            "the queue did not drain within {STEP:?}:\n{q:#?}\nmaillog:\n{}",
            self.maillog()
        );
    }

    /// `postcat -q ID`: the queue file's envelope, headers and body.
    pub async fn postcat(&self, queue_id: &str) -> String {
        let out = run(
            tokio::process::Command::new(POSTCAT)
                .arg("-c")
                .arg(&self.config_dir)
                .arg("-q")
                .arg(queue_id),
            None,
        )
        .await;
        assert!(
            out.status.success(),
            "postcat -q {queue_id}: {}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sendmail -C <config_dir> -f from rcpts... < message`.
    pub async fn sendmail(&self, from: &str, rcpts: &[&str], message: &str) -> Output {
        run(
            tokio::process::Command::new(SENDMAIL)
                .arg("-C")
                .arg(&self.config_dir)
                .arg("-f")
                .arg(from)
                .arg("--")
                .args(rcpts),
            Some(message.as_bytes()),
        )
        .await
    }

    /// Stop the instance: `postfix stop`, then SIGKILL by pid for whatever
    /// of this instance still runs. Also called on drop.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // `postfix stop` waits up to 5 s for the master, then kills it.
        let stop = std::process::Command::new(POSTFIX)
            .arg("-c")
            .arg(&self.config_dir)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = stop {
            let exited = wait::within_blocking(Duration::from_secs(15), || {
                !matches!(child.try_wait(), Ok(None))
            });
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Whatever is left: the master (if its pid is still this instance's)
        // and its daemons. Each is identified by its environment.
        let start = Instant::now();
        loop {
            let mut left: Vec<i32> = instance_processes(&self.config_dir)
                .into_iter()
                .filter(|p| alive(*p))
                .collect();
            if let Some(m) = self.master_pid
                && alive(m)
                && !left.contains(&m)
                && instance_processes(&self.config_dir).contains(&m)
            {
                left.push(m);
            }
            if left.is_empty() {
                break;
            }
            if start.elapsed() > Duration::from_secs(1) {
                for pid in &left {
                    // SAFETY: kill(2) on a pid that belongs to this instance.
                    unsafe {
                        libc::kill(*pid, libc::SIGKILL);
                    }
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("postfix e2e: processes {left:?} survived SIGKILL");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("POSTFIX_E2E_MAILLOG").is_some() {
            // Not eprintln!: it panics when stderr is a closed pipe (output
            // piped into `head`), and the instance would be left running.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "--- maillog of the Postfix instance in {} ---\n{}",
                self.dir.display(),
                self.maillog()
            );
        }
        self.stop();
    }
}
