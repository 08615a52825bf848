//! A load generator that plays the MTA: N concurrent milter connections, M
//! messages each, from a built-in corpus, against a running daemon over TCP
//! (with TCP_NODELAY, or it would measure Nagle's algorithm instead of the
//! milter) or a UNIX socket. It reports messages per second, latency per
//! stage and every reply that was not CONTINUE.

use indymilter::message::command::{
    Command, ConnInfoPayload, EnvAddrPayload, HeaderPayload, HeloPayload, MacroPayload,
    OptNegPayload,
};
use indymilter::message::reply::Reply;
use indymilter::{Actions, MacroStage, ProtoOpts, SocketInfo};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, BufStream};

use dispatch_milter::server_config::ListenAddress;

/// The messages the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corpus {
    /// About 1 KiB of text.
    Small,
    /// About 40 KiB: text and a base64 PDF-like attachment.
    Typical,
    /// About 1 MiB of attachment.
    Large,
    /// Small, typical and large in the ratio 6:3:1.
    Mixed,
    /// A body of about this many bytes (text and a base64 attachment), for
    /// messages larger than the built-in ones, such as one past the
    /// daemon's `max_body_size`.
    Sized(usize),
}

impl Corpus {
    pub fn parse(s: &str) -> Option<Corpus> {
        match s {
            "small" => Some(Corpus::Small),
            "typical" => Some(Corpus::Typical),
            "large" => Some(Corpus::Large),
            "mixed" => Some(Corpus::Mixed),
            _ => None,
        }
    }

    fn pick(self, n: usize) -> Corpus {
        match self {
            Corpus::Mixed => match n % 10 {
                0..=5 => Corpus::Small,
                6..=8 => Corpus::Typical,
                _ => Corpus::Large,
            },
            other => other,
        }
    }
}

/// A message of the corpus: headers and a CRLF body.
pub struct Sample {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn base64_filler(bytes: usize) -> String {
    // Not real base64 of anything, but the same shape: 76-character lines.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes + bytes / 38);
    let mut state: u32 = 0x9e37_79b9;
    let mut line = 0;
    for _ in 0..bytes {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        out.push(ALPHABET[(state % 64) as usize] as char);
        line += 1;
        if line == 76 {
            out.push_str("\r\n");
            line = 0;
        }
    }
    out.push_str("\r\n");
    out
}

/// A message of the corpus: headers and body.
pub fn sample(kind: Corpus, from: &str, to: &str, n: usize) -> Sample {
    Sample {
        headers: sample_headers(from, to, n),
        body: sample_body(kind.pick(n)).into_bytes(),
    }
}

/// The headers of message `n`: each message has its own ids and subject.
fn sample_headers(from: &str, to: &str, n: usize) -> Vec<(String, String)> {
    vec![
        (
            "Received".to_string(),
            format!(
                "from client.example.net (client.example.net [192.0.2.10]) by mx.example.org with ESMTPS id Q{n:08X}; Sun, 29 Nov 2026 12:00:00 +0000"
            ),
        ),
        ("From".to_string(), format!("Sender <{from}>")),
        ("To".to_string(), format!("<{to}>")),
        ("Subject".to_string(), format!("Load test message {n}")),
        (
            "Date".to_string(),
            "Sun, 29 Nov 2026 12:00:00 +0000".to_string(),
        ),
        ("Message-ID".to_string(), format!("<load-{n}@example.net>")),
        ("MIME-Version".to_string(), "1.0".to_string()),
        (
            "Content-Type".to_string(),
            "multipart/mixed; boundary=\"b1\"".to_string(),
        ),
    ]
}

/// The body of a concrete corpus kind (not `Mixed`): text and, but for
/// small messages, a base64 attachment.
fn sample_body(kind: Corpus) -> String {
    let text = "Hello,\r\n\r\nthis is a message from the dispatch-milter load generator. It has a few\r\nlines of ordinary text, as most mail does.\r\n\r\nRegards\r\n".repeat(4);
    let mut body = format!("--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n");
    const PART: &str = "--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n";
    const END: &str = "--b1--\r\n";
    let filler = match kind {
        Corpus::Small | Corpus::Mixed => 0,
        Corpus::Typical => 40 * 1024,
        Corpus::Large => 1024 * 1024,
        Corpus::Sized(bytes) => {
            // What is left after the fixed parts and the filler's final
            // CRLF; every full 76-character line costs 78 bytes, and a
            // 76th character in the last line would add a CRLF of its own.
            let room = bytes.saturating_sub(body.len() + PART.len() + END.len() + 2);
            room / 78 * 76 + (room % 78).min(75)
        }
    };
    if filler > 0 {
        body.push_str(PART);
        body.push_str(&base64_filler(filler));
    }
    body.push_str(END);
    body
}

/// Bodies built once per kind and shared by every message of a connection:
/// building a typical body costs several times what the daemon spends on
/// the whole message, and the generator shares the machine with it.
#[derive(Default)]
struct Bodies {
    built: Vec<(Corpus, bytes::Bytes)>,
}

impl Bodies {
    fn get(&mut self, kind: Corpus) -> bytes::Bytes {
        if let Some((_, body)) = self.built.iter().find(|(k, _)| *k == kind) {
            return body.clone();
        }
        let body = bytes::Bytes::from(sample_body(kind).into_bytes());
        self.built.push((kind, body.clone()));
        body
    }
}

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: ListenAddress,
    pub connections: usize,
    pub messages: usize,
    pub corpus: Corpus,
    pub from: String,
    pub to: Vec<String>,
    pub client_ip: IpAddr,
    pub helo: String,
    pub daemon_name: String,
    pub auth_user: Option<String>,
    pub tls: bool,
    /// Pause between SMTP commands, as a real client's round trips would.
    pub pace: Duration,
    /// After its messages (none with `messages` 0) each connection stays
    /// open and idle this long before QUIT: the daemon's cost of an idle
    /// connection can then be measured from outside.
    pub hold: Duration,
    /// Send this message (from `--message FILE`) instead of the corpus:
    /// every message the same, as read.
    pub message: Option<std::sync::Arc<FileMessage>>,
}

