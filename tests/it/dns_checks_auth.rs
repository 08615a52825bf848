//! The sender-authentication checks (`spf`, `dkim`, `dmarc`, `arc`) through
//! the real engine against a real DNS server on 127.0.0.1 (tests/common/
//! dns_server.rs) serving the zones of tests/zones/auth/. Messages are
//! DKIM-signed and ARC-sealed here with mail-auth and the test key
//! tests/zones/auth/dkim-rsa2048.pem, whose public half those zones publish.

use crate::common;

use common::dns_server::{DnsServer, Failure, RecordType};
use common::signing::{dkim_sign, forwarded};
use common::wait::{self, WAIT};
use common::{Mail, QUICK_DNS, check_result, inserted, reply_code, run_mail, run_to_eom};
use dispatch_milter::edits::Edit;
use dispatch_milter::engine::{MessageOutcome, StageReply, Verdict};
use dispatch_milter::policy::Policy;
use std::path::Path;
use std::sync::Arc;

/// Our name in Authentication-Results, as a pipeline setting.
const AUTHSERV: &str = r#"authserv_id = "mx.test""#;

/// The policy of one check, named after its `kind`, with `options`, run by
/// pipeline `p` with `pipeline` settings (one TOML line each).
fn single_check(kind: &str, options: &[&str], pipeline: &[&str]) -> String {
    let lines = |l: &[&str]| l.iter().map(|l| format!("{l}\n")).collect::<String>();
    format!(
        "[checks.{kind}]\nkind = \"{kind}\"\n{}[pipelines.p]\n{}checks = [\"{kind}\"]\n",
        lines(options),
        lines(pipeline)
    )
}

/// Compile a policy whose resolver asks only `server`, quickly.
fn policy(server: &DnsServer, body: &str) -> Arc<Policy> {
    common::compile_resolving(server, Path::new("t.toml"), &format!("{QUICK_DNS}\n{body}"))
}

// ----- SPF -----

const SPF_POLICY: &str = r#"
[checks.spf]
kind = "spf"
on_softfail = "quarantine"
reply = { code = 550, status = "5.7.23", text = "SPF check failed" }
[pipelines.p]
authserv_id = "mx.test"
checks = ["spf"]
"#;

#[tokio::test]
async fn spf_results_take_their_configured_actions() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, SPF_POLICY);

    let o = run_to_eom(&p, "p", &Mail::from_client("alice@spf.test", "192.0.2.10")).await;
    assert_eq!(o.decision.verdict(), Verdict::Accept);
    assert_eq!(check_result(&o, "spf").0, "pass");
    assert_eq!(
        inserted(&o, "Authentication-Results"),
        ["mx.test; spf=pass smtp.mailfrom=spf.test"]
    );

    // A fail is decided at end of message, with the configured reply.
    let run = run_mail(&p, "p", &Mail::from_client("alice@spf.test", "192.0.2.99")).await;
    assert_eq!(run.mail, StageReply::Continue);
    let o = run.outcome.expect("EOM");
    assert_eq!(o.decision.verdict(), Verdict::Reject);
    let reply = o.decision.reply().cloned().expect("a reply");
    assert_eq!((reply.code, reply.status.as_str()), (550, "5.7.23"));
    assert_eq!(
        check_result(&o, "spf"),
        (
            "fail".into(),
            "SPF fail for spf.test from 192.0.2.99".into()
        )
    );

    let o = run_to_eom(
        &p,
        "p",
        &Mail::from_client("alice@softfail.spf.test", "192.0.2.99"),
    )
    .await;
    assert_eq!(check_result(&o, "spf").0, "softfail");
    assert_eq!(o.decision.verdict(), Verdict::Quarantine);
    assert!(o.edits.iter().any(|e| matches!(e, Edit::Quarantine { .. })));

    let o = run_to_eom(
        &p,
        "p",
        &Mail::from_client("alice@neutral.spf.test", "192.0.2.99"),
    )
    .await;
    assert_eq!(check_result(&o, "spf").0, "neutral");
    assert_eq!(o.decision.verdict(), Verdict::Accept);

    // No SPF record at all.
    let o = run_to_eom(&p, "p", &Mail::from_client("alice@rcpt.test", "192.0.2.99")).await;
    assert_eq!(check_result(&o, "spf").0, "none");
    assert_eq!(o.decision.verdict(), Verdict::Accept);
}

