//! Prometheus metrics for the milter: counters for messages, check results, reloads and
//! refused connections, a histogram of check durations and a gauge of open milter
//! connections, kept in a `prometheus-client` registry and served as OpenMetrics text by
//! a tiny HTTP/1.1 responder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Prefix of every metric name; prometheus-client inserts the `_` separator.
const PREFIX: &str = "dispatch_milter";

/// The content type of what `prometheus_client::encoding::text::encode` produces
/// (OpenMetrics 1.0 text, ending in `# EOF`).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    pipeline: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckResultLabels {
    check: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// A plain function pointer, so the family's type can be named in the struct.
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Buckets for check durations: most checks wait on DNS, so they range from a cache
/// hit (sub-millisecond) to a resolver timeout (tens of seconds). Doubling from 0.5 ms
/// gives 17 buckets up to 32.768 s, so a check cut off at a 30 s timeout still lands
/// in a finite bucket rather than only in `+Inf`.
fn check_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// The milter's metrics. Cloning is cheap and every clone records into the same
/// registry, so it can be handed to many tasks (or shared behind an `Arc`).
///
/// Label values should come from the configuration (pipeline and check names) or from
/// small fixed sets (verdicts, results), never from message content: each distinct
/// value becomes a time series that lives as long as the process.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    messages: Family<MessageLabels, Counter>,
    check_results: Family<CheckResultLabels, Counter>,
    check_duration: HistogramFamily<CheckLabels>,
    connections_open: Gauge,
    connections_refused: Family<ListenerLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);

        // Counters are registered without `_total`: the encoder appends it to the
        // sample name (and prometheus-client 0.26 panics in debug builds otherwise).
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages",
            "Messages finished, by pipeline and verdict",
            messages.clone(),
        );

        let check_results = Family::<CheckResultLabels, Counter>::default();
        registry.register(
            "check_results",
            "Check results, by check and result",
            check_results.clone(),
        );

        let check_duration: HistogramFamily<CheckLabels> =
            Family::new_with_constructor(check_duration_histogram);
        registry.register_with_unit(
            "check_duration",
            "Time taken by a check, by check",
            Unit::Seconds,
            check_duration.clone(),
        );

        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Milter connections currently open",
            connections_open.clone(),
        );

        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because their listener was at max_connections, by listener",
            connections_refused.clone(),
        );

        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads, by whether the new configuration was applied",
            reloads.clone(),
        );
        // Both series exist from the start, so that `increase(...{result="failed"})`
        // is 0 rather than absent until the first failure.
        for result in ["ok", "failed"] {
            drop(reloads.get_or_create(&ReloadLabels { result }));
        }

        Metrics {
            registry: Arc::new(registry),
            messages,
            check_results,
            check_duration,
            connections_open,
            connections_refused,
            reloads,
        }
    }

    /// one finished message: pipeline name and verdict ("accept", "reject", "tempfail", "quarantine", "discard")
    pub fn message(&self, pipeline: &str, verdict: &str) {
        self.messages
            .get_or_create(&MessageLabels {
                pipeline: pipeline.to_owned(),
                verdict: verdict.to_owned(),
            })
            .inc();
    }

    /// one check result: check name, result ("pass", "fail", ..., "cancelled"), and how long it took
    pub fn check(&self, check: &str, result: &'static str, elapsed: Duration) {
        self.check_results
            .get_or_create(&CheckResultLabels {
                check: check.to_owned(),
                result,
            })
            .inc();
        self.check_duration
            .get_or_create(&CheckLabels {
                check: check.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// a listener starts: its refused-connections series exists from now on, at 0
    pub fn listener_started(&self, listener: &str) {
        drop(self.connections_refused.get_or_create(&ListenerLabels {
            listener: listener.to_owned(),
        }));
    }

    /// a connection closed at once because its listener was full
    pub fn connection_refused(&self, listener: &str) {
        self.connections_refused
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .inc();
    }

    /// a configuration reload; ok = whether the new config was applied
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// the text exposition, as served on /metrics
    pub fn render(&self) -> String {
        match self.try_render() {
            Ok(text) => text,
            Err(_) => {
                // Encoding into a String cannot fail today; should a future encoder
                // version fail anyway, a scrape error is better than a panic.
                tracing::warn!("metrics: encoding the registry failed");
                String::new()
            }
        }
    }

    fn try_render(&self) -> Result<String, fmt::Error> {
        let mut text = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// serve /metrics on an already bound listener until the future is dropped
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        serve_with(self, listener, Limits::DEFAULT).await;
    }
}

/// Bounds that keep a slow or hostile client from holding resources. A field, not
/// constants, so the tests can shorten the timeouts.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Largest request head (request line and headers) read; larger gets a 431.
    head_bytes: usize,
    /// Time allowed for the whole request head, not per read, against slow-loris clients.
    read_timeout: Duration,
    /// Time allowed to write a response to a client that does not read it.
    write_timeout: Duration,
    /// Time spent draining unread input after responding (see `respond`).
    linger: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    max_connections: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        head_bytes: 8 * 1024,
        read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        linger: Duration::from_secs(1),
        max_connections: 64,
    };
}

