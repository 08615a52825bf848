//! The real `dispatch-milter serve` process for the tests that need the
//! process itself (signals, exit codes, stderr): started on a config file,
//! read through its JSON log on stderr, driven with kill(1). Every wait is
//! bounded, and a Drop guard kills the process, also when an assertion fails.

use indymilter_test::{Actions, MacroStage, ProtoOpts, Status, TestConnection};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_dispatch-milter");
/// The longest any single wait may take: a log event, an exit, a reply.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running `serve` process, its stderr read line by line.
pub struct Serve {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stderr line so far, for assertions and failure messages.
    pub seen: Vec<String>,
    pub config: PathBuf,
    /// The directory of a config written by [`Serve::start_with`].
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        // Harmless when the process has already exited and been reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// `serve -c CONFIG` in the config file's directory, stderr piped, for
    /// a test that must change the command (limits set before exec) before
    /// [`Serve::spawn`].
    pub fn command(config: &Path) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("-c")
            .arg(config)
            .current_dir(config.parent().unwrap_or(Path::new(".")))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Start `serve -c CONFIG` in the config file's directory.
    pub fn start(config: &Path) -> Serve {
        Serve::spawn(Serve::command(config), config)
    }

    /// Start a command made by [`Serve::command`] for `config`.
    pub fn spawn(mut command: Command, config: &Path) -> Serve {
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        // Reads until EOF, so the daemon never blocks on a full pipe; ends
        // when the process exits (or the receiver is gone).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Serve {
            child,
            lines,
            seen: Vec::new(),
            config: config.to_path_buf(),
            _dir: None,
        }
    }

    /// Keep `dir` (the config's directory) as long as the process runs.
    pub fn keeping(mut self, dir: tempfile::TempDir) -> Serve {
        self._dir = Some(dir);
        self
    }

    /// Write `config` to a fresh directory and start `serve -c` on it.
    pub fn start_with(config: &str) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("milter-config.toml");
        std::fs::write(&path, config).expect("write config");
        Serve::start(&path).keeping(dir)
    }

    pub fn log(&self) -> String {
        self.seen.join("\n")
    }

    /// The next stderr line, or `None` at EOF or when `deadline` passes.
    pub async fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Ok(None) | Err(_) => None,
        }
    }

    /// Wait for the next JSON event whose message is one of `messages`.
    pub async fn wait_for_any(&mut self, messages: &[&str]) -> Value {
        let deadline = Instant::now() + WAIT;
        while let Some(line) = self.next_line(deadline).await {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if messages.contains(&message_of(&event)) {
                return event;
            }
        }
        panic!(
            "no log event {messages:?} within {WAIT:?}; stderr so far:\n{}",
            self.log()
        );
    }

    pub async fn wait_for(&mut self, message: &str) -> Value {
        self.wait_for_any(&[message]).await
    }

    /// Wait for the next JSON event whose message contains `text`.
    pub async fn wait_for_containing(&mut self, text: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        while let Some(line) = self.next_line(deadline).await {
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && message_of(&event).contains(text)
            {
                return event;
            }
        }
        panic!(
            "no log event containing {text:?} within {WAIT:?}; stderr so far:\n{}",
            self.log()
        );
    }

    /// Wait for "ready" and return the TCP addresses it lists.
    pub async fn ready_all(&mut self) -> Vec<SocketAddr> {
        let ready = self.wait_for("ready").await;
        let addresses = field_str(&ready, "addresses").to_string();
        addresses
            .split(' ')
            .map(|a| {
                a.strip_prefix("inet:")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| {
                        panic!("\"ready\" lists {addresses:?}; log:\n{}", self.log())
                    })
            })
            .collect()
    }

    /// Wait for "ready" and return the one TCP address it lists.
    pub async fn ready(&mut self) -> SocketAddr {
        match self.ready_all().await.as_slice() {
            [one] => *one,
            more => panic!("one listener expected, \"ready\" lists {more:?}"),
        }
    }

    /// Every JSON event seen so far.
    pub fn events(&self) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The per-message log lines seen so far.
    pub fn message_lines(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["target"] == "dispatch_milter::message")
            .collect()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// SIGHUP, then the event that says how the reload ended: "configuration
    /// reloaded" or "reload failed; the running configuration stays".
    pub async fn reload(&mut self) -> Value {
        self.signal("HUP");
        self.wait_for_any(&[
            "configuration reloaded",
            "reload failed; the running configuration stays",
        ])
        .await
    }

    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config, config).expect("write config");
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait up to `limit` for the process to exit, reading its log
    /// meanwhile, then the rest of its stderr.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the daemon did not exit within {limit:?}; stderr so far:\n{}",
                    self.log()
                );
            }
            let _ = self
                .next_line(Instant::now() + Duration::from_millis(20))
                .await;
        };
        let drain = Instant::now() + WAIT;
        while self.next_line(drain).await.is_some() {}
        status
    }

    /// SIGTERM, then the exit status, which must come within `limit`.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(limit).await
    }
}

