//! Prometheus metrics for the milter: counters for messages, check results, reloads and
//! refused connections, a histogram of check durations and a gauge of open milter
//! connections, kept in a `prometheus-client` registry and served as OpenMetrics text by
//! hyper's HTTP/1.1 server, one request per connection.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::convert::Infallible;
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
    /// All the daemon's metrics, registered and at zero.
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

    pub(crate) fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// a listener starts: its refused-connections series exists from now on, at 0
    pub(crate) fn listener_started(&self, listener: &str) {
        drop(self.connections_refused.get_or_create(&ListenerLabels {
            listener: listener.to_owned(),
        }));
    }

    /// a connection closed at once because its listener was full
    pub(crate) fn connection_refused(&self, listener: &str) {
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
    /// Time allowed for the whole request head, not per read, against slow-loris
    /// clients; it runs from the accept, so a client that sends nothing is closed too.
    read_timeout: Duration,
    /// Time allowed after that to answer a client that does not read the response.
    write_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    max_connections: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        head_bytes: 8 * 1024,
        read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
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

/// One request per connection, answered by hyper's HTTP/1 server. hyper parses the
/// head (CRLF or bare LF line ends, RFC 9112 §2.2) and answers what it cannot parse
/// itself: 400 for a malformed request, 431 for a head over `head_bytes`. A client
/// that stalls gets no response: there is nobody to read it.
async fn handle_connection(metrics: Arc<Metrics>, stream: TcpStream, limits: Limits) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = route(&metrics, &request);
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        // The head is bounded in bytes, as before hyper: its buffer never grows past
        // the limit (8 KiB is hyper's smallest buffer), and the number of header
        // lines is bounded only by what fits, the shortest line being "a:" CRLF.
        .max_header_size(limits.head_bytes)
        .max_buf_size(limits.head_bytes.max(8 * 1024))
        .max_headers(limits.head_bytes / 4)
        // One request per connection (hyper then sends `Connection: close`), and
        // header names spelled the usual way (Content-Type, not content-type).
        .keep_alive(false)
        .title_case_headers(true);
    let connection = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.read_timeout + limits.write_timeout, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(error = %err, "metrics: connection failed"),
        Err(_elapsed) => tracing::debug!("metrics: connection timed out"),
    }
}

fn text(status: StatusCode) -> Response<String> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let mut response = Response::new(format!("{reason}\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Maps a request to a response by its method and path. Headers and body select
/// nothing; a query string neither (Prometheus may append scrape `params`).
fn route<B>(metrics: &Metrics, request: &Request<B>) -> Response<String> {
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    if request.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND);
    }
    match metrics.try_render() {
        Ok(body) => {
            let mut response = Response::new(body);
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

#[cfg(test)]
mod tests;