#[tokio::test]
async fn spf_dns_failures_are_temperrors_and_take_the_error_action() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, SPF_POLICY);
    server.set_failure("spf.test", Failure::ServFail);
    let o = run_to_eom(&p, "p", &Mail::from_client("alice@spf.test", "192.0.2.10")).await;
    assert_eq!(check_result(&o, "spf").0, "temperror");
    assert_eq!(o.decision.verdict(), Verdict::Tempfail);
    assert_eq!(o.decision.reply().map(|r| r.code), Some(451));

    // The server does not answer at all: the lookup times out.
    server.set_failure("spf.test", Failure::Drop);
    let p = policy(&server, SPF_POLICY);
    let o = run_to_eom(&p, "p", &Mail::from_client("alice@spf.test", "192.0.2.10")).await;
    assert_eq!(check_result(&o, "spf").0, "temperror");
    assert_eq!(o.decision.verdict(), Verdict::Tempfail);
    assert!(server.queries_for_type("spf.test", RecordType::TXT) >= 2);
}

/// Parsed SPF records are kept between messages, in a store that only
/// SPF records may enter: mail-auth also passes it the `exp=` explanation
/// of a failing sender, and a sender may name any domain there. Were the
/// explanation kept under that domain's name, its own SPF record would no
/// longer read for the rest of the TTL.
#[tokio::test]
async fn a_senders_spf_explanation_does_not_replace_another_domains_record() {
    let server = DnsServer::start_with_auth_zones().await;
    server.add_zone("evil.test");
    server.add_txt("evil.test", "v=spf1 -all exp=spf.test");
    let p = policy(&server, SPF_POLICY);
    // The failing sender first: its explanation is spf.test's TXT record.
    let o = run_to_eom(
        &p,
        "p",
        &Mail::from_client("mallory@evil.test", "192.0.2.10"),
    )
    .await;
    assert_eq!(check_result(&o, "spf").0, "fail");
    for _ in 0..2 {
        let o = run_to_eom(&p, "p", &Mail::from_client("alice@spf.test", "192.0.2.10")).await;
        assert_eq!(
            check_result(&o, "spf").0,
            "pass",
            "{:?}",
            check_result(&o, "spf")
        );
    }
    let o = run_to_eom(
        &p,
        "p",
        &Mail::from_client("mallory@evil.test", "192.0.2.10"),
    )
    .await;
    assert_eq!(check_result(&o, "spf").0, "fail");
    let o = run_to_eom(&p, "p", &Mail::from_client("alice@spf.test", "192.0.2.99")).await;
    assert_eq!(
        check_result(&o, "spf").0,
        "fail",
        "the kept record still decides"
    );
}

#[tokio::test]
async fn spf_can_refuse_at_mail_from_with_decide_at() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(
        &server,
        &single_check("spf", &[r#"decide_at = "mail""#], &[]),
    );
    let run = run_mail(&p, "p", &Mail::from_client("alice@spf.test", "192.0.2.99")).await;
    assert!(matches!(run.mail, StageReply::Reject(_)), "{:?}", run.mail);
    assert_eq!(reply_code(&run.mail), 550);
    assert!(run.outcome.is_none());
}

#[tokio::test]
async fn the_null_sender_is_checked_by_its_helo_identity() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(
        &server,
        &single_check("spf", &["received_spf = true"], &[AUTHSERV]),
    );
    // run_mail says HELO client.example.net, whose record allows 192.0.2.10.
    let o = run_to_eom(&p, "p", &Mail::from_client("", "192.0.2.10")).await;
    assert_eq!(
        check_result(&o, "spf"),
        (
            "pass".into(),
            "SPF pass for client.example.net from 192.0.2.10".into()
        )
    );
    assert_eq!(
        inserted(&o, "Authentication-Results"),
        ["mx.test; spf=pass smtp.helo=client.example.net"]
    );
    let received = inserted(&o, "Received-SPF");
    assert_eq!(received.len(), 1);
    assert!(received[0].starts_with("pass ("), "{}", received[0]);
    assert!(
        received[0].contains("envelope-from=\"postmaster@client.example.net\""),
        "{}",
        received[0]
    );
    // RFC 7208 §9.1: who checked, then what matched.
    assert!(received[0].contains(" receiver="), "{}", received[0]);
    assert!(
        received[0].ends_with("identity=helo; mechanism=\"ip4:192.0.2.10\";"),
        "{}",
        received[0]
    );

    let o = run_to_eom(&p, "p", &Mail::from_client("", "192.0.2.99")).await;
    assert_eq!(check_result(&o, "spf").0, "fail");
    assert_eq!(o.decision.verdict(), Verdict::Reject);
}

