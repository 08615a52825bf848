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
mod tests {
    use super::*;

    use std::net::SocketAddr;

    use tokio::task::JoinHandle;

    /// Every client-side step in the tests is bounded, so a broken server fails the
    /// test instead of hanging it.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    fn assert_line(text: &str, line: &str) {
        assert!(
            lines(text).contains(&line),
            "missing line {line:?} in:\n{text}"
        );
    }

    #[tokio::test]
    async fn counters_are_rendered_with_exact_sample_lines() {
        let metrics = Metrics::new();
        metrics.message("inbound", "accept");
        metrics.message("inbound", "accept");
        metrics.message("inbound", "reject");
        metrics.message("outbound", "tempfail");
        metrics.check("spf", "pass", Duration::from_millis(3));
        metrics.check("spf", "fail", Duration::from_millis(5));
        metrics.check("spf", "pass", Duration::from_millis(7));
        metrics.check("rbl", "cancelled", Duration::from_millis(1));
        metrics.reload(true);
        metrics.reload(false);
        metrics.reload(true);

        let text = metrics.render();
        assert_line(
            &text,
            r#"dispatch_milter_messages_total{pipeline="inbound",verdict="accept"} 2"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_messages_total{pipeline="inbound",verdict="reject"} 1"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_messages_total{pipeline="outbound",verdict="tempfail"} 1"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_results_total{check="spf",result="pass"} 2"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_results_total{check="spf",result="fail"} 1"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_results_total{check="rbl",result="cancelled"} 1"#,
        );
        assert_line(&text, r#"dispatch_milter_reloads_total{result="ok"} 2"#);
        assert_line(&text, r#"dispatch_milter_reloads_total{result="failed"} 1"#);

        // The family metadata: names without the `_total` the samples carry, as
        // OpenMetrics requires, and the types and help texts.
        assert_line(&text, "# TYPE dispatch_milter_messages counter");
        assert_line(&text, "# TYPE dispatch_milter_check_results counter");
        assert_line(&text, "# TYPE dispatch_milter_reloads counter");
        assert_line(&text, "# TYPE dispatch_milter_connections_open gauge");
        assert_line(
            &text,
            "# TYPE dispatch_milter_check_duration_seconds histogram",
        );
        assert_line(
            &text,
            "# UNIT dispatch_milter_check_duration_seconds seconds",
        );
        assert_line(
            &text,
            "# HELP dispatch_milter_messages Messages finished, by pipeline and verdict.",
        );
        // No doubled suffix anywhere.
        assert!(!text.contains("_total_total"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn reload_series_exist_before_any_reload() {
        let text = Metrics::new().render();
        assert_line(&text, r#"dispatch_milter_reloads_total{result="ok"} 0"#);
        assert_line(&text, r#"dispatch_milter_reloads_total{result="failed"} 0"#);
        assert_line(&text, "dispatch_milter_connections_open 0");
    }

    #[tokio::test]
    async fn connections_gauge_goes_up_and_down() {
        let metrics = Metrics::new();
        metrics.connection_opened();
        metrics.connection_opened();
        metrics.connection_opened();
        assert_line(&metrics.render(), "dispatch_milter_connections_open 3");
        metrics.connection_closed();
        assert_line(&metrics.render(), "dispatch_milter_connections_open 2");
        metrics.connection_closed();
        metrics.connection_closed();
        assert_line(&metrics.render(), "dispatch_milter_connections_open 0");
    }

    #[tokio::test]
    async fn refused_connections_are_counted_per_listener_from_zero() {
        let metrics = Metrics::new();
        metrics.listener_started("inet:127.0.0.1:7357");
        metrics.listener_started("unix:/run/m.sock");
        assert_line(
            &metrics.render(),
            r#"dispatch_milter_connections_refused_total{listener="inet:127.0.0.1:7357"} 0"#,
        );
        metrics.connection_refused("unix:/run/m.sock");
        metrics.connection_refused("unix:/run/m.sock");
        let text = metrics.render();
        assert_line(
            &text,
            r#"dispatch_milter_connections_refused_total{listener="unix:/run/m.sock"} 2"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_connections_refused_total{listener="inet:127.0.0.1:7357"} 0"#,
        );
        assert_line(&text, "# TYPE dispatch_milter_connections_refused counter");
    }

    #[tokio::test]
    async fn check_duration_histogram_counts_and_sums() {
        let metrics = Metrics::new();
        // Binary fractions, so the sum is exact and its text predictable.
        metrics.check("dnsbl", "pass", Duration::from_secs_f64(0.25));
        metrics.check("dnsbl", "fail", Duration::from_secs_f64(0.5));
        metrics.check("dnsbl", "timeout", Duration::from_secs(30));
        metrics.check("spf", "pass", Duration::from_secs_f64(0.125));

        let text = metrics.render();
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_count{check="dnsbl"} 3"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_sum{check="dnsbl"} 30.75"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_count{check="spf"} 1"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_sum{check="spf"} 0.125"#,
        );
        // Buckets are cumulative; the 30 s timeout falls in the top finite bucket.
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_bucket{le="0.256",check="dnsbl"} 1"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_bucket{le="0.512",check="dnsbl"} 2"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_bucket{le="16.384",check="dnsbl"} 2"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_bucket{le="32.768",check="dnsbl"} 3"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_bucket{le="+Inf",check="dnsbl"} 3"#,
        );
        assert_line(
            &text,
            r#"dispatch_milter_check_duration_seconds_bucket{le="0.0005",check="spf"} 0"#,
        );
    }

    #[tokio::test]
    async fn clones_record_into_the_same_registry() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        let task = tokio::spawn(async move {
            clone.message("inbound", "discard");
            clone.connection_opened();
        });
        task.await.unwrap();
        metrics.message("inbound", "discard");
        let text = metrics.render();
        assert_line(
            &text,
            r#"dispatch_milter_messages_total{pipeline="inbound",verdict="discard"} 2"#,
        );
        assert_line(&text, "dispatch_milter_connections_open 1");
    }

    #[tokio::test]
    async fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.message("in\"bound\n", "accept");
        assert_line(
            &metrics.render(),
            r#"dispatch_milter_messages_total{pipeline="in\"bound\n",verdict="accept"} 1"#,
        );
    }

    #[test]
    fn head_end_finds_crlf_and_lf_terminators() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"\n", 5), None);
    }

    #[test]
    fn request_line_parsing_rejects_garbage() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Some(("GET", "/metrics", "HTTP/1.1"))
        );
        assert_eq!(parse_request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"GET  /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"G(T / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"\xff\xfe / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"\r\n\r\n"), None);
    }

    /// Binds a loopback port and serves on it; the handle aborts the server.
    async fn start(metrics: Arc<Metrics>, limits: Limits) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_with(metrics, listener, limits));
        (addr, server)
    }

    /// Sends raw bytes, half-closes, and reads everything until the server closes.
    /// A reset counts as a close: the server may drop a connection it refuses.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let run = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // A server that refuses early may close while we are still writing.
            let _ = stream.write_all(request).await;
            let _ = stream.shutdown().await;
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response).await;
            String::from_utf8_lossy(&response).into_owned()
        };
        tokio::time::timeout(CLIENT_TIMEOUT, run)
            .await
            .expect("server neither answered nor closed")
    }

    fn split_response(response: &str) -> (&str, &str) {
        response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in response {response:?}"))
    }

    async fn assert_metrics_served(addr: SocketAddr) {
        let response = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n",
        )
        .await;
        let (head, body) = split_response(&response);
        let head_lines = lines(head);
        assert_eq!(head_lines[0], "HTTP/1.1 200 OK", "{response}");
        assert!(
            head_lines.contains(&format!("Content-Type: {CONTENT_TYPE}").as_str()),
            "{head}"
        );
        assert!(head_lines.contains(&"Connection: close"), "{head}");
        assert!(
            head_lines.contains(&format!("Content-Length: {}", body.len()).as_str()),
            "{head}"
        );
        assert_line(
            body,
            r#"dispatch_milter_messages_total{pipeline="inbound",verdict="accept"} 1"#,
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    fn metrics_with_a_message() -> Arc<Metrics> {
        let metrics = Arc::new(Metrics::new());
        metrics.message("inbound", "accept");
        metrics
    }

    #[tokio::test]
    async fn http_serves_metrics_via_public_serve() {
        let metrics = metrics_with_a_message();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(Arc::clone(&metrics).serve(listener));

        assert_metrics_served(addr).await;
        // Recorded after the first scrape, seen by the next one.
        metrics.connection_opened();
        let response = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_line(&response, "dispatch_milter_connections_open 1");

        server.abort();
    }

    #[tokio::test]
    async fn http_query_string_is_ignored() {
        let (addr, server) = start(metrics_with_a_message(), Limits::DEFAULT).await;
        let response = exchange(addr, b"GET /metrics?module=x HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        server.abort();
    }

    #[tokio::test]
    async fn http_unknown_paths_get_404() {
        let (addr, server) = start(metrics_with_a_message(), Limits::DEFAULT).await;
        for path in ["/nope", "/", "/metrics/", "/metricsx"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            let response = exchange(addr, request.as_bytes()).await;
            let (head, body) = split_response(&response);
            assert!(
                head.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{path}: {head}"
            );
            assert!(!body.contains("dispatch_milter"), "{path}: {body}");
        }
        server.abort();
    }

    #[tokio::test]
    async fn http_other_methods_get_405() {
        let (addr, server) = start(metrics_with_a_message(), Limits::DEFAULT).await;
        for method in ["POST", "HEAD", "PUT", "DELETE", "get"] {
            let request = format!("{method} /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
            let response = exchange(addr, request.as_bytes()).await;
            let (head, _) = split_response(&response);
            assert!(
                head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
                "{method}: {head}"
            );
            assert_line(head, "Allow: GET");
        }
        server.abort();
    }

    #[tokio::test]
    async fn http_survives_garbage_and_oversized_heads() {
        let (addr, server) = start(metrics_with_a_message(), Limits::DEFAULT).await;

        let garbage: &[&[u8]] = &[
            b"\x00\x01\x02\xff\xfe\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello start
            b"GET\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"GET /metrics HTTP/1.1", // closed before the head ends
            b"\r\n\r\n",
            b"",
        ];
        for request in garbage {
            let response = exchange(addr, request).await;
            // Either a 4xx/5xx response or a plain close; never a 200.
            assert!(
                response.is_empty()
                    || response.starts_with("HTTP/1.1 4")
                    || response.starts_with("HTTP/1.1 5"),
                "{request:?} -> {response:?}"
            );
        }

        // A head larger than 8 KiB with no end: refused with 431 (or closed).
        let mut oversized = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while oversized.len() < 16 * 1024 {
            oversized.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let response = exchange(addr, &oversized).await;
        assert!(
            response.is_empty() || response.starts_with("HTTP/1.1 431 "),
            "{response:?}"
        );

        // One long line that never ends, too.
        let response = exchange(addr, &vec![b'A'; 20 * 1024]).await;
        assert!(
            response.is_empty() || response.starts_with("HTTP/1.1 431 "),
            "{response:?}"
        );

        // A head just under the limit is still served.
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() < 7 * 1024 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let response = exchange(addr, &big).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");

        // The server is still alive and answering.
        assert!(!server.is_finished());
        assert_metrics_served(addr).await;
        server.abort();
    }

    #[tokio::test]
    async fn http_stalled_client_is_disconnected_after_read_timeout() {
        let limits = Limits {
            read_timeout: Duration::from_millis(200),
            ..Limits::DEFAULT
        };
        let (addr, server) = start(metrics_with_a_message(), limits).await;

        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        // Without the rest of the head, the server must give up and close.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(CLIENT_TIMEOUT, stalled.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "server kept a stalled connection open");
        assert!(rest.is_empty(), "{rest:?}");

        assert_metrics_served(addr).await;
        server.abort();
    }

    #[tokio::test]
    async fn http_connection_limit_queues_rather_than_refuses() {
        let limits = Limits {
            max_connections: 2,
            read_timeout: Duration::from_millis(300),
            ..Limits::DEFAULT
        };
        let (addr, server) = start(metrics_with_a_message(), limits).await;

        // Two idle connections take both slots; a scrape waits for a slot, which the
        // read timeout frees, and is then answered.
        let _idle1 = TcpStream::connect(addr).await.unwrap();
        let _idle2 = TcpStream::connect(addr).await.unwrap();
        assert_metrics_served(addr).await;
        server.abort();
    }

    #[tokio::test]
    async fn http_concurrent_scrapes() {
        let (addr, server) = start(metrics_with_a_message(), Limits::DEFAULT).await;
        let mut scrapes = JoinSet::new();
        for _ in 0..16 {
            scrapes.spawn(assert_metrics_served(addr));
        }
        while let Some(result) = scrapes.join_next().await {
            result.unwrap();
        }
        server.abort();
    }
}
