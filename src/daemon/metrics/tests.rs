use super::*;

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// The head ends at an empty line, with CRLF or bare LF line ends (RFC 9112
/// §2.2 lets a recipient accept LF); the end is found wherever the reads split it.
#[tokio::test]
async fn http_head_ends_with_crlf_or_lf() {
    let (addr, server) = start(metrics_with_a_message(), Limits::DEFAULT).await;
    for request in [
        &b"GET /metrics HTTP/1.1\r\n\r\n"[..],
        b"GET /metrics HTTP/1.1\n\n",
        b"GET /metrics HTTP/1.1\nHost: x\n\n",
    ] {
        let response = exchange(addr, request).await;
        assert!(
            response.starts_with("HTTP/1.1 200 OK\r\n"),
            "{request:?} -> {response:?}"
        );
    }
    // The blank line split across two writes.
    let run = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r")
            .await
            .unwrap();
        stream.flush().await.unwrap();
        tokio::task::yield_now().await;
        stream.write_all(b"\n").await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    };
    let response = tokio::time::timeout(CLIENT_TIMEOUT, run)
        .await
        .expect("server neither answered nor closed");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    // A head that has not ended is not answered: the client closed first.
    let response = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
    assert!(!response.starts_with("HTTP/1.1 200"), "{response:?}");
    server.abort();
}

/// A request line that is not `METHOD SP target SP HTTP-version` (a missing
/// version, two spaces, a method that is not an HTTP token, bytes that are not
/// text, nothing at all) is never served.
#[tokio::test]
async fn http_malformed_request_lines_are_refused() {
    let (addr, server) = start(metrics_with_a_message(), Limits::DEFAULT).await;
    for request in [
        &b"GET /metrics\r\n\r\n"[..],
        b"GET  /metrics HTTP/1.1\r\n\r\n",
        b"G(T /metrics HTTP/1.1\r\n\r\n",
        b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        b"\r\n\r\n",
    ] {
        let response = exchange(addr, request).await;
        assert!(
            response.is_empty()
                || response.starts_with("HTTP/1.1 4")
                || response.starts_with("HTTP/1.1 5"),
            "{request:?} -> {response:?}"
        );
    }
    assert_metrics_served(addr).await;
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