/// A message read from a file, for `--message`: headers as an MTA passes
/// them and the body with CRLF line ends.
#[derive(Debug)]
pub struct FileMessage {
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
}

impl FileMessage {
    /// Split an RFC 5322 message (LF or CRLF line ends) into its parts.
    pub fn parse(raw: &[u8]) -> FileMessage {
        let (headers, body) = dispatch_milter::cli::test::parse_message(raw);
        FileMessage {
            headers,
            body: bytes::Bytes::from(body),
        }
    }
}

/// Latency figures of one stage, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(samples: &mut [Duration]) -> Latency {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i.min(samples.len() - 1)].as_secs_f64() * 1000.0
        };
        Latency {
            count: samples.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: samples.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub connections: usize,
    pub messages_sent: usize,
    pub messages_completed: usize,
    pub seconds: f64,
    pub messages_per_second: f64,
    /// Per stage: connect, helo, mail, rcpt, data (headers and body), eom,
    /// and message (MAIL to the EOM reply).
    pub latency_ms: BTreeMap<String, Latency>,
    /// Every reply that was not CONTINUE, by stage and reply.
    pub replies: BTreeMap<String, usize>,
    pub errors: BTreeMap<String, usize>,
}

#[derive(Default)]
struct ConnectionStats {
    stages: BTreeMap<&'static str, Vec<Duration>>,
    replies: BTreeMap<String, usize>,
    errors: BTreeMap<String, usize>,
    completed: usize,
}