#[tokio::test]
async fn identity_both_checks_helo_first_and_a_helo_fail_is_final() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(
        &server,
        &single_check("spf", &[r#"identity = "both""#], &[AUTHSERV]),
    );
    let o = run_to_eom(&p, "p", &Mail::from_client("alice@spf.test", "192.0.2.10")).await;
    assert_eq!(check_result(&o, "spf").0, "pass");
    assert_eq!(
        inserted(&o, "Authentication-Results"),
        ["mx.test; spf=pass smtp.helo=client.example.net; spf=pass smtp.mailfrom=spf.test"]
    );
    server.reset_stats();
    // MAIL FROM would be neutral, but HELO already failed.
    let o = run_to_eom(
        &p,
        "p",
        &Mail::from_client("alice@neutral.spf.test", "192.0.2.99"),
    )
    .await;
    assert_eq!(
        check_result(&o, "spf"),
        (
            "fail".into(),
            "SPF fail for client.example.net from 192.0.2.99".into()
        )
    );
    assert_eq!(server.queries_for("neutral.spf.test"), 0);
}

// ----- DKIM -----

const DKIM_POLICY: &str = r#"
[checks.dkim]
kind = "dkim"
[pipelines.p]
authserv_id = "mx.test"
checks = ["dkim"]
"#;

#[tokio::test]
async fn dkim_pass_fail_and_none() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, DKIM_POLICY);

    let mut m = Mail::from_client("alice@dkim.test", "192.0.2.10");
    dkim_sign(&mut m, "dkim.test", false);
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(
        check_result(&o, "dkim"),
        ("pass".into(), "DKIM pass for dkim.test (s=sel)".into())
    );
    assert_eq!(o.decision.verdict(), Verdict::Accept);
    let ar = inserted(&o, "Authentication-Results");
    assert!(
        ar[0].starts_with("mx.test; dkim=pass header.d=dkim.test header.s=sel header.b="),
        "{ar:?}"
    );

    // The body changed after signing.
    m.body.push_str("a footer\r\n");
    let o = run_to_eom(&p, "p", &m).await;
    let (result, reason) = check_result(&o, "dkim");
    assert_eq!(result, "fail");
    assert!(reason.contains("body hash mismatch"), "{reason}");
    assert_eq!(o.decision.verdict(), Verdict::Reject);

    let o = run_to_eom(&p, "p", &Mail::from_client("alice@dkim.test", "192.0.2.10")).await;
    assert_eq!(
        check_result(&o, "dkim"),
        ("none".into(), "no DKIM signature".into())
    );
    assert_eq!(
        inserted(&o, "Authentication-Results"),
        ["mx.test; dkim=none"]
    );
}

#[tokio::test]
async fn dkim_key_lookup_failure_is_temperror() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, DKIM_POLICY);
    server.set_failure("sel._domainkey.dkim.test", Failure::ServFail);
    let mut m = Mail::from_client("alice@dkim.test", "192.0.2.10");
    dkim_sign(&mut m, "dkim.test", false);
    let o = run_to_eom(&p, "p", &m).await;
    let (result, reason) = check_result(&o, "dkim");
    assert_eq!(result, "temperror");
    assert!(reason.contains("DNS failure"), "{reason}");
    assert_eq!(o.decision.verdict(), Verdict::Tempfail);

    // A key that is not published at all is a permanent error.
    let mut m = Mail::from_client("alice@rcpt.test", "192.0.2.10");
    dkim_sign(&mut m, "rcpt.test", false);
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(check_result(&o, "dkim").0, "permerror");
}

