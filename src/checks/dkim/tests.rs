use super::*;
use crate::checks::require_tls::tests::{build_err, input, run, try_build};
use crate::message::{Header, Message};
use crate::tables::TableSet;
use mail_auth::dkim::Signature;

fn sig(d: &str, l: u64) -> Signature {
    Signature {
        d: d.into(),
        s: "sel".into(),
        b: vec![0xfb, 0xff, 0x00, 0x10, 0x20, 0x30, 0x40],
        l,
        ..Signature::default()
    }
}

fn facts_of(result: DkimResult, l: u64, key_bits: Option<usize>) -> SignatureFacts {
    SignatureFacts {
        signature: Some(sig("example.org", l)),
        result,
        key_bits,
        body_length: (l > 0).then_some(l),
    }
}

fn status(result: DkimResult) -> Status {
    judge(&facts_of(result, 0, Some(2048)), Judge::default()).status
}

#[test]
fn mail_auth_results_map_to_statuses() {
    let e = || Error::Crypto(CryptoError::FailedVerification);
    assert_eq!(status(DkimResult::Pass), Status::Pass);
    assert_eq!(status(DkimResult::Fail(e())), Status::Fail);
    assert_eq!(
        status(DkimResult::Neutral(Error::Dkim(
            DkimError::FailedBodyHashMatch
        ))),
        Status::Fail
    );
    assert_eq!(
        status(DkimResult::Neutral(Error::Dkim(
            DkimError::SignatureExpired
        ))),
        Status::Neutral
    );
    assert_eq!(status(DkimResult::PermError(e())), Status::Permerror);
    assert_eq!(
        status(DkimResult::TempError(Error::Dns(DnsError::Resolver(
            "x".into()
        )))),
        Status::Temperror
    );
    assert_eq!(status(DkimResult::None), Status::None);
}

#[test]
fn weak_keys_and_length_limits_follow_the_options() {
    let weak = facts_of(DkimResult::Pass, 0, Some(1024));
    assert_eq!(judge(&weak, Judge::default()).status, Status::Pass);
    let strict = Judge {
        min_rsa_bits: 2048,
        allow_l_tag: false,
    };
    let v = judge(&weak, strict);
    assert_eq!(v.status, Status::Fail);
    assert!(v.reason.starts_with("weak key (1024 bits"), "{}", v.reason);
    // A weak key that fails to verify is reported as weak too.
    let bad = facts_of(
        DkimResult::Fail(Error::Crypto(CryptoError::FailedVerification)),
        0,
        Some(512),
    );
    assert!(
        judge(&bad, Judge::default())
            .reason
            .starts_with("weak key (512 bits")
    );

    let limited = facts_of(DkimResult::Pass, 100, None);
    let v = judge(&limited, Judge::default());
    assert_eq!(v.status, Status::Neutral);
    assert!(v.reason.contains("l= tag"), "{}", v.reason);
    let allow = Judge {
        allow_l_tag: true,
        ..Judge::default()
    };
    assert_eq!(judge(&limited, allow).status, Status::Pass);
    // l=0 signs no body: it is a length limit like any other, though
    // mail-auth's Signature::l reads 0 for it.
    let nothing = SignatureFacts {
        body_length: Some(0),
        ..facts_of(DkimResult::Pass, 0, None)
    };
    let v = judge(&nothing, Judge::default());
    assert_eq!(v.status, Status::Neutral);
    assert!(v.reason.contains("first 0 bytes"), "{}", v.reason);
}