async fn serve_with(metrics: Arc<Metrics>, listener: TcpListener, limits: Limits) {
    // The connection tasks live in a JoinSet owned by this future, so dropping
    // `serve` also aborts the connections it is still answering.
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if tasks.len() < limits.max_connections => {
                match accepted {
                    Ok((stream, _peer)) => {
                        let metrics = Arc::clone(&metrics);
                        tasks.spawn(handle_connection(metrics, stream, limits));
                    }
                    Err(err) => {
                        // Typically EMFILE/ENFILE; pause so a persistent error does not
                        // turn into a busy loop that floods the log.
                        tracing::warn!(error = %err, "metrics: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(err) = joined
                    && err.is_panic()
                {
                    tracing::error!("metrics: connection task panicked");
                }
            }
        }
    }
}

/// What became of reading a request head.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A complete head; the bytes up to and including the blank line.
    Complete(Vec<u8>),
    /// The limit was reached without a blank line.
    TooLarge,
    /// The client closed before finishing the head (maybe after sending nothing).
    Incomplete { empty: bool },
}

async fn handle_connection(metrics: Arc<Metrics>, mut stream: TcpStream, limits: Limits) {
    let head = match tokio::time::timeout(
        limits.read_timeout,
        read_head(&mut stream, limits.head_bytes),
    )
    .await
    {
        Ok(Ok(head)) => head,
        // A client that stalls or errors gets no response: there is nobody to read it.
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "metrics: reading request failed");
            return;
        }
        Err(_elapsed) => {
            tracing::debug!("metrics: request head timed out");
            return;
        }
    };
    let response = match head {
        Head::Complete(bytes) => route(&metrics, &bytes),
        Head::TooLarge => Response::text(431, "Request Header Fields Too Large"),
        Head::Incomplete { empty: true } => return,
        Head::Incomplete { empty: false } => Response::text(400, "Bad Request"),
    };
    respond(stream, response, limits).await;
}

/// Reads until the blank line that ends the head, at most `limit` bytes.
async fn read_head(stream: &mut TcpStream, limit: usize) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        // Never read past the limit, so the buffer stays bounded.
        let room = limit.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(Head::Incomplete {
                empty: buf.is_empty(),
            });
        }
        // Resume the search a little before the new bytes: the terminator may straddle.
        let from = buf.len().saturating_sub(2);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf, from) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
    }
}

/// Index just past the empty line ending the head, searching from `from`. Accepts
/// bare LF line ends as well as CRLF, as RFC 9112 section 2.2 allows a recipient to.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// For 405: the methods that are allowed.
    allow: Option<&'static str>,
}

impl Response {
    fn text(status: u16, reason: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{reason}\n").into_bytes(),
            allow: None,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Maps a complete request head to a response. Only the request line matters: the
/// headers are read (to honour the size limit) but not interpreted.
fn route(metrics: &Metrics, head: &[u8]) -> Response {
    let Some((method, target, version)) = parse_request_line(head) else {
        return Response::text(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(505, "HTTP Version Not Supported");
    }
    if method != "GET" {
        let mut response = Response::text(405, "Method Not Allowed");
        response.allow = Some("GET");
        return response;
    }
    // Prometheus may append query parameters (scrape config `params`); they select nothing here.
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Response::text(404, "Not Found");
    }
    match metrics.try_render() {
        Ok(text) => Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: text.into_bytes(),
            allow: None,
        },
        Err(_) => Response::text(500, "Internal Server Error"),
    }
}

/// Splits `METHOD SP target SP HTTP-version` from the first line; None if it is not
/// one (not UTF-8, wrong number of parts, or a method that is not an HTTP token).
fn parse_request_line(head: &[u8]) -> Option<(&str, &str, &str)> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || target.is_empty() {
        return None;
    }
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return None;
    }
    Some((method, target, version))
}

/// Writes the response, closes our side, then drains what the client may still send.
/// Closing a socket with unread input makes the kernel send a reset, which can discard
/// the response before the client reads it (after a 431 or a 400 for instance), so
/// the input is read and dropped for a short while first.
async fn respond(mut stream: TcpStream, response: Response, limits: Limits) {
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len(),
    );
    if let Some(allow) = response.allow {
        bytes.push_str("Allow: ");
        bytes.push_str(allow);
        bytes.push_str("\r\n");
    }
    bytes.push_str("\r\n");
    let mut bytes = bytes.into_bytes();
    bytes.extend_from_slice(&response.body);

    let write = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(limits.write_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "metrics: writing response failed");
            return;
        }
        Err(_elapsed) => {
            tracing::debug!("metrics: writing response timed out");
            return;
        }
    }

    let drain = async {
        let mut sink = [0u8; 4096];
        // Bounded in bytes as well as time, so a client streaming input cannot keep us here.
        let mut budget: usize = 64 * 1024;
        while budget > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(limits.linger, drain).await;
}

#[cfg(test)]
mod tests;