#[tokio::test]
async fn dkim_weak_keys_and_length_limits() {
    let server = DnsServer::start_with_auth_zones().await;
    // ring signs with 2048-bit keys at least, so "weak" is shown by asking
    // for more than the test key has.
    let p = policy(
        &server,
        &single_check("dkim", &["min_rsa_bits = 4096"], &[]),
    );
    let mut m = Mail::from_client("alice@dkim.test", "192.0.2.10");
    dkim_sign(&mut m, "dkim.test", false);
    let o = run_to_eom(&p, "p", &m).await;
    let (result, reason) = check_result(&o, "dkim");
    assert_eq!(result, "fail");
    assert!(
        reason.contains("weak key (2048 bits, at least 4096 required)"),
        "{reason}"
    );

    // l= covers only the signed part: what is appended is not signed.
    let mut m = Mail::from_client("alice@dkim.test", "192.0.2.10");
    dkim_sign(&mut m, "dkim.test", true);
    m.body.push_str("appended by someone else\r\n");
    let p = policy(&server, DKIM_POLICY);
    let o = run_to_eom(&p, "p", &m).await;
    let (result, reason) = check_result(&o, "dkim");
    assert_eq!(result, "neutral");
    assert!(reason.contains("l= tag"), "{reason}");
    assert_eq!(o.decision.verdict(), Verdict::Accept);

    let p = policy(&server, &single_check("dkim", &["allow_l_tag = true"], &[]));
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(check_result(&o, "dkim").0, "pass");
}

/// `l=0` signs no body at all: whatever body follows is unsigned, so it is
/// a length limit like any other (mail-auth's parser reads it as "no
/// `l=`"), and a tag list with `l=` twice is invalid (RFC 6376 §3.2, §3.5).
#[tokio::test]
async fn dkim_l0_signs_no_body_and_two_l_tags_are_invalid() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, DKIM_POLICY);
    // mail-auth's signer writes no l= for an empty body, so the signature
    // is made here (relaxed/relaxed, the test key).
    let mut m = Mail::from_client("alice@dkim.test", "192.0.2.10");
    sign_l0(&mut m);
    // A replay of a signature of no body over any other body.
    m.body = "Send the money to account 123.\r\n".into();
    let o = run_to_eom(&p, "p", &m).await;
    let (result, reason) = check_result(&o, "dkim");
    assert_eq!(result, "neutral", "{reason}");
    assert!(reason.contains("only the first 0 bytes"), "{reason}");

    let mut m = Mail::from_client("alice@dkim.test", "192.0.2.10");
    dkim_sign(&mut m, "dkim.test", true);
    m.headers[0].1 = m.headers[0].1.replacen("l=", "l=0; l=", 1);
    assert!(m.headers[0].1.contains("l=0; l=7;"), "{:?}", m.headers[0]);
    let o = run_to_eom(&p, "p", &m).await;
    let (result, reason) = check_result(&o, "dkim");
    assert_eq!(result, "permerror", "{reason}");
    assert!(
        reason.contains("the l= tag appears more than once"),
        "{reason}"
    );
}

/// Sign `m` with `l=0` over its From and Subject headers, as RFC 6376
/// §3.7 says: relaxed header canonicalization of each signed header, then
/// of the DKIM-Signature itself with an empty `b=`.
fn sign_l0(m: &mut Mail) {
    use mail_auth::common::crypto::SigningKey;
    let relaxed = |name: &str, value: &str| {
        let words: Vec<&str> = value.split_whitespace().collect();
        format!("{}:{}", name.to_ascii_lowercase(), words.join(" "))
    };
    // The sha256 of nothing: l=0 hashes no body octet.
    let unsigned = "v=1; a=rsa-sha256; c=relaxed/relaxed; d=dkim.test; s=sel; l=0; \
                    h=From:Subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=";
    let mut input = String::new();
    for name in ["From", "Subject"] {
        let value = &m.headers.iter().find(|(n, _)| n == name).expect("header").1;
        input.push_str(&relaxed(name, value));
        input.push_str("\r\n");
    }
    input.push_str(&relaxed("DKIM-Signature", unsigned));
    let b = common::signing::rsa_key()
        .sign(input.as_bytes())
        .expect("sign");
    let value = format!(
        "{unsigned}{}",
        dispatch_milter::modifiers::dkim_sign::base64_encode(&b)
    );
    m.headers.insert(0, ("DKIM-Signature".into(), value));
}