#[test]
fn the_best_signature_decides_and_every_one_is_reported() {
    let memo = DkimFacts {
        signatures: vec![
            facts_of(
                DkimResult::Fail(Error::Crypto(CryptoError::FailedVerification)),
                0,
                None,
            ),
            SignatureFacts {
                signature: Some(Signature {
                    d: "other.example".into(),
                    s: "s2".into(),
                    b: vec![1, 2, 3, 4, 5, 6],
                    ..Signature::default()
                }),
                result: DkimResult::Pass,
                key_bits: Some(2048),
                body_length: None,
            },
        ],
        truncated: false,
        unchecked: 0,
    };
    let r = summarise(&memo, Judge::default());
    assert_eq!(r.status, Status::Pass);
    assert_eq!(
        r.reason.as_deref(),
        Some("DKIM pass for other.example (s=s2)")
    );
    assert_eq!(
        r.auth_text().as_deref(),
        Some(
            "dkim=fail header.d=example.org header.s=sel header.b=\"+/8AECAw\"; \
             dkim=pass header.d=other.example header.s=s2 header.b=AQIDBAUG"
        )
    );

    let memo = DkimFacts {
        signatures: vec![
            facts_of(
                DkimResult::TempError(Error::Dns(DnsError::Resolver("t".into()))),
                0,
                None,
            ),
            facts_of(
                DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch)),
                0,
                None,
            ),
        ],
        truncated: false,
        unchecked: 2,
    };
    let r = summarise(&memo, Judge::default());
    assert_eq!(r.status, Status::Fail);
    // Signatures past the cap are reported once, without a verdict.
    assert!(
        r.auth_text().as_deref().is_some_and(|a| a
            .ends_with("; dkim=neutral reason=\"2 more signatures not checked (at most 5 are)\"")),
        "{:?}",
        r.auth_results
    );
    assert_eq!(
        r.reason.as_deref(),
        Some("DKIM fail for example.org (s=sel): body hash mismatch (body altered)")
    );

    let r = summarise(&DkimFacts::default(), Judge::default());
    assert_eq!(r.status, Status::None);
    assert_eq!(r.auth_text().as_deref(), Some("dkim=none"));
}

#[test]
fn b_prefixes_are_base64() {
    assert_eq!(b_prefix(b"Man is"), "TWFuIGlz");
    assert_eq!(b_prefix(b"Ma"), "TWE");
    assert_eq!(b_prefix(b""), "");
}

#[test]
fn options_are_validated() {
    let e = build_err(DkimCheck::build, "min_rsa_bits = 100");
    assert!(e.contains("between 512 and 16384, found 100"), "{e}");
    let e = build_err(DkimCheck::build, "min_rsa_bits = \"2048\"");
    assert_eq!(
        e,
        "`min_rsa_bits` in check \"t\" must be a whole number, found \"2048\""
    );
    let e = build_err(DkimCheck::build, "allow_l_tag = 1");
    assert_eq!(
        e,
        "`allow_l_tag` in check \"t\" must be true or false, found 1"
    );
    let e = build_err(DkimCheck::build, "allow_l = true");
    assert!(e.contains("unknown key `allow_l`"), "{e}");
    let ok = try_build(
        DkimCheck::build,
        "min_rsa_bits = 2048\nallow_l_tag = true",
        &TableSet::new(),
    );
    let check = ok.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(check.inputs(), Stage::Eom);
    assert!(check.needs_body());
}

fn loopback_check() -> Arc<dyn Check> {
    Arc::new(DkimCheck {
        dns: crate::dns::unreachable_for_tests(),
        judge: Judge::default(),
    })
}

fn message(headers: &[(&str, &str)], truncated: bool) -> Arc<Message> {
    Arc::new(Message {
        headers: headers
            .iter()
            .map(|(n, v)| Header::new(n.to_string(), v.to_string()))
            .collect(),
        body: b"hello\r\n".as_slice().into(),
        body_truncated: truncated,
        size: 0,
    })
}

#[tokio::test]
async fn an_unsigned_message_is_none_and_a_truncated_one_temperror() {
    let check = loopback_check();
    let mut i = input(Stage::Eom);
    i.message = Some(message(&[("From", "a@example.org")], false));
    let r = run(&check, i).await;
    assert_eq!(r.status, Status::None);

    let signed = "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel; \
                  h=from; bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=AAAA";
    let mut i = input(Stage::Eom);
    i.message = Some(message(
        &[("DKIM-Signature", signed), ("From", "a@example.org")],
        true,
    ));
    let r = run(&check, i).await;
    assert_eq!(r.status, Status::Temperror);
    assert_eq!(r.reason.as_deref(), Some(TRUNCATED));
    assert_eq!(
        r.auth_text().as_deref(),
        Some("dkim=temperror header.d=example.org header.s=sel header.b=AAAA")
    );
}
