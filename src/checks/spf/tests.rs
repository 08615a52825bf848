use super::*;
use crate::address::Address;
use crate::checks::require_tls::tests::{build_err, input, run, try_build};
use crate::message::Envelope;
use crate::tables::TableSet;

/// A resolver that can only reach the loopback discard port: unit tests
/// never send DNS traffic anywhere else.
fn loopback_dns() -> Arc<Dns> {
    crate::dns::unreachable_for_tests()
}

fn outcome(checked: Checked, result: Status) -> SpfOutcome {
    SpfOutcome {
        checked,
        domain: "example.org".into(),
        result,
        explanation: None,
        mechanism: None,
        problem: None,
        ip: Some("192.0.2.99".parse().unwrap()),
        helo: "mx.example.net".into(),
        sender: "alice@example.org".into(),
        note: None,
    }
}

#[test]
fn reasons_and_fragments_name_the_identity() {
    let o = outcome(Checked::MailFrom, Status::Fail);
    assert_eq!(reason(&o), "SPF fail for example.org from 192.0.2.99");
    assert_eq!(
        fragment(&o).to_string(),
        "spf=fail smtp.mailfrom=example.org"
    );
    let o = outcome(Checked::Helo, Status::Pass);
    assert_eq!(
        fragment(&o).to_string(),
        "spf=pass smtp.helo=mx.example.net"
    );
    let mut o = outcome(Checked::Helo, Status::None);
    o.helo = "[192.0.2.1]".into();
    assert_eq!(
        fragment(&o).to_string(),
        "spf=none smtp.helo=\"[192.0.2.1]\""
    );
}

#[test]
fn an_explanation_is_quoted_printable_and_bounded() {
    let o = outcome(Checked::MailFrom, Status::Fail);
    let o = SpfOutcome {
        explanation: Some(format!("go away\r\n{}", "x".repeat(500))),
        ..o
    };
    let r = reason(&o);
    assert!(
        r.starts_with("SPF fail for example.org from 192.0.2.99: go away"),
        "{r}"
    );
    assert!(!r.contains(['\r', '\n']));
    assert!(r.len() < 260, "{}", r.len());
}

#[test]
fn received_spf_follows_rfc_7208_section_9_1() {
    // §9.1: result, comment, then key-value pairs; values are dot-atoms
    // or quoted-strings.
    let mut o = outcome(Checked::MailFrom, Status::Pass);
    o.mechanism = Some("ip4:192.0.2.0/24".into());
    assert_eq!(
        received_spf_by(&o, "mx.example.com"),
        "pass (mx.example.com: domain of alice@example.org designates 192.0.2.99 as \
         permitted sender) receiver=mx.example.com; client-ip=192.0.2.99; \
         envelope-from=\"alice@example.org\"; helo=mx.example.net; identity=mailfrom; \
         mechanism=\"ip4:192.0.2.0/24\";"
    );
    // §9.1: "if no mechanisms matched, substitute the word default".
    let mut o = outcome(Checked::MailFrom, Status::Neutral);
    o.mechanism = Some("default".into());
    assert_eq!(
        received_spf_by(&o, "mx.example.com"),
        "neutral (mx.example.com: 192.0.2.99 is neither permitted nor denied by domain of \
         alice@example.org) receiver=mx.example.com; client-ip=192.0.2.99; \
         envelope-from=\"alice@example.org\"; helo=mx.example.net; identity=mailfrom; \
         mechanism=default;"
    );
    // The HELO identity is postmaster@<helo> (§2.3); an IPv6 address
    // is no dot-atom; an error names its problem.
    let mut o = outcome(Checked::Helo, Status::Permerror);
    o.ip = Some("2001:db8::1".parse().unwrap());
    o.sender = String::new();
    o.domain = "mx.example.net".into();
    o.problem = Some("more than 2 void lookups".into());
    assert_eq!(
        received_spf_by(&o, "mx.example.com"),
        "permerror (mx.example.com: permanent error in processing domain of \
         postmaster@mx.example.net) receiver=mx.example.com; client-ip=\"2001:db8::1\"; \
         envelope-from=\"postmaster@mx.example.net\"; helo=mx.example.net; \
         identity=helo; problem=\"more than 2 void lookups\";"
    );
    let mut o = outcome(Checked::Helo, Status::Softfail);
    o.sender = String::new();
    let v = received_spf_by(&o, "mx.example.com");
    assert!(
        v.starts_with(
            "softfail (mx.example.com: domain of transitioning postmaster@mx.example.net"
        ),
        "{v}"
    );
    // A HELO that is no dot-atom is quoted.
    let mut o = outcome(Checked::Helo, Status::None);
    o.helo = "[192.0.2.1]".into();
    o.note = Some("not a domain name that SPF can check");
    let v = received_spf_by(&o, "mx.example.com");
    assert!(v.contains(" helo=\"[192.0.2.1]\";"), "{v}");
    assert!(
        v.ends_with("problem=\"not a domain name that SPF can check\";"),
        "{v}"
    );
    // A sender with parentheses cannot close the comment early, nor a
    // quote end the quoted-string.
    let mut o = outcome(Checked::MailFrom, Status::Fail);
    o.sender = "a)b\"@example.org".into();
    let v = received_spf_by(&o, "mx.example.com");
    assert!(v.contains("a\\)b\"@example.org does not"), "{v}");
    assert!(v.contains("envelope-from=\"a)b\\\"@example.org\""), "{v}");
}

