//! Connections that hold the daemon without using it: idle TCP connections
//! at the `max_connections` limit, the `connections_open` gauge, the
//! `connection_timeout` that closes silent connections, and the open file
//! limit checked at start (with the real `serve` binary, whose limits a test
//! can set before it starts).

use crate::common;

use common::daemon::{LISTEN, TestDaemon, greet, open, open_greeted};
use common::raw_milter::{ALL_ACTIONS, CONTINUE, OPTNEG, RawMilter};
use common::wait::{self, WAIT};
use indymilter_test::Status;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Every message is accepted with a header, so a served message shows.
const POLICY: &str = r#"
[modifiers.tag]
kind = "add_header"
name = "X-Dispatch"
value = "checked"

[pipelines.mx]
modify = ["tag"]
[pipelines.mx.default]
action = "accept"
"#;

fn config(server: &str) -> String {
    format!("[server]\n{server}\n{LISTEN}{POLICY}")
}

/// Opens `n` TCP connections that never send anything.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    idle
}

fn gauge(d: &TestDaemon) -> Option<i64> {
    d.daemon()
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("dispatch_milter_connections_open "))
        .and_then(|v| v.parse().ok())
}

/// Waits until the gauge reads `n` (accepting happens in the daemon's own
/// time), or fails with what it read last.
async fn wait_for_gauge(d: &TestDaemon, n: i64) {
    let reads = wait::within(WAIT, || gauge(d) == Some(n)).await;
    assert!(
        reads,
        "connections_open should read {n}, reads {:?}",
        gauge(d)
    );
}