struct Client<S> {
    stream: BufStream<S>,
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

fn describe(reply: &Reply) -> String {
    match reply {
        Reply::ReplyCode { reply } => reply.to_string_lossy().into_owned(),
        Reply::Reject => "reject".into(),
        Reply::Tempfail => "tempfail".into(),
        Reply::Discard => "discard".into(),
        Reply::Accept => "accept".into(),
        other => format!("{other:?}"),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, cmd: Command) -> std::io::Result<()> {
        indymilter::message::write(&mut self.stream, cmd.into_message()).await
    }

    async fn reply(&mut self) -> Result<Reply, String> {
        let msg = indymilter::message::read(&mut self.stream)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Reply::parse_reply(msg).map_err(|e| format!("bad reply: {e}"))
    }

    /// Send a command and wait for its one reply.
    async fn call(&mut self, cmd: Command) -> Result<Reply, String> {
        self.send(cmd).await.map_err(|e| format!("write: {e}"))?;
        self.reply().await
    }

    /// Send a command whose reply the milter may have waived at negotiation
    /// (the NOREPLY_* options): then, like Postfix, do not wait for one and
    /// take it as CONTINUE.
    async fn call_unless(&mut self, cmd: Command, noreply: bool) -> Result<Reply, String> {
        if noreply {
            self.send(cmd).await.map_err(|e| format!("write: {e}"))?;
            Ok(Reply::Continue)
        } else {
            self.call(cmd).await
        }
    }

    async fn macros(&mut self, stage: MacroStage, pairs: &[(&str, &str)]) -> Result<(), String> {
        let macros = pairs
            .iter()
            .flat_map(|(k, v)| [cstring(k), cstring(v)])
            .collect();
        self.send(Command::DefMacros(MacroPayload { stage, macros }))
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// End of message: replies until the final one; PROGRESS and edits pass.
    async fn eom(&mut self) -> Result<Reply, String> {
        self.send(Command::BodyEnd(Default::default()))
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            let reply = self.reply().await?;
            match reply {
                Reply::Accept
                | Reply::Continue
                | Reply::Discard
                | Reply::Reject
                | Reply::Tempfail
                | Reply::ReplyCode { .. } => return Ok(reply),
                _ => {}
            }
        }
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    cfg: &LoadConfig,
    first: usize,
    stats: &mut ConnectionStats,
) -> Result<(), String> {
    let mut c = Client {
        stream: BufStream::new(stream),
    };
    let mut bodies = Bodies::default();
    let offered = Actions::ADD_HEADER
        | Actions::CHANGE_HEADER
        | Actions::ADD_RCPT
        | Actions::ADD_RCPT_EXT
        | Actions::DELETE_RCPT
        | Actions::CHANGE_SENDER
        | Actions::QUARANTINE
        | Actions::REQUEST_MACROS;
    // What Postfix (milter protocol 6) offers: every "do not send" and "do
    // not reply" option, SKIP and LEADING_SPACE. The milter picks; the
    // generator then honours the choice as Postfix does.
    let negotiated = c
        .call(Command::OptNeg(OptNegPayload {
            version: indymilter::message::PROTOCOL_VERSION,
            actions: offered,
            opts: ProtoOpts::all(),
        }))
        .await?;
    let opts = match negotiated {
        Reply::OptNeg { opts, .. } => opts,
        other => return Err(format!("negotiation answered {}", describe(&other))),
    };
    let timed = async |stage: &'static str,
                       c: &mut Client<S>,
                       cmd: Command,
                       noreply: bool,
                       stats: &mut ConnectionStats|
           -> Result<bool, String> {
        if !cfg.pace.is_zero() {
            tokio::time::sleep(cfg.pace).await;
        }
        let start = Instant::now();
        let reply = c.call_unless(cmd, noreply).await?;
        stats.stages.entry(stage).or_default().push(start.elapsed());
        if matches!(reply, Reply::Continue) {
            Ok(true)
        } else {
            *stats
                .replies
                .entry(format!("{stage}: {}", describe(&reply)))
                .or_default() += 1;
            Ok(false)
        }
    };
    c.macros(
        MacroStage::Connect,
        &[("{daemon_name}", &cfg.daemon_name), ("j", "mx.example.org")],
    )
    .await?;
    let conn_ok = timed(
        "connect",
        &mut c,
        Command::ConnInfo(ConnInfoPayload {
            hostname: cstring("client.example.net"),
            socket_info: SocketInfo::Inet((cfg.client_ip, 25000).into()),
        }),
        opts.contains(ProtoOpts::NOREPLY_CONNECT),
        stats,
    )
    .await?;
    if !conn_ok {
        return Ok(());
    }
    if cfg.tls {
        c.macros(
            MacroStage::Helo,
            &[
                ("{tls_version}", "TLSv1.3"),
                ("{cipher}", "TLS_AES_256_GCM_SHA384"),
            ],
        )
        .await?;
    }
    timed(
        "helo",
        &mut c,
        Command::Helo(HeloPayload {
            hostname: cstring(&cfg.helo),
        }),
        opts.contains(ProtoOpts::NOREPLY_HELO),
        stats,
    )
    .await?;
    for n in first..first + cfg.messages {
        let message_start = Instant::now();
        if let Some(user) = &cfg.auth_user {
            c.macros(
                MacroStage::Mail,
                &[("{auth_authen}", user), ("{auth_type}", "PLAIN")],
            )
            .await?;
        }
        let from = format!("<{}>", cfg.from);
        if !timed(
            "mail",
            &mut c,
            Command::Mail(EnvAddrPayload {
                args: vec![cstring(&from)],
            }),
            opts.contains(ProtoOpts::NOREPLY_MAIL),
            stats,
        )
        .await?
        {
            continue;
        }
        let qid = format!("LOAD{n:08X}");
        let mut accepted = 0;
        for to in &cfg.to {
            c.macros(MacroStage::Rcpt, &[("i", &qid)]).await?;
            let rcpt = format!("<{to}>");
            if timed(
                "rcpt",
                &mut c,
                Command::Rcpt(EnvAddrPayload {
                    args: vec![cstring(&rcpt)],
                }),
                opts.contains(ProtoOpts::NOREPLY_RCPT),
                stats,
            )
            .await?
            {
                accepted += 1;
            }
        }
        if accepted == 0 {
            c.send(Command::Abort)
                .await
                .map_err(|e| format!("write: {e}"))?;
            continue;
        }
        let generated;
        let (headers, body) = match &cfg.message {
            Some(file) => (&file.headers, file.body.clone()),
            None => {
                let to = cfg.to.first().map_or("", String::as_str);
                generated = sample_headers(&cfg.from, to, n);
                (&generated, bodies.get(cfg.corpus.pick(n)))
            }
        };
        c.macros(MacroStage::Data, &[("i", &qid)]).await?;
        let data_start = Instant::now();
        // Stages the milter asked not to see are not sent (NO_*), replies
        // it waived are not awaited (NOREPLY_*), as Postfix does.
        if !opts.contains(ProtoOpts::NO_DATA) {
            c.call_unless(Command::Data, opts.contains(ProtoOpts::NOREPLY_DATA))
                .await?;
        }
        if !opts.contains(ProtoOpts::NO_HEADER) {
            for (name, value) in headers {
                let value = if opts.contains(ProtoOpts::LEADING_SPACE) {
                    format!(" {value}")
                } else {
                    value.clone()
                };
                c.call_unless(
                    Command::Header(HeaderPayload {
                        name: cstring(name),
                        value: cstring(&value),
                    }),
                    opts.contains(ProtoOpts::NOREPLY_HEADER),
                )
                .await?;
            }
        }
        if !opts.contains(ProtoOpts::NO_EOH) {
            c.call_unless(Command::Eoh, opts.contains(ProtoOpts::NOREPLY_EOH))
                .await?;
        }
        if !opts.contains(ProtoOpts::NO_BODY) {
            // Postfix sends the body in chunks of at most 65535 bytes.
            for start in (0..body.len()).step_by(65535) {
                let chunk = body.slice(start..body.len().min(start + 65535));
                c.call_unless(
                    Command::BodyChunk(chunk),
                    opts.contains(ProtoOpts::NOREPLY_BODY),
                )
                .await?;
            }
        }
        stats
            .stages
            .entry("data")
            .or_default()
            .push(data_start.elapsed());
        c.macros(MacroStage::Eom, &[("i", &qid)]).await?;
        let eom_start = Instant::now();
        let reply = c.eom().await?;
        stats
            .stages
            .entry("eom")
            .or_default()
            .push(eom_start.elapsed());
        stats
            .stages
            .entry("message")
            .or_default()
            .push(message_start.elapsed());
        if !matches!(reply, Reply::Continue | Reply::Accept) {
            *stats
                .replies
                .entry(format!("eom: {}", describe(&reply)))
                .or_default() += 1;
        }
        stats.completed += 1;
    }
    if !cfg.hold.is_zero() {
        tokio::time::sleep(cfg.hold).await;
    }
    let _ = c.send(Command::Quit).await;
    Ok(())
}

async fn one_connection(cfg: LoadConfig, index: usize) -> ConnectionStats {
    let mut stats = ConnectionStats::default();
    let first = index * cfg.messages;
    let result = match &cfg.target {
        ListenAddress::Inet(addr) => match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                // Without it the client's own small writes wait for ACKs.
                let _ = s.set_nodelay(true);
                session(s, &cfg, first, &mut stats).await
            }
            Err(e) => Err(format!("connect: {e}")),
        },
        ListenAddress::Unix(path) => match tokio::net::UnixStream::connect(path).await {
            Ok(s) => session(s, &cfg, first, &mut stats).await,
            Err(e) => Err(format!("connect: {e}")),
        },
    };
    if let Err(e) = result {
        *stats.errors.entry(e).or_default() += 1;
    }
    stats
}

