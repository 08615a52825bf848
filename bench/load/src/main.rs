//! `dispatch-milter-load`: the load generator of docs/benchmarks.md, a
//! tool of its own beside the daemon (the product binary does not carry
//! it).

use clap::Parser;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Play the MTA against a running dispatch-milter (or any milter) and
/// measure it: messages per second, latency per stage, every reply that was
/// not CONTINUE (docs/benchmarks.md).
#[derive(Parser)]
#[command(name = "dispatch-milter-load", version)]
struct Args {
    /// The daemon: inet:IP:PORT or unix:/path.
    #[arg(long, default_value = "inet:127.0.0.1:7357")]
    connect: String,
    /// Concurrent milter connections (one SMTP session each).
    #[arg(short = 'n', long, default_value_t = 10)]
    connections: usize,
    /// Messages per connection (0 with --hold: idle connections).
    #[arg(short = 'm', long, default_value_t = 100)]
    messages: usize,
    /// small, typical (40 KiB attachment), large (1 MiB) or mixed.
    #[arg(long, default_value = "typical")]
    corpus: String,
    /// Instead of --corpus: send this message file (RFC 5322, LF or CRLF)
    /// every time, for example a DKIM-signed message to verify.
    #[arg(long)]
    message: Option<PathBuf>,
    /// Instead of --corpus: bodies of about this size ("50M").
    #[arg(long)]
    message_size: Option<String>,
    /// Keep each connection open and idle this long after its messages ("30s").
    #[arg(long, default_value = "0s")]
    hold: String,
    #[arg(long, default_value = "someone@example.net")]
    from: String,
    /// A recipient; repeat for several.
    #[arg(long, default_values_t = vec!["alice@example.org".to_string()])]
    to: Vec<String>,
    #[arg(long, default_value = "192.0.2.10")]
    client_ip: IpAddr,
    #[arg(long, default_value = "client.example.net")]
    helo: String,
    #[arg(long, default_value = "smtpd")]
    daemon_name: String,
    #[arg(long)]
    auth_user: Option<String>,
    #[arg(long)]
    tls: bool,
    /// Pause between SMTP commands, like a real client's round trips ("200ms").
    #[arg(long, default_value = "0s")]
    pace: String,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let target = match dispatch_milter::server_config::ListenAddress::parse(&args.connect) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("--connect: {e}");
            return exit(2);
        }
    };
    let corpus = match &args.message_size {
        Some(size) => match dispatch_milter::config::options::parse_size(size)
            .and_then(|n| usize::try_from(n).ok())
        {
            Some(n) => dispatch_milter_load::Corpus::Sized(n),
            None => {
                eprintln!("--message-size: write a size such as \"50M\"");
                return exit(2);
            }
        },
        None => match dispatch_milter_load::Corpus::parse(&args.corpus) {
            Some(c) => c,
            None => {
                eprintln!("--corpus: use small, typical, large or mixed");
                return exit(2);
            }
        },
    };
    let pace = match humantime::parse_duration(&args.pace) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("--pace: {e}; write a duration such as \"200ms\"");
            return exit(2);
        }
    };
    let hold = match humantime::parse_duration(&args.hold) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("--hold: {e}; write a duration such as \"30s\"");
            return exit(2);
        }
    };
    let message = match &args.message {
        Some(path) => match std::fs::read(path) {
            Ok(raw) => Some(std::sync::Arc::new(
                dispatch_milter_load::FileMessage::parse(&raw),
            )),
            Err(e) => {
                eprintln!("--message: cannot read {}: {e}", path.display());
                return exit(2);
            }
        },
        None => None,
    };
    let cfg = dispatch_milter_load::LoadConfig {
        target,
        connections: args.connections.max(1),
        // 0 only makes sense with --hold, but is harmless without it.
        messages: args.messages,
        corpus,
        from: args.from,
        to: args.to,
        client_ip: args.client_ip,
        helo: args.helo,
        daemon_name: args.daemon_name,
        auth_user: args.auth_user,
        tls: args.tls,
        pace,
        hold,
        message,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return exit(1);
        }
    };
    let report = runtime.block_on(dispatch_milter_load::run(cfg));
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print!("{}", dispatch_milter_load::render(&report));
    }
    exit(if report.errors.is_empty() { 0 } else { 1 })
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