/// A message with many signatures costs what five do: the first five (top
/// down) are verified, the rest reported once and never looked up.
#[tokio::test]
async fn dkim_verifies_at_most_five_signatures() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(
        &server,
        &single_check("dkim", &[r#"on_permerror = "ignore""#], &[AUTHSERV]),
    );
    let mut m = Mail::from_client("alice@dkim.test", "192.0.2.10");
    dkim_sign(&mut m, "dkim.test", false);
    let good = m.headers[0].1.clone();
    assert!(good.contains("s=sel;"), "{good}");
    for i in 0..40 {
        let forged = good.replacen("s=sel;", &format!("s=nokey{i};"), 1);
        m.headers.insert(0, ("DKIM-Signature".into(), forged));
    }
    let o = run_to_eom(&p, "p", &m).await;
    let (result, reason) = check_result(&o, "dkim");
    // The valid signature is the 41st: never checked.
    assert_eq!(result, "permerror", "{reason}");
    let ar = &inserted(&o, "Authentication-Results")[0];
    assert_eq!(ar.matches("dkim=permerror").count(), 5, "{ar}");
    assert!(
        ar.contains("dkim=neutral reason=\"36 more signatures not checked (at most 5 are)\""),
        "{ar}"
    );
    let keys: Vec<String> = server
        .query_log()
        .into_iter()
        .filter(|q| q.name.contains("._domainkey."))
        .map(|q| q.name)
        .collect();
    // Five at end of message; the early lookups stop at eight.
    assert!(keys.len() <= 8, "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("sel.")), "{keys:?}");
}

#[tokio::test]
async fn dkim_cannot_verify_a_truncated_body() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(
        &server,
        r#"
        [checks.dkim]
        kind = "dkim"
        [pipelines.p]
        max_body_size = 16
        checks = ["dkim"]
        "#,
    );
    let mut m = Mail::from_client("alice@dkim.test", "192.0.2.10");
    m.body = "a body longer than sixteen bytes\r\n".into();
    dkim_sign(&mut m, "dkim.test", false);
    server.reset_stats();
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(
        check_result(&o, "dkim"),
        (
            "temperror".into(),
            "body larger than max_body_size; cannot verify".into()
        )
    );
    assert_eq!(server.queries(), 0, "nothing was looked up");
}

// ----- DMARC -----

const DMARC_POLICY: &str = r#"
[checks.spf]
kind = "spf"
on_fail = "ignore"
[checks.dkim]
kind = "dkim"
on_fail = "ignore"
[checks.dmarc]
kind = "dmarc"
# No on_softfail: p=quarantine quarantines by the dmarc kind's own default.
[pipelines.p]
authserv_id = "mx.test"
checks = ["spf", "dkim", "dmarc"]
"#;

#[tokio::test]
async fn dmarc_passes_with_an_aligned_dkim_signature() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, DMARC_POLICY);
    // The envelope is another domain's (SPF passes for it, unaligned).
    let mut m = Mail::from_client("bounce@spf.test", "192.0.2.10");
    m.headers[0].1 = "Alice <alice@aligned.test>".into();
    dkim_sign(&mut m, "aligned.test", false);
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(
        check_result(&o, "dmarc"),
        (
            "pass".into(),
            "DMARC pass for aligned.test (DKIM aligned)".into()
        )
    );
    assert_eq!(o.decision.verdict(), Verdict::Accept);
    let ar = &inserted(&o, "Authentication-Results")[0];
    assert!(
        ar.contains("dmarc=pass (p=reject dis=none) header.from=aligned.test"),
        "{ar}"
    );

    // Unsigned, the same message fails p=reject.
    let mut m = Mail::from_client("bounce@spf.test", "192.0.2.10");
    m.headers[0].1 = "Alice <alice@aligned.test>".into();
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(check_result(&o, "dmarc").0, "fail");
    assert_eq!(o.decision.verdict(), Verdict::Reject);
}

