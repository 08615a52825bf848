//! The DNS check matrix through the whole daemon: for every DNS check kind
//! (`dnsbl`, `iprev`, `require_mx`, `spf`, `dkim`, `dmarc`, `arc`) a pass,
//! a fail and a temperror, each with the reply Postfix gets at the stage
//! where the check decides. indymilter-test plays Postfix over loopback TCP;
//! the loopback DNS server of tests/common/dns_server.rs answers from
//! tests/zones/ and tests/zones/auth/, and fails only the names a case
//! names. The daemon's resolver is given that server as its only name
//! server, so no query leaves 127.0.0.1.
//!
//! Every case starts its own DNS server and daemon: the resolver cache and
//! the per-connection results of connect-stage checks then cannot carry one
//! case's answers into the next. Messages are DKIM-signed and ARC-sealed
//! here with mail-auth and tests/zones/auth/dkim-rsa2048.pem, whose public
//! half the auth zones publish (as tests/it/dns_checks_auth.rs does through the
//! engine).

use crate::common;

use common::Mail;
use common::daemon::{LISTEN, TestDaemon, inserted_auth_results, open};
use common::dns_server::{DnsServer, Failure, zones_dir};
use common::signing::{self, forwarded};
use indymilter_test::{EomAction, EomActions, MacroStage, Status};
use std::ffi::CString;
use std::net::IpAddr;

/// Short DNS timeouts: a dropped query costs 300 ms, not the default
/// seconds, so the temperror cases stay quick.
const DNS: &str = "[dns]\ntimeout = \"300ms\"\nattempts = 1\n";

/// The HELO name every client gives (tests/zones/auth has its SPF record).
const HELO: &str = "client.example.net";

/// The default reply of `error_action = "tempfail"` (docs/configuration.md,
/// "Replies"): what a temperror gets unless the policy says otherwise.
const DEFAULT_TEMPFAIL: &str = "451 4.7.1 Temporary failure, try again later";

// ----- the transaction, as Postfix drives it -----

/// The SMTP stage at which the daemon's answer ended the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Mail,
    Rcpt,
    Eom,
}

/// What Postfix got: the stage the transaction ended at, its status, and
/// the end-of-message actions when it got that far.
#[derive(Debug)]
struct Seen {
    stage: Stage,
    status: Status,
    actions: Option<EomActions>,
}

/// Start a DNS server with every shipped zone (tests/zones/ and
/// tests/zones/auth/), failing `failures`.
async fn dns(failures: &[(&str, Failure)]) -> DnsServer {
    let server = DnsServer::start_with_test_zones().await;
    server.load_zone_dir(zones_dir().join("auth"));
    for (name, failure) in failures {
        server.set_failure(name, *failure);
    }
    server
}

/// Start the daemon with `policy`, resolving only through `server`.
async fn daemon(server: &DnsServer, policy: &str) -> TestDaemon {
    TestDaemon::start_resolving(&format!("{LISTEN}{DNS}{policy}"), server).await
}

/// Play one SMTP transaction the way Postfix talks to a milter, stopping at
/// the first refusal (Postfix sends nothing more for the transaction).
async fn deliver(d: &TestDaemon, mail: &Mail) -> Seen {
    let mut conn = open(d.addr()).await;
    conn.macros(
        MacroStage::Connect,
        [("{daemon_name}", "mx"), ("j", "mx.test")],
    )
    .await
    .unwrap();
    let ip: IpAddr = mail.client_ip.parse().unwrap();
    // The connect-stage checks (dnsbl "ip", iprev) start here but decide at
    // MAIL, so neither connect nor HELO may refuse.
    assert_eq!(conn.connect(HELO, ip).await.unwrap(), Status::Continue);
    assert_eq!(conn.helo(HELO).await.unwrap(), Status::Continue);
    let end = |stage, status| Seen {
        stage,
        status,
        actions: None,
    };
    let status = conn.mail([format!("<{}>", mail.from)]).await.unwrap();
    if status != Status::Continue {
        return end(Stage::Mail, status);
    }
    for to in &mail.to {
        let status = conn.rcpt([format!("<{to}>")]).await.unwrap();
        if status != Status::Continue {
            return end(Stage::Rcpt, status);
        }
    }
    for (name, value) in &mail.headers {
        // Postfix passes a folded value with bare LF line ends; the daemon
        // must rebuild CRLF for the signatures to verify.
        let value = value.replace("\r\n", "\n");
        assert_eq!(
            conn.header(name.as_str(), value).await.unwrap(),
            Status::Continue
        );
    }
    assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    assert_eq!(
        conn.body(mail.body.clone()).await.unwrap(),
        Status::Continue
    );
    let (actions, status) = conn.eom().await.unwrap();
    Seen {
        stage: Stage::Eom,
        status,
        actions: Some(actions),
    }
}

