//! Start the real daemon in-process on 127.0.0.1:0 from a config text, and
//! talk to it with indymilter-test the way Postfix would.
#![allow(dead_code)]

use dispatch_milter::daemon::Daemon;
use dispatch_milter::server_config::ListenAddress;
use indymilter_test::{Actions, MacroStage, ProtoOpts, TestConnection};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// The listener block most tests use: loopback, any free port.
pub const LISTEN: &str = "[[server.listen]]\naddress = \"inet:127.0.0.1:0\"\n";

/// One listener and a pipeline `mx` that adds `X-Seen: yes`, with
/// `settings` among the pipeline's (the header-limit tests and the header
/// flood benchmark).
pub fn tagging_policy(settings: &str) -> String {
    format!(
        r#"{LISTEN}
[modifiers.tag]
kind = "add_header"
name = "X-Seen"
value = "yes"

[pipelines.mx]
modify = ["tag"]
{settings}
"#
    )
}

impl TestDaemon {
    /// Write `config` (which must contain its `[server]` listeners) and start.
    pub async fn start(config: &str) -> TestDaemon {
        Self::start_with(config, super::registry(Arc::new(super::Probes::default()))).await
    }

    /// [`TestDaemon::start`] with the resolver asking only `server`.
    pub async fn start_resolving(
        config: &str,
        server: &super::dns_server::DnsServer,
    ) -> TestDaemon {
        let mut registry = super::registry(Arc::new(super::Probes::default()));
        registry.set_nameservers(vec![server.addr()]);
        Self::start_with(config, registry).await
    }

    pub async fn start_with(
        config: &str,
        registry: dispatch_milter::config::Registry,
    ) -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("milter-config.toml");
        std::fs::write(&path, config).expect("write config");
        let daemon = match Daemon::start(&path, registry).await {
            Ok(d) => d,
            Err(e) => panic!("daemon should start:\n{e}"),
        };
        TestDaemon {
            daemon: Some(daemon),
            dir,
            config: path,
        }
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    pub fn tcp(&self, i: usize) -> SocketAddr {
        match &self.daemon().addresses[i] {
            ListenAddress::Inet(a) => *a,
            other => panic!("listener {i} is {other}, not TCP"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.tcp(0)
    }

    /// Replace the config file (for reload tests).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config, config).expect("write config");
    }

    pub async fn shutdown(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }
}

/// What Postfix 3.x offers: every action and the usual options.
pub fn postfix_actions() -> Actions {
    Actions::ADD_HEADER
        | Actions::CHANGE_HEADER
        | Actions::ADD_RCPT
        | Actions::ADD_RCPT_EXT
        | Actions::DELETE_RCPT
        | Actions::CHANGE_SENDER
        | Actions::REPLACE_BODY
        | Actions::QUARANTINE
        | Actions::REQUEST_MACROS
}

pub async fn open(addr: SocketAddr) -> TestConnection {
    TestConnection::configure()
        .available_actions(postfix_actions())
        .available_opts(ProtoOpts::LEADING_SPACE | ProtoOpts::SKIP)
        .open_tcp(addr)
        .await
        .expect("milter connection")
}

/// [`open`], then [`greet`]: a connection ready for MAIL FROM.
pub async fn open_greeted(addr: SocketAddr, daemon_name: &str) -> TestConnection {
    let mut conn = open(addr).await;
    greet(&mut conn, daemon_name).await;
    conn
}

/// The Authentication-Results headers the daemon inserted at the top
/// (index 0), unfolded: the daemon folds with "\n " in place of a space.
pub fn inserted_auth_results(actions: &indymilter_test::EomActions) -> Vec<String> {
    actions
        .actions
        .iter()
        .filter_map(|a| match a {
            indymilter_test::EomAction::InsertHeader {
                index: 0,
                name,
                value,
            } if name.as_c_str() == c"Authentication-Results" => {
                Some(value.to_string_lossy().replace('\n', ""))
            }
            _ => None,
        })
        .collect()
}

/// A reject status with this reply text.
pub fn reject_with(reply: &str) -> indymilter_test::Status {
    indymilter_test::Status::Reject {
        message: Some(std::ffi::CString::new(reply).expect("no NUL")),
    }
}

/// Connect and HELO as a client from 192.0.2.10, with `{daemon_name}`.
/// Neither refuses.
pub async fn greet(conn: &mut TestConnection, daemon_name: &str) {
    conn.macros(
        MacroStage::Connect,
        [("{daemon_name}", daemon_name), ("j", "mx.example.org")],
    )
    .await
    .expect("macros");
    let status = conn
        .connect(
            "client.example.net",
            "192.0.2.10".parse::<std::net::IpAddr>().expect("ip"),
        )
        .await
        .expect("connect");
    // Where the daemon waived a stage's reply (an MTA that offered it),
    // indymilter-test reports that none came.
    let opts = conn.negotiated_opts();
    let expected = |noreply: ProtoOpts| {
        if opts.contains(noreply) {
            indymilter_test::Status::Noreply
        } else {
            indymilter_test::Status::Continue
        }
    };
    assert_eq!(status, expected(ProtoOpts::NOREPLY_CONNECT));
    let status = conn.helo("client.example.net").await.expect("helo");
    assert_eq!(status, expected(ProtoOpts::NOREPLY_HELO));
}
