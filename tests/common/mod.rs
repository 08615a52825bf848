//! Shared test helpers: compile a policy from inline TOML with test-only
//! check kinds, and drive a session through the SMTP stages.
#![allow(dead_code)]

use dispatch_milter::checks::{
    BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status,
};
use dispatch_milter::config::{ConfigErrors, Registry, compile_str};
use dispatch_milter::edits::Edit;
use dispatch_milter::engine::{CheckReport, MessageOutcome, Session, StageReply};
use dispatch_milter::message::{AuthInfo, ConnectionFacts, TlsInfo};
use dispatch_milter::policy::Policy;
use dispatch_milter::stage::Stage;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Counters shared by every `probe` check of one registry.
#[derive(Default)]
pub struct Probes {
    pub running: AtomicUsize,
    pub peak: AtomicUsize,
    pub started: AtomicUsize,
    pub finished: AtomicUsize,
    /// Futures dropped before they finished (cancelled or timed out).
    pub dropped: AtomicUsize,
}

/// A test check: returns `status` after `delay`, at stage `inputs`; may
/// panic; counts how many run at once and how many were dropped unfinished.
struct ProbeCheck {
    status: Status,
    delay: Duration,
    inputs: Stage,
    panics: bool,
    score: Option<f64>,
    auth_results: Option<String>,
    probes: Arc<Probes>,
}

struct RunGuard {
    probes: Arc<Probes>,
    done: bool,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.probes.running.fetch_sub(1, Ordering::SeqCst);
        if self.done {
            self.probes.finished.fetch_add(1, Ordering::SeqCst);
        } else {
            self.probes.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Check for ProbeCheck {
    fn inputs(&self) -> Stage {
        self.inputs
    }

    fn run(self: Arc<Self>, _input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move {
            let now = self.probes.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.probes.peak.fetch_max(now, Ordering::SeqCst);
            self.probes.started.fetch_add(1, Ordering::SeqCst);
            let mut guard = RunGuard {
                probes: self.probes.clone(),
                done: false,
            };
            tokio::time::sleep(self.delay).await;
            if self.panics {
                panic!("probe asked to panic");
            }
            guard.done = true;
            let mut r =
                CheckResult::with_reason(self.status, format!("probe said {}", self.status));
            r.score = self.score;
            r.auth_results = self.auth_results.as_deref().map(|text| {
                dispatch_milter::auth_results::parse_results(text).expect("probe auth_results")
            });
            r
        })
    }
}

fn parse_status(s: &str) -> Option<Status> {
    Status::ALL.into_iter().find(|st| st.as_str() == s)
}

/// The built-in kinds plus `probe` (options: status, delay_ms, inputs,
/// panic, score).
pub fn registry(probes: Arc<Probes>) -> Registry {
    let mut reg = Registry::builtin();
    reg.add_check(
        "probe",
        Arc::new(move |ctx: &mut CheckBuildContext<'_, '_, '_>| {
            let ProbeOptions {
                status,
                delay_ms,
                inputs,
                panic,
                score,
                auth_results,
            } = ctx.options.parse()?;
            let status = status
                .as_deref()
                .and_then(parse_status)
                .unwrap_or(Status::Pass);
            let delay = delay_ms.unwrap_or(0);
            let inputs = inputs
                .as_deref()
                .and_then(Stage::parse)
                .unwrap_or(Stage::Eom);
            let panics = panic.unwrap_or(false);
            Some(Arc::new(ProbeCheck {
                status,
                delay: Duration::from_millis(delay),
                inputs,
                panics,
                score,
                auth_results,
                probes: probes.clone(),
            }) as Arc<dyn Check>)
        }),
    );
    reg
}

/// The options of the `probe` check, read like a built-in kind's.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeOptions {
    status: Option<String>,
    delay_ms: Option<u64>,
    inputs: Option<String>,
    panic: Option<bool>,
    score: Option<f64>,
    auth_results: Option<String>,
}

pub fn try_compile(src: &str) -> Result<Policy, ConfigErrors> {
    compile_str(
        Path::new("test.toml"),
        src,
        &registry(Arc::new(Probes::default())),
    )
}

pub fn compile(src: &str) -> Arc<Policy> {
    match try_compile(src) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("config should compile:\n{e}"),
    }
}

pub mod daemon;
pub mod dns_server;
pub mod postfix;
pub mod raw_milter;
pub mod serve;
pub mod signing;
pub mod stats;
pub mod tools;
pub mod wait;