#[tokio::test]
async fn dmarc_failures_follow_the_published_policy() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, DMARC_POLICY);

    // SPF fails for the author's own domain and nothing is signed.
    let o = run_to_eom(
        &p,
        "p",
        &Mail::from_client("alice@reject.test", "192.0.2.99"),
    )
    .await;
    assert_eq!(
        check_result(&o, "dmarc"),
        (
            "fail".into(),
            "DMARC fail for reject.test (p=reject)".into()
        )
    );
    assert_eq!(o.decision.verdict(), Verdict::Reject);
    assert_eq!(o.decision.reply().map(|r| r.code), Some(550));
    assert!(
        o.decision.reason().is_some_and(|r| r.contains("p=reject")),
        "{:?}",
        o.decision.reason()
    );

    let o = run_to_eom(
        &p,
        "p",
        &Mail::from_client("alice@quarantine.test", "192.0.2.99"),
    )
    .await;
    assert_eq!(check_result(&o, "dmarc").0, "softfail");
    assert_eq!(o.decision.verdict(), Verdict::Quarantine);
    assert!(
        o.edits
            .iter()
            .any(|e| matches!(e, Edit::Quarantine { reason } if reason.contains("p=quarantine")))
    );

    let o = run_to_eom(&p, "p", &Mail::from_client("alice@none.test", "192.0.2.99")).await;
    assert_eq!(
        check_result(&o, "dmarc"),
        ("neutral".into(), "DMARC fail for none.test (p=none)".into())
    );
    assert_eq!(o.decision.verdict(), Verdict::Accept);
    let ar = &inserted(&o, "Authentication-Results")[0];
    assert!(
        ar.contains("dmarc=fail (p=none dis=none) header.from=none.test"),
        "{ar}"
    );

    // pct=0: the policy applies to no message, the milder one to all.
    let o = run_to_eom(&p, "p", &Mail::from_client("alice@pct.test", "192.0.2.99")).await;
    assert_eq!(
        check_result(&o, "dmarc"),
        (
            "softfail".into(),
            "DMARC fail for pct.test (p=reject, pct=0, not sampled: quarantine applied)".into()
        )
    );
    assert_eq!(o.decision.verdict(), Verdict::Quarantine);

    // A domain without a DMARC record.
    let o = run_to_eom(&p, "p", &Mail::from_client("alice@spf.test", "192.0.2.99")).await;
    assert_eq!(check_result(&o, "dmarc").0, "none");
}

#[tokio::test]
async fn dmarc_pct_can_be_ignored_and_the_policy_replaced() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(
        &server,
        &single_check("dmarc", &["honour_pct = false"], &[]),
    );
    let o = run_to_eom(&p, "p", &Mail::from_client("alice@pct.test", "192.0.2.99")).await;
    assert_eq!(check_result(&o, "dmarc").0, "fail");
    assert_eq!(o.decision.verdict(), Verdict::Reject);

    let p = policy(
        &server,
        &single_check(
            "dmarc",
            &[r#"policy = "local""#, r#"on_fail = "quarantine""#],
            &[],
        ),
    );
    let o = run_to_eom(&p, "p", &Mail::from_client("alice@none.test", "192.0.2.99")).await;
    assert_eq!(check_result(&o, "dmarc").0, "fail");
    assert_eq!(o.decision.verdict(), Verdict::Quarantine);
}

#[tokio::test]
async fn dmarc_relaxed_and_strict_spf_alignment() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, DMARC_POLICY);
    // SPF passes for mail.<domain>, a subdomain of the author domain.
    let mut m = Mail::from_client("bounce@mail.relaxed.test", "192.0.2.10");
    m.headers[0].1 = "<alice@relaxed.test>".into();
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(check_result(&o, "spf").0, "pass");
    assert_eq!(
        check_result(&o, "dmarc"),
        (
            "pass".into(),
            "DMARC pass for relaxed.test (SPF aligned)".into()
        )
    );

    let mut m = Mail::from_client("bounce@mail.strict.test", "192.0.2.10");
    m.headers[0].1 = "<alice@strict.test>".into();
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(check_result(&o, "spf").0, "pass");
    assert_eq!(check_result(&o, "dmarc").0, "fail");
    assert_eq!(o.decision.verdict(), Verdict::Reject);
}

