//! Latency behind a real Postfix with every DNS answer delayed by L
//! (docs/benchmarks.md section 2): how long Postfix keeps an SMTP client
//! waiting for the milter at each stage of a message. Prints figures and
//! asserts only that every message was accepted and carries the daemon's
//! Authentication-Results; run on demand, in release mode, as root:
//!
//!     LATENCY_BEFORE=/path/to/an/older/dispatch-milter \
//!       cargo test --release --test bench latency:: -- --nocapture
//!
//! An SMTP client in this process sends one message per session (as an MX
//! receives mail) and times each reply from the moment its command was
//! written: the banner (from connect), EHLO, MAIL, RCPT, DATA, and the end
//! of data. The same is done against a Postfix without a milter; a stage's
//! delay is its median minus that Postfix's median for the same stage.
//!
//! The daemon runs the MX checks (tests/common/mod.rs `mx_checks`: DNSBL
//! with three lists, iprev, SPF, DKIM, DMARC) with the resolver cache off,
//! so every message waits for DNS, against the loopback DNS server of
//! tests/common/dns_server.rs, in this process, which delays every answer by
//! `LATENCY_DNS_MS` (100). The longest chain of dependent lookups is iprev's
//! PTR then A: 2·L. The message is unsigned (DKIM asks nothing).
//!
//! Configurations, each its own throwaway Postfix (tests/common/postfix.rs)
//! relaying to a sink in this process: `none` (no milter), `tcp` and
//! `unix` (this build's binary over `inet:` and over a UNIX socket), and,
//! when `LATENCY_BEFORE` names another build of the binary, `before-tcp`
//! and `before-unix` with it. They take turns message by message for
//! `LATENCY_ROUNDS` (5) rounds of `LATENCY_MESSAGES` (4) messages each.

use crate::common;