// ----- the cases -----

/// What a case must end with.
enum Expect {
    /// Refused at this stage with exactly this status and reply.
    Refused(Stage, Status),
    /// Accepted at end of message (Continue with edits). Our
    /// Authentication-Results, inserted on top, is this fragment after our
    /// authserv-id; None for the kinds that report none (`dnsbl`,
    /// `require_mx`): no header at all.
    Accepted(Option<&'static str>),
    /// Accepted at end of message and put on hold, with a quarantine reason
    /// containing this.
    Quarantined(&'static str),
}

struct Case {
    name: &'static str,
    mail: Mail,
    /// Names the DNS server fails in this case (any type), and how.
    failures: Vec<(&'static str, Failure)>,
    /// A name the check must have asked for: the outcome came from the DNS,
    /// not from a short cut.
    asked: &'static str,
    expect: Expect,
}

fn reject(reply: &str) -> Status {
    Status::Reject {
        message: Some(CString::new(reply).unwrap()),
    }
}

fn tempfail(reply: &str) -> Status {
    Status::Tempfail {
        message: Some(CString::new(reply).unwrap()),
    }
}

/// Our Authentication-Results (inserted at index 0), unfolded.
fn our_auth_results(actions: &EomActions) -> Option<String> {
    inserted_auth_results(actions).into_iter().next()
}

fn quarantine_reason(actions: &EomActions) -> Option<String> {
    actions.actions.iter().find_map(|a| match a {
        EomAction::Quarantine { reason } => Some(reason.to_string_lossy().into_owned()),
        _ => None,
    })
}

/// Run every case against its own DNS server and daemon with `policy`.
async fn run(policy: &str, cases: Vec<Case>) {
    for case in cases {
        let name = case.name;
        let server = dns(&case.failures).await;
        let mut d = daemon(&server, policy).await;
        let seen = deliver(&d, &case.mail).await;
        d.shutdown().await;

        assert!(
            server.queries_for(case.asked) > 0,
            "{name}: {} was never asked; queries: {:?}",
            case.asked,
            server.query_log()
        );
        // A temperror must come from the failure the case set up, not from
        // something else going wrong.
        for (failed, failure) in &case.failures {
            let hit = server.query_log().iter().any(|q| {
                q.failure == Some(*failure) && q.name == format!("{}.", failed.to_lowercase())
            });
            assert!(hit, "{name}: no query for {failed} got {failure:?}");
        }

        match case.expect {
            Expect::Refused(stage, status) => {
                assert_eq!(
                    (seen.stage, &seen.status),
                    (stage, &status),
                    "{name}: {seen:?}"
                );
            }
            Expect::Accepted(fragment) => {
                assert_eq!(
                    (seen.stage, &seen.status),
                    (Stage::Eom, &Status::Continue),
                    "{name}: {seen:?}"
                );
                let actions = seen.actions.expect("end of message was reached");
                assert_eq!(quarantine_reason(&actions), None, "{name}: held");
                match (fragment, our_auth_results(&actions)) {
                    (Some(fragment), Some(ar)) => {
                        // Our authserv-id, then this method's result alone;
                        // after it at most a value that varies per message
                        // (the 8 characters of a DKIM header.b=).
                        let rest = ar
                            .strip_prefix(" mx.test; ")
                            .and_then(|r| r.strip_prefix(fragment));
                        assert!(
                            rest.is_some_and(|r| !r.contains([';', ' '])),
                            "{name}: expected \" mx.test; {fragment}\", got {ar:?}"
                        );
                    }
                    (None, None) => {}
                    (want, got) => panic!(
                        "{name}: Authentication-Results {got:?}, expected {want:?}: {actions:?}"
                    ),
                }
            }
            Expect::Quarantined(reason) => {
                assert_eq!(
                    (seen.stage, &seen.status),
                    (Stage::Eom, &Status::Continue),
                    "{name}: {seen:?}"
                );
                let actions = seen.actions.expect("end of message was reached");
                let held = quarantine_reason(&actions)
                    .unwrap_or_else(|| panic!("{name}: not quarantined: {actions:?}"));
                assert!(held.contains(reason), "{name}: {held}");
            }
        }
    }
}

// ----- signing, as the sending side does it -----

/// DKIM-sign the message as `d=domain; s=sel`.
fn dkim_signed(mut mail: Mail, domain: &str) -> Mail {
    signing::dkim_sign(&mut mail, domain, false);
    mail
}

/// A signed header changed after the last hop signed or sealed it. The
/// body hash still matches, so the verifier fetches the key (a changed body
/// fails before any lookup) and the signature does not verify with it.
fn tampered(mut mail: Mail) -> Mail {
    let subject = mail
        .headers
        .iter_mut()
        .find(|(name, _)| name == "Subject")
        .expect("a Subject header");
    subject.1 = "changed in transit".into();
    mail
}

// ----- dnsbl: decides at MAIL FROM -----

const DNSBL: &str = r#"
[checks.zen]
kind = "dnsbl"
lists = [{ zone = "zen.test", type = "ip" }]
reply = { code = 554, status = "5.7.1", text = "Client host blocked using zen.test" }

[pipelines.mx]
authserv_id = "mx.test"
checks = ["zen"]
"#;

#[tokio::test]
async fn dnsbl_pass_fail_temperror() {
    run(
        DNSBL,
        vec![
            Case {
                // Not listed (NXDOMAIN). The kind adds no fragment, so there
                // is no Authentication-Results at all.
                name: "dnsbl pass",
                mail: Mail::from_client("alice@example.org", "192.0.2.22"),
                failures: vec![],
                asked: "22.2.0.192.zen.test",
                expect: Expect::Accepted(None),
            },
            Case {
                name: "dnsbl fail",
                mail: Mail::from_client("alice@example.org", "192.0.2.10"),
                failures: vec![],
                asked: "10.2.0.192.zen.test",
                expect: Expect::Refused(
                    Stage::Mail,
                    reject("554 5.7.1 Client host blocked using zen.test"),
                ),
            },
            Case {
                name: "dnsbl temperror (SERVFAIL)",
                mail: Mail::from_client("alice@example.org", "192.0.2.22"),
                failures: vec![("22.2.0.192.zen.test", Failure::ServFail)],
                asked: "22.2.0.192.zen.test",
                expect: Expect::Refused(Stage::Mail, tempfail(DEFAULT_TEMPFAIL)),
            },
        ],
    )
    .await;
}

/// `decide_at = "rcpt"` moves the same refusals from MAIL FROM to RCPT TO.
#[tokio::test]
async fn dnsbl_decided_at_rcpt_refuses_the_recipient() {
    let policy = DNSBL.replace("type = \"ip\" }]", "type = \"ip\" }]\ndecide_at = \"rcpt\"");
    assert!(policy.contains("decide_at"), "the policy was changed");
    run(
        &policy,
        vec![
            Case {
                name: "dnsbl@rcpt fail",
                mail: Mail::from_client("alice@example.org", "192.0.2.10"),
                failures: vec![],
                asked: "10.2.0.192.zen.test",
                expect: Expect::Refused(
                    Stage::Rcpt,
                    reject("554 5.7.1 Client host blocked using zen.test"),
                ),
            },
            Case {
                name: "dnsbl@rcpt temperror (SERVFAIL)",
                mail: Mail::from_client("alice@example.org", "192.0.2.22"),
                failures: vec![("22.2.0.192.zen.test", Failure::ServFail)],
                asked: "22.2.0.192.zen.test",
                expect: Expect::Refused(Stage::Rcpt, tempfail(DEFAULT_TEMPFAIL)),
            },
        ],
    )
    .await;
}

// ----- iprev: starts at connect, decides at MAIL FROM -----

// The temperror takes the check's own tempfail_reply (on_temperror =
// "tempfail"), not the pipeline's error reply.
const IPREV: &str = r#"
[checks.iprev]
kind = "iprev"
reply = { code = 550, status = "5.7.25", text = "Reverse DNS of your address does not match" }
on_temperror = "tempfail"
tempfail_reply = { code = 450, status = "4.7.25", text = "Cannot confirm your reverse DNS now" }

[pipelines.mx]
authserv_id = "mx.test"
checks = ["iprev"]
"#;

#[tokio::test]
async fn iprev_pass_fail_temperror() {
    run(
        IPREV,
        vec![
            Case {
                // PTR mail2.example.org, whose A records include 192.0.2.11.
                name: "iprev pass",
                mail: Mail::from_client("alice@example.org", "192.0.2.11"),
                failures: vec![],
                asked: "mail2.example.org",
                expect: Expect::Accepted(Some(
                    "iprev=pass policy.iprev=192.0.2.11 (mail2.example.org)",
                )),
            },
            Case {
                // PTR unconfirmed.example.org, which points elsewhere.
                name: "iprev fail",
                mail: Mail::from_client("alice@example.org", "192.0.2.20"),
                failures: vec![],
                asked: "unconfirmed.example.org",
                expect: Expect::Refused(
                    Stage::Mail,
                    reject("550 5.7.25 Reverse DNS of your address does not match"),
                ),
            },
            Case {
                // The PTR answers; the forward lookup of its name times out.
                name: "iprev temperror (forward lookup dropped)",
                mail: Mail::from_client("alice@example.org", "192.0.2.11"),
                failures: vec![("mail2.example.org", Failure::Drop)],
                asked: "11.2.0.192.in-addr.arpa",
                expect: Expect::Refused(
                    Stage::Mail,
                    tempfail("450 4.7.25 Cannot confirm your reverse DNS now"),
                ),
            },
        ],
    )
    .await;
}

// ----- require_mx: decides at MAIL FROM -----

// The temperror takes error_action with the pipeline's own error_reply.
const REQUIRE_MX: &str = r#"
[checks.sender_mx]
kind = "require_mx"
reply = { code = 550, status = "5.1.8", text = "Sender domain cannot receive mail" }

[pipelines.mx]
authserv_id = "mx.test"
error_reply = { code = 451, status = "4.4.3", text = "Sender domain lookup failed, try again later" }
checks = ["sender_mx"]
"#;

#[tokio::test]
async fn require_mx_pass_fail_temperror() {
    run(
        REQUIRE_MX,
        vec![
            Case {
                // MX mail.example.org; the kind adds no fragment.
                name: "require_mx pass",
                mail: Mail::from_client("alice@example.org", "192.0.2.10"),
                failures: vec![],
                asked: "example.org",
                expect: Expect::Accepted(None),
            },
            Case {
                // example.net publishes a null MX (RFC 7505).
                name: "require_mx fail",
                mail: Mail::from_client("alice@example.net", "192.0.2.10"),
                failures: vec![],
                asked: "example.net",
                expect: Expect::Refused(
                    Stage::Mail,
                    reject("550 5.1.8 Sender domain cannot receive mail"),
                ),
            },
            Case {
                name: "require_mx temperror (REFUSED)",
                mail: Mail::from_client("alice@example.org", "192.0.2.10"),
                failures: vec![("example.org", Failure::Refused)],
                asked: "example.org",
                expect: Expect::Refused(
                    Stage::Mail,
                    tempfail("451 4.4.3 Sender domain lookup failed, try again later"),
                ),
            },
        ],
    )
    .await;
}

// ----- spf: starts at MAIL FROM, decides at end of message -----

const SPF: &str = r#"
[checks.spf]
kind = "spf"
reply = { code = 550, status = "5.7.23", text = "SPF validation failed" }

[pipelines.mx]
authserv_id = "mx.test"
checks = ["spf"]
"#;

#[tokio::test]
async fn spf_pass_fail_temperror() {
    run(
        SPF,
        vec![
            Case {
                // spf.test: "v=spf1 ip4:192.0.2.10 -all".
                name: "spf pass",
                mail: Mail::from_client("alice@spf.test", "192.0.2.10"),
                failures: vec![],
                asked: "spf.test",
                expect: Expect::Accepted(Some("spf=pass smtp.mailfrom=spf.test")),
            },
            Case {
                name: "spf fail",
                mail: Mail::from_client("alice@spf.test", "192.0.2.99"),
                failures: vec![],
                asked: "spf.test",
                expect: Expect::Refused(Stage::Eom, reject("550 5.7.23 SPF validation failed")),
            },
            Case {
                name: "spf temperror (SERVFAIL)",
                mail: Mail::from_client("alice@spf.test", "192.0.2.10"),
                failures: vec![("spf.test", Failure::ServFail)],
                asked: "spf.test",
                expect: Expect::Refused(Stage::Eom, tempfail(DEFAULT_TEMPFAIL)),
            },
        ],
    )
    .await;
}

/// `decide_at = "mail"` refuses the same fail and temperror at MAIL FROM.
#[tokio::test]
async fn spf_decided_at_mail_refuses_at_mail_from() {
    let policy = SPF.replace("kind = \"spf\"", "kind = \"spf\"\ndecide_at = \"mail\"");
    assert!(policy.contains("decide_at"), "the policy was changed");
    run(
        &policy,
        vec![
            Case {
                name: "spf@mail fail",
                mail: Mail::from_client("alice@spf.test", "192.0.2.99"),
                failures: vec![],
                asked: "spf.test",
                expect: Expect::Refused(Stage::Mail, reject("550 5.7.23 SPF validation failed")),
            },
            Case {
                name: "spf@mail temperror (SERVFAIL)",
                mail: Mail::from_client("alice@spf.test", "192.0.2.10"),
                failures: vec![("spf.test", Failure::ServFail)],
                asked: "spf.test",
                expect: Expect::Refused(Stage::Mail, tempfail(DEFAULT_TEMPFAIL)),
            },
        ],
    )
    .await;
}

// ----- dkim: decides at end of message -----

const DKIM: &str = r#"
[checks.dkim]
kind = "dkim"
reply = { code = 550, status = "5.7.20", text = "No valid DKIM signature" }

[pipelines.mx]
authserv_id = "mx.test"
checks = ["dkim"]
"#;

#[tokio::test]
async fn dkim_pass_fail_temperror() {
    run(
        DKIM,
        vec![
            Case {
                name: "dkim pass",
                mail: dkim_signed(
                    Mail::from_client("alice@dkim.test", "192.0.2.10"),
                    "dkim.test",
                ),
                failures: vec![],
                asked: "sel._domainkey.dkim.test",
                expect: Expect::Accepted(Some(
                    "dkim=pass header.d=dkim.test header.s=sel header.b=",
                )),
            },
            Case {
                name: "dkim fail",
                mail: tampered(dkim_signed(
                    Mail::from_client("alice@dkim.test", "192.0.2.10"),
                    "dkim.test",
                )),
                failures: vec![],
                asked: "sel._domainkey.dkim.test",
                expect: Expect::Refused(Stage::Eom, reject("550 5.7.20 No valid DKIM signature")),
            },
            Case {
                // The key's answer is junk the resolver cannot parse.
                name: "dkim temperror (garbage answer)",
                mail: dkim_signed(
                    Mail::from_client("alice@dkim.test", "192.0.2.10"),
                    "dkim.test",
                ),
                failures: vec![("sel._domainkey.dkim.test", Failure::Garbage)],
                asked: "sel._domainkey.dkim.test",
                expect: Expect::Refused(Stage::Eom, tempfail(DEFAULT_TEMPFAIL)),
            },
        ],
    )
    .await;
}

// ----- dmarc: decides at end of message -----

const DMARC: &str = r#"
[checks.dmarc]
kind = "dmarc"
reply = { code = 550, status = "5.7.1", text = "Rejected by the sender domain's DMARC policy" }

[pipelines.mx]
authserv_id = "mx.test"
checks = ["dmarc"]
"#;

/// From alice@aligned.test (p=reject), signed by aligned.test; the envelope
/// is spf.test's, so only the DKIM signature can align.
fn aligned() -> Mail {
    let mut m = Mail::from_client("bounce@spf.test", "192.0.2.10");
    m.headers[0].1 = "Alice <alice@aligned.test>".into();
    dkim_signed(m, "aligned.test")
}

#[tokio::test]
async fn dmarc_pass_fail_temperror() {
    run(
        DMARC,
        vec![
            Case {
                name: "dmarc pass",
                mail: aligned(),
                failures: vec![],
                asked: "_dmarc.aligned.test",
                expect: Expect::Accepted(Some(
                    "dmarc=pass (p=reject dis=none) header.from=aligned.test",
                )),
            },
            Case {
                // reject.test publishes p=reject; SPF fails for 192.0.2.99
                // and nothing is signed.
                name: "dmarc fail",
                mail: Mail::from_client("alice@reject.test", "192.0.2.99"),
                failures: vec![],
                asked: "_dmarc.reject.test",
                expect: Expect::Refused(
                    Stage::Eom,
                    reject("550 5.7.1 Rejected by the sender domain's DMARC policy"),
                ),
            },
            Case {
                // The signature verifies, but the policy cannot be fetched.
                name: "dmarc temperror (SERVFAIL for the policy)",
                mail: aligned(),
                failures: vec![("_dmarc.aligned.test", Failure::ServFail)],
                asked: "sel._domainkey.aligned.test",
                expect: Expect::Refused(Stage::Eom, tempfail(DEFAULT_TEMPFAIL)),
            },
        ],
    )
    .await;
}

// ----- arc: decides at end of message -----

// No on_fail: an arc `fail` rejects by default (docs/configuration.md).
const ARC: &str = r#"
[checks.arc]
kind = "arc"
reply = { code = 550, status = "5.7.29", text = "ARC validation failed" }

[pipelines.mx]
authserv_id = "mx.test"
checks = ["arc"]
"#;

#[tokio::test]
async fn arc_pass_fail_temperror() {
    run(
        ARC,
        vec![
            Case {
                name: "arc pass",
                mail: forwarded(),
                failures: vec![],
                asked: "sel._domainkey.forwarder.test",
                expect: Expect::Accepted(Some("arc=pass")),
            },
            Case {
                // The newest ARC-Message-Signature no longer verifies.
                name: "arc fail",
                mail: tampered(forwarded()),
                failures: vec![],
                asked: "sel._domainkey.forwarder.test",
                expect: Expect::Refused(Stage::Eom, reject("550 5.7.29 ARC validation failed")),
            },
            Case {
                name: "arc temperror (SERVFAIL for the sealer's key)",
                mail: forwarded(),
                failures: vec![("sel._domainkey.forwarder.test", Failure::ServFail)],
                asked: "sel._domainkey.forwarder.test",
                expect: Expect::Refused(Stage::Eom, tempfail(DEFAULT_TEMPFAIL)),
            },
        ],
    )
    .await;
}

/// An administrator who holds broken chains instead of refusing them.
#[tokio::test]
async fn arc_fail_can_quarantine() {
    let policy = ARC.replace("kind = \"arc\"", "kind = \"arc\"\non_fail = \"quarantine\"");
    assert!(policy.contains("quarantine"), "the policy was changed");
    run(
        &policy,
        vec![Case {
            name: "arc fail, quarantined",
            mail: tampered(forwarded()),
            failures: vec![],
            asked: "sel._domainkey.forwarder.test",
            expect: Expect::Quarantined("arc: ARC fail"),
        }],
    )
    .await;
}