/// Like `run_mail`, but after MAIL FROM it waits until `server` has answered
/// a lookup of `asked_at_mail` (one more than before) and has nothing in
/// flight, so that the lookups started there are complete before end of
/// message. (hickory merges identical queries in flight at the same time,
/// so only answers that were complete before a second lookup show whether
/// it asked again.)
async fn eom_after_mail_lookups(
    server: &DnsServer,
    asked_at_mail: &str,
    policy: &Arc<Policy>,
    mail: &Mail,
) -> MessageOutcome {
    let before = server.queries_for(asked_at_mail);
    let mut session =
        common::session_at_mail(policy, common::client_at(mail.client_ip), &mail.from).await;
    let answered = wait::within(WAIT, || {
        server.queries_for(asked_at_mail) > before && server.in_flight() == 0
    })
    .await;
    assert!(
        answered,
        "{asked_at_mail} not asked and answered after MAIL FROM: {:?}",
        server.query_log()
    );
    common::finish_session(&mut session, mail).await
}

#[tokio::test]
async fn dmarc_reuses_the_spf_result_of_the_message() {
    let server = DnsServer::start_with_auth_zones().await;
    // nocache.spf.test has TTL 0: the resolver's cache hides no lookup.
    let p = policy(&server, DMARC_POLICY);
    for _ in 0..2 {
        let m = Mail::from_client("alice@nocache.spf.test", "192.0.2.10");
        // The spf check's lookup, started at MAIL FROM.
        let o = eom_after_mail_lookups(&server, "nocache.spf.test", &p, &m).await;
        assert_eq!(check_result(&o, "spf").0, "pass");
        assert_eq!(check_result(&o, "dmarc").0, "none");
    }
    // Once per message, although both checks needed it.
    assert_eq!(
        server.queries_for_type("nocache.spf.test", RecordType::TXT),
        2
    );

    // Without an spf check, dmarc evaluates SPF itself, once.
    server.reset_stats();
    let p = policy(&server, &single_check("dmarc", &[], &[]));
    let mut m = Mail::from_client("alice@nocache.spf.test", "192.0.2.10");
    m.headers[0].1 = "<alice@aligned.test>".into();
    dkim_sign(&mut m, "aligned.test", false);
    // DMARC's early lookup of the MAIL FROM domain's policy.
    let o = eom_after_mail_lookups(&server, "_dmarc.nocache.spf.test", &p, &m).await;
    assert_eq!(check_result(&o, "dmarc").0, "pass");
    assert_eq!(
        server.queries_for_type("nocache.spf.test", RecordType::TXT),
        1
    );
}

// ----- ARC -----

#[tokio::test]
async fn an_arc_chain_is_verified_and_reported() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, &single_check("arc", &[], &[AUTHSERV]));
    let o = run_to_eom(&p, "p", &forwarded()).await;
    assert_eq!(
        check_result(&o, "arc"),
        (
            "pass".into(),
            "ARC pass, 1 set(s), newest seal by forwarder.test".into()
        )
    );
    assert_eq!(
        inserted(&o, "Authentication-Results"),
        ["mx.test; arc=pass"]
    );

    // Changed after sealing: the newest AMS no longer matches.
    let mut m = forwarded();
    m.body.push_str("tampered\r\n");
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(check_result(&o, "arc").0, "fail");

    let o = run_to_eom(
        &p,
        "p",
        &Mail::from_client("alice@origin.test", "192.0.2.10"),
    )
    .await;
    assert_eq!(
        check_result(&o, "arc"),
        ("none".into(), "no ARC chain".into())
    );
}

const FORWARDING_POLICY: &str = r#"
[checks.spf]
kind = "spf"
on_fail = "ignore"
[checks.dkim]
kind = "dkim"
on_fail = "ignore"
[checks.arc]
kind = "arc"
on_fail = "ignore"
[checks.dmarc]
kind = "dmarc"
TRUSTED
[pipelines.p]
authserv_id = "mx.test"
checks = ["spf", "dkim", "dmarc", "arc"]
"#;