use common::dns_server::DnsServer;
use common::postfix::{self, Postfix, Sink, Wiring};
use common::wait;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_dispatch-milter");
const FROM: &str = "alice@example.org";
const TO: &str = "bob@example.net";
const STAGES: [&str; 6] = ["banner", "ehlo", "mail", "rcpt", "data", "eom"];

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The test zones, with what mail from 127.0.0.1 (Postfix's client here)
/// needs to pass every check: SPF allows 127.0.0.0/8, 127.0.0.1 has
/// forward-confirmed reverse DNS, and no DNSBL lists it.
async fn dns() -> DnsServer {
    let server = DnsServer::start_with_test_zones().await;
    server.load_zone_dir(common::dns_server::zones_dir().join("dnsbl"));
    server.remove_records("example.org", common::dns_server::RecordType::TXT);
    server.add_txt("example.org", "v=spf1 ip4:127.0.0.0/8 -all");
    server.add_zone("org");
    server.add_zone("127.in-addr.arpa");
    server.add_ptr_for("127.0.0.1".parse().unwrap(), "loopback.example.org");
    server.add_a("loopback.example.org", "127.0.0.1".parse().unwrap());
    server
}

/// A daemon process on one TCP port and one UNIX socket, killed when
/// dropped.
struct Daemon {
    child: Child,
    tcp: SocketAddr,
    unix: PathBuf,
    log: PathBuf,
}

impl Daemon {
    async fn start(bin: &str, dir: &Path, name: &str, dns: SocketAddr) -> Daemon {
        let tcp = SocketAddr::from(([127, 0, 0, 1], postfix::free_port()));
        let unix = dir.join(format!("{name}.sock"));
        let policy = common::mx_checks(&format!("nameservers = [\"{dns}\"]\ncache_size = 0"));
        let config = format!(
            "[server]\nlog_level = \"warn\"\n\
             [[server.listen]]\naddress = \"inet:{tcp}\"\n\
             [[server.listen]]\naddress = \"unix:{}\"\nsocket_mode = \"0666\"\n{policy}",
            unix.display()
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("config");
        let log = dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .arg("serve")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let mut d = Daemon {
            child,
            tcp,
            unix,
            log,
        };
        let listening = wait::within_async(Duration::from_secs(30), async || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("{bin} exited with {status}:\n{}", d.log());
            }
            TcpStream::connect(d.tcp).await.is_ok() && d.unix.exists()
        })
        .await;
        assert!(listening, "{bin} not listening after 30 s:\n{}", d.log());
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One SMTP reply's code, read whole (continuation lines included).
async fn reply(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        let n = postfix::bounded(postfix::STEP, "SMTP reply", read.read_line(&mut line))
            .await
            .expect("SMTP reply");
        assert!(n > 0, "the server closed the connection");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
}

/// One message in one SMTP session; each stage's wait in milliseconds.
async fn timed_message(addr: SocketAddr, subject: &str) -> [f64; 6] {
    let mut t = [0.0; 6];
    let start = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("SMTP connect");
    stream.set_nodelay(true).ok();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let code = reply(&mut read).await;
    t[0] = start.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(code, 220, "banner");
    let message = format!(
        "From: Alice <{FROM}>\r\nTo: <{TO}>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.org>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n\
         A few lines of text.\r\n.\r\n"
    );
    let steps = [
        ("EHLO client.example.org\r\n".to_string(), 250),
        (format!("MAIL FROM:<{FROM}>\r\n"), 250),
        (format!("RCPT TO:<{TO}>\r\n"), 250),
        ("DATA\r\n".to_string(), 354),
        (message, 250),
    ];
    for (i, (command, expected)) in steps.iter().enumerate() {
        let start = Instant::now();
        write
            .write_all(command.as_bytes())
            .await
            .expect("SMTP write");
        let code = reply(&mut read).await;
        t[i + 1] = start.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(code, *expected, "{} of {subject}", STAGES[i + 1]);
    }
    write.write_all(b"QUIT\r\n").await.expect("SMTP write");
    let _ = reply(&mut read).await;
    t
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_stage_latency() {
    postfix::require();
    let _serial = postfix::serial().await;
    let l = env_usize("LATENCY_DNS_MS", 100);
    let rounds = env_usize("LATENCY_ROUNDS", 5);
    let messages = env_usize("LATENCY_MESSAGES", 4);
    let before = std::env::var("LATENCY_BEFORE").ok();

    let server = dns().await;
    server.set_default_delay(Duration::from_millis(l as u64));
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        // Postfix's smtpd runs as `postfix` and must reach the sockets.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }

    let mut daemons = vec![(
        "",
        Daemon::start(BIN, dir.path(), "now", server.addr()).await,
    )];
    if let Some(b) = &before {
        daemons.push((
            "before-",
            Daemon::start(b, dir.path(), "before", server.addr()).await,
        ));
    }
    // (name, milter setting); "none" first, the reference.
    let mut configs: Vec<(String, String)> = vec![("none".into(), String::new())];
    for (prefix, d) in &daemons {
        // For a packet capture on lo (docs/benchmarks.md): which port is which.
        let which = if prefix.is_empty() {
            "this build"
        } else {
            "LATENCY_BEFORE"
        };
        println!("daemon ({which}): inet:{} unix:{}", d.tcp, d.unix.display());
        configs.push((format!("{prefix}tcp"), format!("inet:{}", d.tcp)));
        configs.push((
            format!("{prefix}unix"),
            format!("unix:{}", d.unix.display()),
        ));
    }
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    let wiring = Wiring {
        smtpd_milter: unused,
        non_smtpd_milter: unused,
        relay: sink.addr,
    };
    let base = Path::new("/dev/shm");
    let mut instances = Vec::new();
    for (name, milter) in &configs {
        let extra = format!("smtpd_milters = {milter}\nnon_smtpd_milters =\n");
        let pf = Postfix::start_in(base, &wiring, &extra).await;
        instances.push((name.clone(), pf));
    }

    println!(
        "\nlatency behind Postfix, every DNS answer delayed by L = {l} ms, resolver cache off; \
         one message per SMTP session; {rounds} rounds x {messages} messages per configuration"
    );
    // Warm-up: each Postfix starts its smtpd and cleanup processes.
    for (name, pf) in &instances {
        timed_message(pf.mx, &format!("warmup-{name}")).await;
    }
    let mut times: Vec<Vec<[f64; 6]>> = vec![Vec::new(); instances.len()];
    for round in 0..rounds {
        for m in 0..messages {
            for (i, (name, pf)) in instances.iter().enumerate() {
                let t = timed_message(pf.mx, &format!("lat-{name}-{round}-{m}")).await;
                times[i].push(t);
            }
        }
    }

    let per_stage = |i: usize, s: usize| median(times[i].iter().map(|t| t[s]).collect());
    let reference: Vec<f64> = (0..STAGES.len()).map(|s| per_stage(0, s)).collect();
    print!("{:<12}", "median ms");
    for s in STAGES {
        print!("{s:>9}");
    }
    println!("{:>9}{:>11}", "sum", "sum - 2L");
    print!("{:<12}", "none (abs)");
    for r in &reference {
        print!("{r:>9.1}");
    }
    println!();
    for (i, (name, _)) in instances.iter().enumerate().skip(1) {
        print!("{name:<12}");
        let mut sum = 0.0;
        for (s, r) in reference.iter().enumerate() {
            let d = per_stage(i, s) - r;
            sum += d;
            print!("{d:>9.1}");
        }
        println!("{sum:>9.1}{:>11.1}", sum - 2.0 * l as f64);
    }
    // And the whole session, median of the sums per message.
    print!("whole session, median ms:");
    for (i, (name, _)) in instances.iter().enumerate() {
        let total = median(times[i].iter().map(|t| t.iter().sum()).collect());
        print!("  {name} {total:.1}");
    }
    println!();

    // Proof that the checks ran: every message through a milter carries
    // the daemon's Authentication-Results with the checks' results.
    for (name, _) in instances.iter().skip(1) {
        let subject = format!("lat-{name}-0-0");
        let d = sink.wait_subject(&subject, 1).await;
        let ar = d[0].header("Authentication-Results");
        assert!(
            ar.iter()
                .any(|h| h.contains("mx.example.org") && h.contains("spf=pass")),
            "{name}: no Authentication-Results with spf=pass: {ar:?}"
        );
        if name == "tcp" {
            println!(
                "delivered through {name}: Authentication-Results: {}",
                ar[0]
            );
        }
    }
    let expected = (instances.len()) * (rounds * messages + 1);
    sink.wait_until(postfix::STEP, "every message", |all| all.len() >= expected)
        .await;
    drop(instances);
    for (_, d) in &daemons {
        let log = d.log();
        assert!(!log.contains("\"ERROR\""), "daemon errors:\n{log}");
    }
}

// ------------------------------------------------ Sendmail's write pattern ---

/// One command as Sendmail sends it: (macro stage, macros, command,
/// payload, the protocol flag that skips it, the flag that says it gets no
/// reply).
type Step = (Option<u8>, Vec<u8>, u8, Vec<u8>, u32, u32);

/// One milter packet, written on its own (one `write`).
async fn send_packet(s: &mut TcpStream, kind: u8, payload: &[u8]) {
    let mut p = u32::try_from(payload.len() + 1)
        .expect("small packet")
        .to_be_bytes()
        .to_vec();
    p.push(kind);
    p.extend_from_slice(payload);
    s.write_all(&p).await.expect("write to the milter");
}

/// Replies until one that ends the command (anything but a modification or
/// progress).
async fn read_reply(s: &mut TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        let len = postfix::bounded(postfix::STEP, "milter reply", s.read_u32())
            .await
            .expect("milter reply") as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await.expect("milter reply");
        if !b"+-2ehimbqp".contains(&p[0]) {
            let data = p.split_off(1);
            return (p[0], data);
        }
    }
}

fn nul(parts: &[&str]) -> Vec<u8> {
    parts
        .iter()
        .flat_map(|p| [p.as_bytes(), b"\0"].concat())
        .collect()
}

/// One message on one milter connection the way Sendmail's milter.c sends
/// it: Nagle on, and each stage's macro packet and its command as two
/// writes. Returns the milliseconds from the first macro packet to the end
/// of message's final reply.
async fn sendmail_like_message(addr: SocketAddr) -> f64 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // Nagle stays on, as in Sendmail (unless built with MILTER_NO_NAGLE).
    let mut offer = 6u32.to_be_bytes().to_vec();
    offer.extend_from_slice(&0x1ffu32.to_be_bytes());
    offer.extend_from_slice(&0x1f_ffffu32.to_be_bytes());
    send_packet(&mut s, b'O', &offer).await;
    let (kind, o) = read_reply(&mut s).await;
    assert_eq!(kind, b'O');
    let options = u32::from_be_bytes([o[8], o[9], o[10], o[11]]);
    let start = Instant::now();
    let steps: Vec<Step> = vec![
        (
            Some(b'C'),
            nul(&["j", "mx.example.org", "{daemon_name}", "mx"]),
            b'C',
            [
                nul(&["client.example.net"]),
                vec![b'4', 0, 25],
                nul(&["127.0.0.1"]),
            ]
            .concat(),
            0x1,
            0x1000,
        ),
        (
            Some(b'H'),
            Vec::new(),
            b'H',
            nul(&["client.example.net"]),
            0x2,
            0x2000,
        ),
        (
            Some(b'M'),
            nul(&["i", "4AB12C0D3", "{mail_addr}", FROM]),
            b'M',
            nul(&[&format!("<{FROM}>")]),
            0x4,
            0x4000,
        ),
        (
            Some(b'R'),
            nul(&["{rcpt_addr}", TO]),
            b'R',
            nul(&[&format!("<{TO}>")]),
            0x8,
            0x8000,
        ),
        (Some(b'T'), Vec::new(), b'T', Vec::new(), 0x200, 0x1_0000),
        (
            None,
            Vec::new(),
            b'L',
            nul(&["From", format!(" <{FROM}>").as_str()]),
            0x20,
            0x80,
        ),
        (None, Vec::new(), b'L', nul(&["Subject", " hi"]), 0x20, 0x80),
        (Some(b'N'), Vec::new(), b'N', Vec::new(), 0x40, 0x4_0000),
        (
            None,
            Vec::new(),
            b'B',
            b"Hello.\r\n".to_vec(),
            0x10,
            0x8_0000,
        ),
        (Some(b'E'), Vec::new(), b'E', Vec::new(), 0, 0),
    ];
    for (stage, macros, command, payload, no_callback, no_reply) in steps {
        if options & no_callback != 0 {
            continue;
        }
        if let Some(stage) = stage {
            send_packet(&mut s, b'D', &[&[stage][..], &macros].concat()).await;
        }
        send_packet(&mut s, command, &payload).await;
        if options & no_reply == 0 {
            let (kind, _) = read_reply(&mut s).await;
            assert!(
                b"ca".contains(&kind),
                "{} answered {}",
                command as char,
                kind as char
            );
        }
    }
    let took = start.elapsed().as_secs_f64() * 1000.0;
    send_packet(&mut s, b'Q', &[]).await;
    took
}

/// Milliseconds per message for a client that writes like Sendmail (see
/// [`sendmail_like_message`]), over TCP, no DNS delay: what the transport
/// adds. With `LATENCY_BEFORE`, the older build alongside, message by
/// message. Not Sendmail itself (which cannot be installed beside Postfix
/// on Debian), but its write pattern, from its milter.c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_write_pattern() {
    let messages = env_usize("LATENCY_MESSAGES", 4) * env_usize("LATENCY_ROUNDS", 5);
    let server = dns().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemons = vec![(
        "this build",
        Daemon::start(BIN, dir.path(), "now", server.addr()).await,
    )];
    if let Ok(b) = std::env::var("LATENCY_BEFORE") {
        daemons.push((
            "LATENCY_BEFORE",
            Daemon::start(&b, dir.path(), "before", server.addr()).await,
        ));
    }
    for (_, d) in &daemons {
        sendmail_like_message(d.tcp).await;
    }
    let mut times = vec![Vec::new(); daemons.len()];
    for _ in 0..messages {
        for (i, (_, d)) in daemons.iter().enumerate() {
            times[i].push(sendmail_like_message(d.tcp).await);
        }
    }
    println!(
        "\nA client writing like Sendmail (Nagle on, macros and command as two writes), MX checks, DNS answers not delayed, {messages} messages:"
    );
    for (i, (name, _)) in daemons.iter().enumerate() {
        let t = times[i].clone();
        let max = t.iter().copied().fold(0.0, f64::max);
        println!(
            "{name:<16} first macro packet to the final reply: median {:.1} ms, max {max:.1} ms",
            median(t)
        );
    }
}
