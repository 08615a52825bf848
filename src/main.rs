//! The dispatch-milter command line: parses arguments and calls the library.

use clap::{Parser, Subcommand};
use dispatch_milter::cli;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "dispatch-milter",
    version,
    about = "A policy milter for Postfix and Sendmail"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the milter daemon in the foreground, logging to stderr.
    Serve {
        /// The configuration file.
        #[arg(short, long, default_value = "milter-config.toml")]
        config: PathBuf,
        /// Use this DNS server (IP:PORT) instead of [dns] nameservers; repeat for several.
        #[arg(long)]
        nameserver: Vec<std::net::SocketAddr>,
    },
    /// Validate a configuration file and print a one-line summary.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "milter-config.toml")]
        config: PathBuf,
        /// Check as `serve --nameserver IP:PORT` would run it (the resolver
        /// is set up while checking: without this, /etc/resolv.conf must be
        /// readable when [dns] names no servers).
        #[arg(long)]
        nameserver: Vec<std::net::SocketAddr>,
    },
    /// Run the policy on one message offline and show what it would do.
    Test(Box<TestArgs>),
    /// Print the DNS TXT record that publishes a DKIM key's public half.
    DkimRecord {
        /// The private key file (PEM: PKCS#1 or PKCS#8, RSA or Ed25519).
        keyfile: PathBuf,
        /// The selector the record goes under (SELECTOR._domainkey.DOMAIN).
        #[arg(short, long)]
        selector: String,
    },
}

#[derive(clap::Args)]
struct TestArgs {
    #[arg(short, long, default_value = "milter-config.toml")]
    config: PathBuf,
    /// The pipeline to use (default: the first one in the file).
    #[arg(long)]
    pipeline: Option<String>,
    #[arg(long)]
    client_ip: IpAddr,
    #[arg(long)]
    client_name: Option<String>,
    #[arg(long)]
    helo: Option<String>,
    /// The envelope sender; "" for the null sender.
    #[arg(long)]
    from: String,
    /// An envelope recipient; repeat for several.
    #[arg(long, required = true)]
    to: Vec<String>,
    /// The SASL user name, as if the client had authenticated.
    #[arg(long)]
    auth_user: Option<String>,
    /// Pretend the client used TLS 1.3.
    #[arg(long)]
    tls: bool,
    /// The MTA's {daemon_name}.
    #[arg(long)]
    daemon_name: Option<String>,
    #[arg(long)]
    queue_id: Option<String>,
    /// Use this DNS server (IP:PORT) instead of [dns] nameservers; repeat for several.
    #[arg(long)]
    nameserver: Vec<std::net::SocketAddr>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
    /// The message file (RFC 5322: headers, a blank line, the body).
    message: PathBuf,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn registry_with(nameservers: &[std::net::SocketAddr]) -> dispatch_milter::config::Registry {
    let mut registry = dispatch_milter::config::Registry::builtin();
    if !nameservers.is_empty() {
        registry.set_nameservers(nameservers.to_vec());
    }
    registry
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::Serve { config, nameserver } = &args.command {
        // The daemon sets up its own logging from the config.
        let registry = registry_with(nameserver);
        let policy = match dispatch_milter::daemon::load_for_start(config, &registry) {
            Ok(p) => p,
            Err(code) => return exit(code),
        };
        return match dispatch_milter::daemon::runtime(&policy.server) {
            Ok(rt) => exit(rt.block_on(dispatch_milter::daemon::serve_loaded(
                policy, config, registry,
            ))),
            Err(e) => {
                eprintln!("cannot start the async runtime: {e}");
                exit(1)
            }
        };
    }
    init_logging();
    match args.command {
        Command::Serve { .. } => exit(0),
        Command::Check { config, nameserver } => {
            exit(cli::check::run(&config, &registry_with(&nameserver)))
        }
        Command::DkimRecord { keyfile, selector } => {
            exit(cli::dkim_record::run(&keyfile, &selector))
        }
        Command::Test(args) => {
            let TestArgs {
                config,
                pipeline,
                client_ip,
                client_name,
                helo,
                from,
                to,
                auth_user,
                tls,
                daemon_name,
                queue_id,
                json,
                message,
                nameserver,
            } = *args;
            let policy =
                match dispatch_milter::config::load_with(&config, &registry_with(&nameserver)) {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        eprintln!("{e}");
                        return exit(cli::EXIT_CONFIG);
                    }
                };
            let raw = match std::fs::read(&message) {
                Ok(raw) => raw,
                Err(e) => {
                    eprintln!("{}: cannot read the message: {e}", message.display());
                    return exit(1);
                }
            };
            let input = cli::test::TestInput {
                pipeline,
                client_ip: Some(client_ip),
                client_name,
                helo,
                from,
                to,
                auth_user,
                tls,
                daemon_name,
                queue_id,
                message: raw,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return exit(1);
                }
            };
            match runtime.block_on(cli::test::run(policy, &input)) {
                Ok(outcome) if json => {
                    println!("{}", cli::test::to_json(&outcome));
                    exit(0)
                }
                Ok(outcome) => {
                    print!("{}", cli::test::render_text(&outcome));
                    exit(0)
                }
                Err(e) => {
                    eprintln!("{e}");
                    exit(1)
                }
            }
        }
    }
}