/// Run the load and gather the figures.
pub async fn run(cfg: LoadConfig) -> LoadReport {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cfg.connections {
        tasks.spawn(one_connection(cfg.clone(), i));
    }
    let mut stages: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut replies = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut completed = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(s) => {
                for (k, mut v) in s.stages {
                    stages.entry(k).or_default().append(&mut v);
                }
                for (k, v) in s.replies {
                    *replies.entry(k).or_default() += v;
                }
                for (k, v) in s.errors {
                    *errors.entry(k).or_default() += v;
                }
                completed += s.completed;
            }
            Err(e) => *errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    LoadReport {
        connections: cfg.connections,
        messages_sent: cfg.connections * cfg.messages,
        messages_completed: completed,
        seconds,
        messages_per_second: if seconds > 0.0 {
            completed as f64 / seconds
        } else {
            0.0
        },
        latency_ms: stages
            .into_iter()
            .map(|(k, mut v)| (k.to_string(), Latency::of(&mut v)))
            .collect(),
        replies,
        errors,
    }
}

/// The report for people.
pub fn render(r: &LoadReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} messages over {} connections in {:.2} s: {:.0} messages/s ({} sent)",
        r.messages_completed, r.connections, r.seconds, r.messages_per_second, r.messages_sent
    );
    let _ = writeln!(
        out,
        "\nlatency (ms)   count      p50      p90      p99      max"
    );
    for (stage, l) in &r.latency_ms {
        let _ = writeln!(
            out,
            "  {stage:<10} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            l.count, l.p50, l.p90, l.p99, l.max
        );
    }
    if !r.replies.is_empty() {
        let _ = writeln!(out, "\nreplies other than continue");
        for (k, v) in &r.replies {
            let _ = writeln!(out, "  {v:>7}  {k}");
        }
    }
    if !r.errors.is_empty() {
        let _ = writeln!(out, "\nerrors");
        for (k, v) in &r.errors {
            let _ = writeln!(out, "  {v:>7}  {k}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_sizes() {
        let small = sample(Corpus::Small, "a@x.test", "b@y.test", 1);
        let typical = sample(Corpus::Typical, "a@x.test", "b@y.test", 1);
        let large = sample(Corpus::Large, "a@x.test", "b@y.test", 1);
        assert!(small.body.len() < 2048, "{}", small.body.len());
        assert!(
            (40_000..50_000).contains(&typical.body.len()),
            "{}",
            typical.body.len()
        );
        assert!(large.body.len() > 1_000_000, "{}", large.body.len());
        assert!(typical.body.windows(2).all(|w| w != b"\n\n"), "CRLF only");
    }

    #[test]
    fn sized_bodies_come_close_to_the_size_asked_for() {
        for want in [3_000, 100_000, 100_077, 3 << 20] {
            let s = sample(Corpus::Sized(want), "a@x.test", "b@y.test", 1);
            let len = s.body.len();
            assert!(len <= want && want - len < 80, "asked {want}, got {len}");
            assert!(s.body.ends_with(b"--b1--\r\n"));
            assert!(
                s.body.windows(2).all(|w| w != b"\n\n"),
                "CRLF line ends only"
            );
        }
        // Too small for an attachment: the text part alone.
        let tiny = sample(Corpus::Sized(10), "a@x.test", "b@y.test", 1);
        let small = sample(Corpus::Small, "a@x.test", "b@y.test", 1);
        assert_eq!(tiny.body, small.body);
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&mut v);
        assert_eq!(
            (l.count, l.p50.round(), l.p90.round(), l.p99.round(), l.max),
            (100, 51.0, 90.0, 99.0, 100.0)
        );
    }
}