#[test]
fn the_receiver_is_a_usable_host_name() {
    let r = receiver();
    assert!(
        !r.is_empty() && r.is_ascii() && !r.contains([' ', '(', ')']),
        "{r}"
    );
}

#[test]
fn pvalues_are_tokens_or_quoted() {
    assert_eq!(pvalue("example.org"), "example.org");
    assert_eq!(pvalue("a b"), "\"a b\"");
    assert_eq!(pvalue("x@y"), "\"x@y\"");
    assert_eq!(pvalue(""), "\"\"");
}

#[test]
fn options_are_validated() {
    let e = build_err(SpfCheck::build, "identity = \"envelope\"");
    assert_eq!(
        e,
        "`identity` in check \"t\" must be \"mail_from\", \"helo\" or \"both\", found \"envelope\""
    );
    let e = build_err(SpfCheck::build, "identity = 1");
    assert_eq!(
        e,
        "`identity` in check \"t\" must be \"mail_from\", \"helo\" or \"both\", found 1"
    );
    let e = build_err(SpfCheck::build, "received_spf = \"yes\"");
    assert_eq!(
        e,
        "`received_spf` in check \"t\" must be true or false, found \"yes\""
    );
    let e = build_err(SpfCheck::build, "identiy = \"helo\"");
    assert!(e.contains("unknown key `identiy`"), "{e}");
    for ok in [
        "",
        "identity = \"helo\"",
        "identity = \"both\"\nreceived_spf = true",
    ] {
        let built = try_build(SpfCheck::build, ok, &TableSet::new());
        assert!(built.is_ok(), "{ok}: {:?}", built.err());
    }
    let check = try_build(SpfCheck::build, "", &TableSet::new()).unwrap();
    assert_eq!(check.inputs(), Stage::Mail);
    assert_eq!(check.decides(), Stage::Eom);
}

fn check(identity: Identity) -> Arc<dyn Check> {
    Arc::new(SpfCheck {
        dns: loopback_dns(),
        identity,
        received_spf: true,
    })
}

#[tokio::test]
async fn without_a_client_address_the_result_is_none() {
    for identity in [Identity::MailFrom, Identity::Helo, Identity::Both] {
        let mut i = input(Stage::Mail);
        Arc::make_mut(&mut i.connection).helo = Some("mx.example.net".into());
        i.envelope = Some(Envelope {
            rewritten_sender: None,
            sender: Address::parse("<alice@example.org>").unwrap(),
            mail_args: vec![],
            recipients: vec![],
        });
        let r = run(&check(identity), i).await;
        assert_eq!(r.status, Status::None, "{identity:?}");
        assert_eq!(
            r.reason.as_deref(),
            Some("SPF none: no client IP address"),
            "{identity:?}"
        );
        assert_eq!(r.add_headers.len(), 1);
    }
}

#[tokio::test]
async fn the_null_sender_without_helo_is_none_without_dns() {
    let mut i = input(Stage::Mail);
    Arc::make_mut(&mut i.connection).client_ip = Some("192.0.2.1".parse().unwrap());
    i.envelope = Some(Envelope {
        rewritten_sender: None,
        sender: Address::Null,
        mail_args: vec![],
        recipients: vec![],
    });
    let r = run(&check(Identity::MailFrom), i).await;
    assert_eq!(r.status, Status::None);
    assert_eq!(r.reason.as_deref(), Some("SPF none: no HELO name"));
    assert_eq!(r.auth_text().as_deref(), Some("spf=none"));
}

#[tokio::test]
async fn the_mail_from_outcome_is_computed_once_per_message() {
    let mut i = input(Stage::Mail);
    i.envelope = Some(Envelope {
        rewritten_sender: None,
        sender: Address::parse("<alice@Example.ORG>").unwrap(),
        mail_args: vec![],
        recipients: vec![],
    });
    let dns = loopback_dns();
    let sender = i.envelope.as_ref().map(|e| &e.sender);
    let a = i.evidence.mail_from_spf(&dns, &i.connection, sender).await;
    let b = i.evidence.mail_from_spf(&dns, &i.connection, sender).await;
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.domain, "example.org");
    assert_eq!(a.sender, "alice@example.org");
}