#[tokio::test]
async fn a_trusted_arc_sealer_overrides_a_dmarc_failure() {
    let server = DnsServer::start_with_auth_zones().await;
    let untrusted = policy(&server, &FORWARDING_POLICY.replace("TRUSTED", ""));
    let o = run_to_eom(&untrusted, "p", &forwarded()).await;
    assert_eq!(check_result(&o, "dkim").0, "fail");
    assert_eq!(check_result(&o, "arc").0, "pass");
    assert_eq!(
        check_result(&o, "dmarc"),
        (
            "fail".into(),
            "DMARC fail for origin.test (p=reject)".into()
        )
    );
    assert_eq!(o.decision.verdict(), Verdict::Reject);

    let trusted = policy(
        &server,
        &FORWARDING_POLICY.replace("TRUSTED", "trusted_arc_sealers = [\"forwarder.test\"]"),
    );
    let o = run_to_eom(&trusted, "p", &forwarded()).await;
    assert_eq!(
        check_result(&o, "dmarc"),
        (
            "pass".into(),
            "DMARC fail overridden by trusted ARC sealer forwarder.test".into()
        )
    );
    assert_eq!(o.decision.verdict(), Verdict::Accept);
    // One Authentication-Results with every method, checks in config order.
    let ar = inserted(&o, "Authentication-Results");
    assert_eq!(ar.len(), 1, "{ar:?}");
    let ar = &ar[0];
    assert!(ar.starts_with("mx.test; "), "{ar}");
    for fragment in [
        "spf=pass smtp.mailfrom=forwarder.test",
        "dkim=fail header.d=origin.test header.s=sel header.b=",
        "dmarc=fail (overridden by trusted ARC sealer forwarder.test dis=none) header.from=origin.test",
        "arc=pass",
    ] {
        assert!(ar.contains(fragment), "{fragment} missing from {ar}");
    }

    // A chain that does not verify overrides nothing.
    let mut m = forwarded();
    m.body.push_str("tampered\r\n");
    let o = run_to_eom(&trusted, "p", &m).await;
    assert_eq!(check_result(&o, "arc").0, "fail");
    assert_eq!(check_result(&o, "dmarc").0, "fail");
    assert_eq!(o.decision.verdict(), Verdict::Reject);
}

/// A name no DNS server could hold (a label over 63 octets) has no
/// records: a signature whose key name is one is `permerror`, and it
/// cannot turn a DMARC `fail` into `temperror` (a tempfail where the
/// author's p=reject asked for a rejection).
#[tokio::test]
async fn a_key_name_that_cannot_exist_is_a_permanent_error() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, DMARC_POLICY);
    let mut m = Mail::from_client("alice@reject.test", "192.0.2.99");
    dkim_sign(&mut m, "reject.test", false);
    let long = "a".repeat(64);
    m.headers[0].1 = m.headers[0].1.replacen("s=sel", &format!("s={long}"), 1);
    assert!(m.headers[0].1.contains(&long), "{:?}", m.headers[0]);
    let o = run_to_eom(&p, "p", &m).await;
    let (result, reason) = check_result(&o, "dkim");
    assert_eq!(result, "permerror", "{reason}");
    assert_eq!(
        check_result(&o, "dmarc"),
        (
            "fail".into(),
            "DMARC fail for reject.test (p=reject)".into()
        )
    );
    assert_eq!(o.decision.verdict(), Verdict::Reject);
    // Nothing was asked for the name.
    assert!(
        !server.query_log().iter().any(|q| q.name.contains(&long)),
        "{:?}",
        server.query_log()
    );
}

/// The author's domain: a From domain with a label over 63 octets is a
/// DMARC permerror (the message cannot be judged), never a temperror.
#[tokio::test]
async fn a_from_domain_that_cannot_exist_has_no_dmarc_record_of_its_own() {
    let server = DnsServer::start_with_auth_zones().await;
    let p = policy(&server, DMARC_POLICY);
    let long = "a".repeat(64);
    let mut m = Mail::from_client("alice@reject.test", "192.0.2.99");
    m.headers[0].1 = format!("Alice <alice@{long}.reject.test>");
    let o = run_to_eom(&p, "p", &m).await;
    assert_eq!(
        check_result(&o, "dmarc"),
        (
            "permerror".into(),
            format!("the From domain {long}.reject.test is not a DNS name")
        )
    );
}