pub fn compile_with(src: &str, probes: Arc<Probes>) -> Arc<Policy> {
    match compile_str(Path::new("test.toml"), src, &registry(probes)) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("config should compile:\n{e}"),
    }
}

/// The error text of a config that must not compile.
pub fn errors_of(src: &str) -> String {
    match try_compile(src) {
        Ok(_) => panic!("config should not compile"),
        Err(e) => e.to_string(),
    }
}

/// A client and its message, fed through a session stage by stage.
#[derive(Clone)]
pub struct Mail {
    pub client_ip: &'static str,
    pub daemon_name: Option<&'static str>,
    pub auth_user: Option<&'static str>,
    pub tls: bool,
    pub from: String,
    pub to: Vec<String>,
    /// ESMTP parameters given with every RCPT TO.
    pub rcpt_args: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Mail {
    /// A message from `from`, sent by a client at `ip`, to bob@rcpt.test
    /// (the recipient of the zones in tests/zones/auth).
    pub fn from_client(from: &str, ip: &'static str) -> Mail {
        let mut m = Mail::new(from, &["bob@rcpt.test"]);
        m.client_ip = ip;
        m
    }

    pub fn new(from: &str, to: &[&str]) -> Mail {
        Mail {
            client_ip: "192.0.2.10",
            daemon_name: None,
            auth_user: None,
            tls: false,
            from: from.to_string(),
            to: to.iter().map(|s| s.to_string()).collect(),
            rcpt_args: Vec::new(),
            headers: vec![
                ("From".into(), format!("<{from}>")),
                ("Subject".into(), "test".into()),
            ],
            body: "hello\r\n".into(),
        }
    }
}

/// What a whole run produced.
pub struct Run {
    pub mail: StageReply,
    pub rcpts: Vec<StageReply>,
    pub outcome: Option<MessageOutcome>,
    pub session: Session,
}

pub async fn run_mail(policy: &Arc<Policy>, pipeline: &str, mail: &Mail) -> Run {
    let index = policy.pipeline_index(pipeline).expect("pipeline exists");
    let facts = ConnectionFacts {
        client_ip: mail.client_ip.parse().ok(),
        client_name: Some("client.example.net".into()),
        daemon_name: mail.daemon_name.map(str::to_string),
        ..ConnectionFacts::default()
    };
    let mut session = Session::new(policy.clone(), index, facts);
    assert_eq!(session.connect().await, StageReply::Continue);
    let tls = mail.tls.then(|| TlsInfo {
        version: "TLSv1.3".into(),
        cipher: None,
    });
    assert_eq!(
        session.helo("client.example.net", tls).await,
        StageReply::Continue
    );
    let auth = mail.auth_user.map(|u| AuthInfo {
        user: u.into(),
        mechanism: Some("PLAIN".into()),
    });
    let mail_reply = session.mail(&format!("<{}>", mail.from), &[], auth).await;
    if !mail_reply.is_continue() {
        return Run {
            mail: mail_reply,
            rcpts: vec![],
            outcome: None,
            session,
        };
    }
    let mut rcpts = Vec::new();
    for to in &mail.to {
        rcpts.push(session.rcpt(&format!("<{to}>"), &mail.rcpt_args).await);
    }
    if !rcpts.iter().any(StageReply::is_continue) {
        return Run {
            mail: mail_reply,
            rcpts,
            outcome: None,
            session,
        };
    }
    session.set_queue_id(Some("TESTQ1"));
    for (n, v) in &mail.headers {
        session.header(n, v);
    }
    session.body(mail.body.clone().into());
    let outcome = session.eom().await;
    Run {
        mail: mail_reply,
        rcpts,
        outcome: Some(outcome),
        session,
    }
}

/// What the MTA tells of a client at `ip`, and nothing else.
pub fn client_at(ip: &str) -> ConnectionFacts {
    ConnectionFacts {
        client_ip: ip.parse().ok(),
        ..ConnectionFacts::default()
    }
}

/// A session of the policy's first pipeline through connect, HELO
/// client.example.net (without TLS) and MAIL FROM `<from>`, each continued:
/// for tests that look at what happens between the stages.
pub async fn session_at_mail(policy: &Arc<Policy>, facts: ConnectionFacts, from: &str) -> Session {
    let mut session = Session::new(policy.clone(), 0, facts);
    assert_eq!(session.connect().await, StageReply::Continue);
    assert_eq!(
        session.helo("client.example.net", None).await,
        StageReply::Continue
    );
    let reply = session.mail(&format!("<{from}>"), &[], None).await;
    assert_eq!(reply, StageReply::Continue);
    session
}

/// The rest of `mail` on a session past MAIL FROM: every recipient
/// continued, then its headers, body and end of message.
pub async fn finish_session(session: &mut Session, mail: &Mail) -> MessageOutcome {
    for to in &mail.to {
        assert_eq!(
            session.rcpt(&format!("<{to}>"), &[]).await,
            StageReply::Continue
        );
    }
    for (name, value) in &mail.headers {
        session.header(name, value);
    }
    session.body(mail.body.clone().into());
    session.eom().await
}

/// [`run_mail`] for a message that must reach end of message: MAIL FROM
/// and at least one recipient are accepted.
pub async fn run_to_eom(policy: &Arc<Policy>, pipeline: &str, mail: &Mail) -> MessageOutcome {
    let run = run_mail(policy, pipeline, mail).await;
    assert_eq!(run.mail, StageReply::Continue, "MAIL FROM refused");
    run.outcome.expect("the message reached end of message")
}

/// The report of the check named `name`; fails listing what was reported.
pub fn reported<'o>(outcome: &'o MessageOutcome, name: &str) -> &'o CheckReport {
    outcome
        .report
        .checks
        .iter()
        .find(|c| &*c.name == name)
        .unwrap_or_else(|| panic!("check {name} reported: {:?}", outcome.report.checks))
}