pub fn message_of(event: &Value) -> &str {
    event["fields"]["message"].as_str().unwrap_or("")
}

pub fn field_str<'a>(event: &'a Value, name: &str) -> &'a str {
    event["fields"][name]
        .as_str()
        .unwrap_or_else(|| panic!("field {name:?} missing or not a string in {event}"))
}

/// A milter connection as Postfix makes it, every action offered, with
/// reads and writes bounded by [`WAIT`].
pub async fn open_bounded(addr: SocketAddr) -> TestConnection {
    TestConnection::configure()
        .read_timeout(WAIT)
        .write_timeout(WAIT)
        .available_actions(
            Actions::ADD_HEADER
                | Actions::CHANGE_HEADER
                | Actions::ADD_RCPT
                | Actions::ADD_RCPT_EXT
                | Actions::DELETE_RCPT
                | Actions::CHANGE_SENDER
                | Actions::QUARANTINE
                | Actions::REQUEST_MACROS,
        )
        .available_opts(ProtoOpts::LEADING_SPACE | ProtoOpts::SKIP)
        .open_tcp(addr)
        .await
        .expect("milter connection")
}

/// Open, CONNECT from 192.0.2.10 (with `{daemon_name}` when given), HELO
/// and MAIL FROM, each answered with continue.
pub async fn start_message(addr: SocketAddr, daemon_name: Option<&str>) -> TestConnection {
    let mut conn = open_bounded(addr).await;
    let mut macros = vec![("j", "mx.example.org")];
    macros.extend(daemon_name.map(|d| ("{daemon_name}", d)));
    conn.macros(MacroStage::Connect, macros)
        .await
        .expect("macros");
    let ip: IpAddr = "192.0.2.10".parse().expect("ip");
    assert_eq!(
        conn.connect("client.example.net", ip)
            .await
            .expect("connect"),
        Status::Continue
    );
    assert_eq!(
        conn.helo("client.example.net").await.expect("helo"),
        Status::Continue
    );
    assert_eq!(
        conn.mail(["<someone@example.net>"]).await.expect("mail"),
        Status::Continue
    );
    conn
}

/// What a new session (with `{daemon_name}` when given) gets for one
/// recipient.
pub async fn rcpt_answer(addr: SocketAddr, daemon_name: Option<&str>, rcpt: &str) -> Status {
    let mut conn = start_message(addr, daemon_name).await;
    let status = conn.rcpt([rcpt]).await.expect("rcpt");
    conn.close().await.expect("close");
    status
}

/// Threads of a running process, from /proc.
pub fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"))
}

/// Headers, body and end of message with queue id `qid` on a connection
/// past RCPT TO, each continued up to EOM; the EOM status.
pub async fn finish_message(conn: &mut TestConnection, qid: &str) -> Status {
    assert_eq!(
        conn.header("Subject", "hello").await.expect("header"),
        Status::Continue
    );
    assert_eq!(conn.eoh().await.expect("eoh"), Status::Continue);
    assert_eq!(
        conn.body("hello\r\n").await.expect("body"),
        Status::Continue
    );
    conn.macros(MacroStage::Eom, [("i", qid)])
        .await
        .expect("macros");
    let (_, status) = conn.eom().await.expect("eom");
    status
}

/// GET /metrics over HTTP, the way Prometheus scrapes; the whole answer,
/// status line included. Connecting and reading are bounded by [`WAIT`].
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut http = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("metrics connect in time")
        .expect("metrics connect");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("metrics request");
    let mut body = String::new();
    tokio::time::timeout(WAIT, http.read_to_string(&mut body))
        .await
        .expect("metrics answer in time")
        .expect("metrics answer");
    body
}