/// GET /metrics over HTTP, the way Prometheus scrapes.
async fn scrape(addr: SocketAddr) -> String {
    let body = common::serve::scrape_metrics(addr).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// One message from connect to end of message, as Postfix would send it;
/// returns how long the daemon took, negotiation included.
async fn serve_one_message(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut conn = tokio::time::timeout(WAIT, open(addr))
        .await
        .expect("the daemon should negotiate");
    greet(&mut conn, "mx").await;
    assert_eq!(
        conn.mail(["<someone@example.net>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt(["<alice@example.org>"]).await.unwrap(),
        Status::Continue
    );
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(
        actions.has_add_header("X-Dispatch", " checked"),
        "{actions:?}"
    );
    let elapsed = started.elapsed();
    conn.close().await.unwrap();
    elapsed
}

#[tokio::test]
async fn past_the_limit_a_connection_is_closed_at_once_and_served_once_one_frees() {
    const N: usize = 50;
    let mut d = TestDaemon::start(&config(&format!(
        "max_connections = {N}\nmetrics_listen = \"127.0.0.1:0\""
    )))
    .await;
    let metrics = d.daemon().metrics_address.expect("metrics listener");
    let mut idle = idle_connections(d.addr(), N).await;

    // Connections that never sent a command are open, and counted.
    wait_for_gauge(&d, N as i64).await;
    let body = scrape(metrics).await;
    assert!(
        body.contains(&format!("dispatch_milter_connections_open {N}\n")),
        "{body}"
    );

    // One more: the MTA's negotiation is answered by a close, at once, so
    // it applies milter_default_action now rather than after its
    // milter_command_timeout.
    let started = Instant::now();
    let mut over = RawMilter::connect(d.addr()).await.expect("connect");
    // The daemon may close before or after the bytes arrive.
    let _ = over
        .send(OPTNEG, &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0, 0, 0])
        .await;
    let seen = over
        .closed_within(Duration::from_secs(2))
        .await
        .expect("the connection past the limit should be closed at once");
    let refused_in = started.elapsed();
    assert!(seen.is_empty(), "no reply past the limit: {seen:?}");
    let body = scrape(metrics).await;
    assert!(
        body.contains(&format!(
            "dispatch_milter_connections_refused_total{{listener=\"inet:{}\"}} 1\n",
            d.addr()
        )),
        "{body}"
    );
    // The refused connection never counted as open.
    assert!(
        body.contains(&format!("dispatch_milter_connections_open {N}\n")),
        "{body}"
    );

    // One idle connection goes: its place serves a whole message.
    drop(idle.pop());
    wait_for_gauge(&d, N as i64 - 1).await;
    let served_in = serve_one_message(d.addr()).await;
    eprintln!(
        "{N} idle connections, max_connections = {N}: the next connection was closed in {refused_in:?}; \
         after one idle connection closed, a message was served in {served_in:?}"
    );
    assert!(refused_in < Duration::from_secs(1), "{refused_in:?}");

    drop(idle);
    wait_for_gauge(&d, 0).await;
    d.shutdown().await;
}

#[tokio::test]
async fn idle_connections_count_beside_a_message_that_is_served_at_once() {
    let mut d = TestDaemon::start(&config("max_connections = 100")).await;
    let idle = idle_connections(d.addr(), 50).await;
    wait_for_gauge(&d, 50).await;

    let started = Instant::now();
    let mut conn = open_greeted(d.addr(), "mx").await;
    // The message's connection is the 51st.
    assert_eq!(gauge(&d), Some(51));
    conn.mail(["<someone@example.net>"]).await.unwrap();
    conn.rcpt(["<alice@example.org>"]).await.unwrap();
    let (_, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    let served_in = started.elapsed();
    eprintln!("50 idle connections, max_connections = 100: a message was served in {served_in:?}");
    assert!(served_in < Duration::from_secs(2), "{served_in:?}");
    conn.close().await.unwrap();
    wait_for_gauge(&d, 50).await;

    drop(idle);
    wait_for_gauge(&d, 0).await;
    d.shutdown().await;
}

// On tokio's paused clock: the daemon runs in this runtime, so its
// connection timeout and the test's pauses are on one clock that moves only
// when every task waits; the silences last exactly as long as written, and
// the test takes no wall time for them.
#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_connection_timeout() {
    let mut d = TestDaemon::start(&config("connection_timeout = \"1s\"")).await;

    // Never a command.
    let started = tokio::time::Instant::now();
    let mut silent = RawMilter::connect(d.addr()).await.expect("connect");
    let seen = silent
        .closed_within(WAIT)
        .await
        .expect("a silent connection should be closed");
    let closed_after = started.elapsed();
    assert!(seen.is_empty(), "{seen:?}");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed after {closed_after:?}, before the timeout"
    );

    // Silent after negotiation and CONNECT, as an MTA that stopped talking.
    let mut quiet = RawMilter::connect(d.addr()).await.expect("connect");
    quiet.negotiate(ALL_ACTIONS).await.expect("negotiate");
    let (reply, _) = quiet
        .connect_from("client.example.net", "192.0.2.10")
        .await
        .expect("connect reply");
    assert_eq!(reply, CONTINUE);
    let started = tokio::time::Instant::now();
    quiet
        .closed_within(WAIT)
        .await
        .expect("a connection silent mid-session should be closed");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // The timeout is for each silence, not for the connection: pauses
    // shorter than it, adding up to more, keep the connection served.
    let mut slow = RawMilter::connect(d.addr()).await.expect("connect");
    slow.negotiate(ALL_ACTIONS).await.expect("negotiate");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (reply, _) = slow
        .connect_from("client.example.net", "192.0.2.10")
        .await
        .expect("connect reply");
    assert_eq!(reply, CONTINUE);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (reply, _) = slow
        .command(common::raw_milter::HELO, b"client.example.net\0")
        .await
        .expect("helo reply after 1.2 s on the connection");
    assert_eq!(reply, CONTINUE);

    drop(slow);
    wait_for_gauge(&d, 0).await;
    d.shutdown().await;
}

/// The real binary with an open file limit set before it starts.
mod binary {
    use super::*;
    use common::serve::Serve;
    use std::os::unix::process::CommandExt;

    /// `serve` on a config of two TCP listeners, with the
    /// open file limit set to `soft`/`hard` in the child before exec.
    fn start(server: &str, soft: u64, hard: u64) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("milter-config.toml");
        let config = format!("[server]\nlog_format = \"json\"\n{server}\n{LISTEN}{LISTEN}{POLICY}");
        std::fs::write(&path, config).expect("write config");
        let mut command = Serve::command(&path);
        // SAFETY: setrlimit is async-signal-safe, and the closure touches
        // nothing but its two copied integers.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Serve::spawn(command, &path).keeping(dir)
    }

    /// The process's open file limit, soft and hard, from /proc.
    fn open_file_limit(serve: &Serve) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.child.id()))
            .expect("read /proc/PID/limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("an open files line");
        let mut values = line["Max open files".len()..].split_whitespace();
        let mut next = || {
            values
                .next()
                .and_then(|v| v.parse().ok())
                .expect("a number")
        };
        (next(), next())
    }

    #[tokio::test]
    async fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
        // Two listeners of 500 need 1,064; the soft limit goes to the hard one.
        let mut serve = start("max_connections = 500", 256, 20_000);
        let raised = serve
            .wait_for_containing("raised the soft open file limit")
            .await;
        assert_eq!(raised["fields"]["from"], 256, "{raised}");
        assert_eq!(raised["fields"]["to"], 20_000, "{raised}");
        serve.ready_all().await;
        assert_eq!(open_file_limit(&serve), (20_000, 20_000));
    }

    #[tokio::test]
    async fn under_a_low_hard_limit_each_listener_serves_fewer_and_says_what_to_raise() {
        // Two listeners of 100 need 264 descriptors; 200 leave room for
        // (200 - 64) / 2 = 68 connections on each.
        let mut serve = start("max_connections = 100", 100, 200);
        let warning = serve
            .wait_for_containing("the open file limit is too low")
            .await;
        assert_eq!(warning["level"], "WARN", "{warning}");
        assert_eq!(warning["fields"]["serving"], 68, "{warning}");
        assert_eq!(warning["fields"]["needed"], 264, "{warning}");
        let message = warning["fields"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("LimitNOFILE="), "{message}");
        let listeners = serve.ready_all().await;
        assert_eq!(open_file_limit(&serve), (200, 200));

        // The 69th connection to the first listener is closed at once; the
        // kernel queues connections in order, so the 68 before it were
        // accepted first, and they stay open.
        let mut idle = idle_connections(listeners[0], 68).await;
        let mut over = RawMilter::connect(listeners[0]).await.expect("connect");
        over.closed_within(Duration::from_secs(2))
            .await
            .expect("the 69th connection should be closed at once");
        for (i, conn) in idle.iter_mut().enumerate() {
            let mut byte = [0u8; 1];
            match conn.try_read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => panic!("idle connection {i} should stay open: {other:?}"),
            }
        }
        // The other listener counts its own connections.
        serve_one_message(listeners[1]).await;
        drop(idle);
    }

    #[tokio::test]
    async fn a_hard_limit_with_no_room_for_connections_stops_the_start() {
        let mut serve = start("max_connections = 100", 60, 60);
        let error = serve.wait_for_containing("cannot start").await;
        let text = error["fields"]["error"].as_str().unwrap_or_default();
        assert!(text.contains("leaves no room for connections"), "{error}");
        assert!(text.contains("LimitNOFILE="), "{error}");
        let status = serve.wait_exit(WAIT).await;
        assert_eq!(status.code(), Some(1));
    }
}
