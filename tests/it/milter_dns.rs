//! DNS checks through the whole daemon: indymilter-test plays Postfix, the
//! loopback DNS server answers, and the replies and edits are what Postfix
//! would get. No query leaves 127.0.0.1.

use crate::common;

use common::daemon::{LISTEN, TestDaemon, inserted_auth_results, open};
use common::dns_server::{DnsServer, Failure};
use indymilter_test::{EomAction, MacroStage, Status};
use std::ffi::CString;

const POLICY: &str = r#"
[dns]
timeout = "500ms"
attempts = 1

[checks.zen]
kind = "dnsbl"
lists = [{ zone = "zen.test", type = "ip" }]
reply = { code = 554, status = "5.7.1", text = "Client listed in a DNS blocklist" }

[checks.iprev]
kind = "iprev"
on_fail = "ignore"

[checks.spf]
kind = "spf"

[pipelines.mx]
authserv_id = "mx.example.org"
checks = ["zen", "iprev", "spf"]
"#;

async fn start(server: &DnsServer) -> TestDaemon {
    TestDaemon::start_resolving(&format!("{LISTEN}{POLICY}"), server).await
}

/// Negotiate, connect from `ip`, HELO.
async fn client(d: &TestDaemon, ip: &str) -> indymilter_test::TestConnection {
    let mut conn = open(d.addr()).await;
    conn.macros(MacroStage::Connect, [("{daemon_name}", "mx")])
        .await
        .unwrap();
    let status = conn
        .connect("mail.example.org", ip.parse::<std::net::IpAddr>().unwrap())
        .await
        .unwrap();
    assert_eq!(status, Status::Continue);
    assert_eq!(
        conn.helo("mail.example.org").await.unwrap(),
        Status::Continue
    );
    conn
}

#[tokio::test]
async fn a_listed_client_is_refused_at_mail_with_the_configured_reply() {
    let server = DnsServer::start_with_test_zones().await;
    let mut d = start(&server).await;
    // 192.0.2.10 is listed in zen.test (127.0.0.2).
    let mut conn = client(&d, "192.0.2.10").await;
    let status = conn.mail(["<alice@example.org>"]).await.unwrap();
    assert_eq!(
        status,
        Status::Reject {
            message: Some(CString::new("554 5.7.1 Client listed in a DNS blocklist").unwrap())
        }
    );
    drop(conn);
    d.shutdown().await;
}

#[tokio::test]
async fn an_unlisted_client_gets_authentication_results() {
    let server = DnsServer::start_with_test_zones().await;
    let mut d = start(&server).await;
    // 192.0.2.22 is not listed, confirms its reverse DNS (mail2) and is in
    // example.org's SPF record (ip4:192.0.2.0/24).
    let mut conn = client(&d, "192.0.2.22").await;
    assert_eq!(
        conn.mail(["<alice@example.org>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt(["<bob@example.net>"]).await.unwrap(),
        Status::Continue
    );
    conn.header(
        "Authentication-Results",
        "mx.example.org; spf=pass (forged)",
    )
    .await
    .unwrap();
    // An MTA always ends the headers before the end of message.
    conn.eoh().await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(
        actions.has_delete_header("Authentication-Results", 1),
        "{actions:?}"
    );
    let ar = inserted_auth_results(&actions)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no Authentication-Results: {actions:?}"));
    assert!(ar.starts_with(" mx.example.org;"), "{ar}");
    assert!(ar.contains("iprev=pass policy.iprev=192.0.2.22"), "{ar}");
    assert!(ar.contains("spf=pass smtp.mailfrom=example.org"), "{ar}");
    drop(conn);
    d.shutdown().await;
}

#[tokio::test]
async fn dns_down_means_tempfail_never_a_silent_pass() {
    let server = DnsServer::start_with_test_zones().await;
    server.set_default_failure(Some(Failure::ServFail));
    let mut d = start(&server).await;
    let mut conn = client(&d, "192.0.2.11").await;
    // The DNSBL cannot answer: temperror, and the error action tempfails at MAIL.
    match conn.mail(["<alice@example.org>"]).await.unwrap() {
        Status::Tempfail { message: Some(m) } => {
            assert!(m.to_string_lossy().starts_with("451 4.7.1"), "{m:?}")
        }
        other => panic!("expected 451, got {other:?}"),
    }
    drop(conn);
    d.shutdown().await;
}

/// Forged Authentication-Results go whatever the checks found, and however
/// the authserv-id is spelled; a check that timed out shows as temperror.
#[tokio::test]
async fn forgeries_are_deleted_even_when_every_check_times_out() {
    const SLOW: &str = r#"
[dns]
timeout = "3s"
attempts = 1

[checks.iprev]
kind = "iprev"
timeout = "200ms"
on_temperror = "ignore"

[checks.spf]
kind = "spf"
timeout = "200ms"
on_temperror = "ignore"

[pipelines.mx]
authserv_id = "mx.example.org"
checks = ["iprev", "spf"]
"#;
    let server = DnsServer::start_with_test_zones().await;
    server.set_default_failure(Some(Failure::Drop));
    let mut d = TestDaemon::start_resolving(&format!("{LISTEN}{SLOW}"), &server).await;
    let mut conn = client(&d, "192.0.2.22").await;
    assert_eq!(
        conn.mail(["<alice@example.org>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt(["<bob@example.net>"]).await.unwrap(),
        Status::Continue
    );
    for forged in [
        "(x) mx.example.org; dkim=pass",
        "other.example; dkim=pass",
        "\"mx.example.org\"; dkim=pass",
        "MX.EXAMPLE.ORG.; dmarc=pass",
    ] {
        conn.header("Authentication-Results", forged).await.unwrap();
    }
    conn.eoh().await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    // Highest first, each index valid when the MTA applies it.
    let deleted: Vec<i32> = actions
        .actions
        .iter()
        .filter_map(|a| match a {
            EomAction::DeleteHeader { name, index }
                if name.as_c_str() == c"Authentication-Results" =>
            {
                Some(*index)
            }
            _ => None,
        })
        .collect();
    assert_eq!(deleted, [4, 3, 1], "{actions:?}");
    let ours = inserted_auth_results(&actions);
    assert_eq!(
        ours,
        [" mx.example.org; iprev=temperror; spf=temperror"],
        "{actions:?}"
    );
    drop(conn);
    d.shutdown().await;
}
