//! The `[server]` section, compiled: listeners, connection limit, shutdown
//! grace, logging and metrics. These settings take effect at start; a reload
//! that changes them logs that a restart is needed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why each default is what it is.
pub mod defaults {
    use std::time::Duration;

    /// The shipped address: loopback only, a port outside the well-known range.
    pub const LISTEN: &str = "inet:127.0.0.1:7357";
    /// Well above Postfix's default process limit of 100 smtpd processes,
    /// each of which holds one milter connection.
    pub(crate) const MAX_CONNECTIONS: usize = 1000;
    /// How long messages in flight may take to finish after SIGTERM.
    pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    /// How long the MTA may leave a connection silent (and how long a reply
    /// may take to write) before the daemon closes it. Postfix keeps its
    /// milter connection for the whole SMTP session, and the session may be
    /// silent as long as the SMTP client is: up to `smtpd_timeout` (300 s)
    /// between commands, and for the whole DATA transfer, during which the
    /// milter hears nothing (headers and body come after the end of the
    /// data, and we skip the DATA command). Ten minutes is twice
    /// `smtpd_timeout`, room for a 10 MB message at 17 kB/s, and still frees
    /// a connection that never speaks in minutes rather than the two hours
    /// of libmilter's and indymilter's default (7,210 s). Sendmail waits up
    /// to an hour for SMTP commands (`Timeout.command`): raise it there.
    pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(600);
    /// Descriptors kept free beyond one per connection when the daemon
    /// checks the open file limit at start: the listening and metrics
    /// sockets, DNS sockets, table files and `command` check pipes.
    pub(crate) const SPARE_FILES: u64 = 64;
}

/// Where the daemon listens for the MTA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    /// A TCP socket.
    Inet(SocketAddr),
    /// A UNIX socket at an absolute path.
    Unix(PathBuf),
}

/// Why a listen address cannot be used; each carries the address as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddressError {
    /// `inet:` followed by something that is not IP:PORT.
    #[error(
        "invalid address \"{address}\": write inet:IP:PORT, such as inet:127.0.0.1:7357 or inet:[::1]:7357"
    )]
    Inet {
        /// The address as written.
        address: String,
        /// Why the part after `inet:` is not an IP address and port.
        #[source]
        source: std::net::AddrParseError,
    },
    /// `unix:` followed by nothing or a relative path.
    #[error(
        "invalid address \"{address}\": write unix: and an absolute path, such as unix:/run/dispatch-milter/milter.sock"
    )]
    Unix {
        /// The address as written.
        address: String,
    },
    /// Neither `inet:` nor `unix:`.
    #[error("invalid address \"{address}\": use inet:IP:PORT or unix:/absolute/path")]
    Scheme {
        /// The address as written.
        address: String,
    },
}

impl ListenAddress {
    /// `inet:127.0.0.1:7357`, `inet:[::1]:7357` or `unix:/run/dispatch-milter/milter.sock`.
    pub fn parse(s: &str) -> Result<ListenAddress, ListenAddressError> {
        if let Some(rest) = s.strip_prefix("inet:") {
            return rest
                .parse::<SocketAddr>()
                .map(ListenAddress::Inet)
                .map_err(|source| ListenAddressError::Inet {
                    address: s.to_string(),
                    source,
                });
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() || !path.starts_with('/') {
                return Err(ListenAddressError::Unix {
                    address: s.to_string(),
                });
            }
            return Ok(ListenAddress::Unix(PathBuf::from(path)));
        }
        Err(ListenAddressError::Scheme {
            address: s.to_string(),
        })
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Inet(a) => write!(f, "inet:{a}"),
            ListenAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One `[[server.listen]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Where to listen.
    pub address: ListenAddress,
    /// The pipeline for every connection here; `None` chooses by
    /// `{daemon_name}`, then the first pipeline.
    pub pipeline: Option<String>,
    /// UNIX sockets only.
    pub socket_mode: Option<u32>,
    /// UNIX sockets only: the user that owns the socket.
    pub socket_owner: Option<String>,
    /// UNIX sockets only: the socket's group.
    pub socket_group: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// The compiled `[server]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Where the daemon listens, in config order.
    pub listeners: Vec<ListenerSettings>,
    /// Per listener: the most connections it holds open at once.
    pub max_connections: usize,
    /// Threads that run connections and checks; `None`: half the CPUs, at
    /// least one (`daemon::default_worker_threads`).
    pub worker_threads: Option<usize>,
    /// How long messages in flight may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// The longest the MTA may leave a connection silent, and the longest
    /// a reply may take to write, before the connection is closed.
    pub connection_timeout: Duration,
    /// Text or JSON log lines.
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `dispatch_milter=debug`; `RUST_LOG`
    /// wins when set.
    pub log_level: String,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listeners: vec![ListenerSettings {
                address: ListenAddress::parse(defaults::LISTEN).unwrap_or(ListenAddress::Inet(
                    SocketAddr::from(([127, 0, 0, 1], 7357)),
                )),
                pipeline: None,
                socket_mode: None,
                socket_owner: None,
                socket_group: None,
            }],
            max_connections: defaults::MAX_CONNECTIONS,
            worker_threads: None,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            connection_timeout: defaults::CONNECTION_TIMEOUT,
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            metrics_listen: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            ListenAddress::parse("inet:127.0.0.1:7357").unwrap(),
            ListenAddress::Inet("127.0.0.1:7357".parse().unwrap())
        );
        assert_eq!(
            ListenAddress::parse("inet:[::1]:0").unwrap(),
            ListenAddress::Inet("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            ListenAddress::parse("unix:/run/x.sock").unwrap(),
            ListenAddress::Unix("/run/x.sock".into())
        );
        for bad in [
            "inet:localhost:25",
            "unix:rel.sock",
            "tcp:1.2.3.4:5",
            "inet:1.2.3.4",
        ] {
            assert!(ListenAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_texts() {
        let text = |s: &str| ListenAddress::parse(s).unwrap_err().to_string();
        assert_eq!(
            text("inet:localhost:25"),
            "invalid address \"inet:localhost:25\": write inet:IP:PORT, such as inet:127.0.0.1:7357 or inet:[::1]:7357"
        );
        assert_eq!(
            text("unix:rel.sock"),
            "invalid address \"unix:rel.sock\": write unix: and an absolute path, such as unix:/run/dispatch-milter/milter.sock"
        );
        assert_eq!(
            text("127.0.0.1:7357"),
            "invalid address \"127.0.0.1:7357\": use inet:IP:PORT or unix:/absolute/path"
        );
    }
}