/// The (result, reason) of the check named `name`.
pub fn check_result(outcome: &MessageOutcome, name: &str) -> (String, String) {
    let c = reported(outcome, name);
    (c.result.to_string(), c.reason.clone().unwrap_or_default())
}

/// Every header the edits insert with this name, in edit order.
pub fn inserted(outcome: &MessageOutcome, header: &str) -> Vec<String> {
    outcome
        .edits
        .iter()
        .filter_map(|e| match e {
            Edit::InsertHeader { name, value, .. } if name.eq_ignore_ascii_case(header) => {
                Some(value.clone())
            }
            _ => None,
        })
        .collect()
}

/// The `[dns]` block of a policy tested against a loopback DNS server: one
/// quick attempt, so a dropped query is a temperror at once.
pub const QUICK_DNS: &str = "[dns]\ntimeout = \"500ms\"\nattempts = 1\n";

/// The built-in kinds, resolving only through `server`.
pub fn resolving_registry(server: &dns_server::DnsServer) -> Registry {
    let mut registry = Registry::builtin();
    registry.set_nameservers(vec![server.addr()]);
    registry
}

/// Compile `src` (read as the file `path`) resolving only through `server`.
pub fn compile_resolving(server: &dns_server::DnsServer, path: &Path, src: &str) -> Arc<Policy> {
    match compile_str(path, src, &resolving_registry(server)) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("config should compile:\n{e}\n{src}"),
    }
}

/// The 1-based line and column of the first `needle` in `text`.
pub fn position(text: &str, needle: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = line.find(needle) {
            return (i + 1, col + 1);
        }
    }
    panic!("{needle:?} not in the text");
}

pub fn reply_code(r: &StageReply) -> u16 {
    match r {
        StageReply::Continue => 250,
        StageReply::Reject(r) | StageReply::Tempfail(r) => r.code,
    }
}

/// The MX checks the benchmarks measure: DNSBL (three lists), iprev, SPF,
/// DKIM and DMARC, in pipeline `mx`, with `dns_extra` added to `[dns]`
/// (nameservers, cache_size). Shared by tests/bench/daemon.rs and
/// tests/bench/postfix.rs so both measure the same policy;
/// bench/mx-checks.toml is the same policy for the daemon binary.
pub fn mx_checks(dns_extra: &str) -> String {
    format!(
        r#"
[dns]
timeout = "2s"
attempts = 1
{dns_extra}

[checks.dnsbl]
kind = "dnsbl"
lists = [
  {{ zone = "zen.test", type = "ip" }},
  {{ zone = "bl1.test", type = "ip" }},
  {{ zone = "bl2.test", type = "ip" }},
]
[checks.iprev]
kind = "iprev"
on_fail = "ignore"
[checks.spf]
kind = "spf"
[checks.dkim]
kind = "dkim"
on_fail = "ignore"
[checks.dmarc]
kind = "dmarc"

[pipelines.mx]
authserv_id = "mx.example.org"
checks = ["dnsbl", "iprev", "spf", "dkim", "dmarc"]
"#
    )
}
