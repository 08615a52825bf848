use super::*;
use proptest::prelude::*;

#[test]
fn plain_ids() {
    assert_eq!(
        authserv_id("mx.example.org; spf=pass").as_deref(),
        Some("mx.example.org")
    );
    assert_eq!(
        authserv_id("mx.example.org 1; none").as_deref(),
        Some("mx.example.org")
    );
    assert_eq!(
        authserv_id("mx.example.org;dkim=pass").as_deref(),
        Some("mx.example.org")
    );
    assert_eq!(authserv_id("; dkim=pass"), None);
    assert_eq!(authserv_id(""), None);
}

/// Found by the `auth_results` fuzz target: a backslash before a line
/// break put the break into the id.
#[test]
fn a_fold_after_a_backslash_is_unfolded_first() {
    assert_eq!(
        authserv_id("\"mx.\\\r\n example.org\"; dkim=pass").as_deref(),
        Some("mx. example.org")
    );
    assert_eq!(authserv_id("\"\\\n\0)\"").as_deref(), Some("\0)"));
}

#[test]
fn every_spelling_of_our_id_is_ours() {
    for forged in [
        "mx.example.org; dkim=pass",
        "MX.Example.ORG; dkim=pass",
        "(x) mx.example.org; dkim=pass",
        "(a (nested) comment) mx.example.org; dkim=pass",
        "(with \\) a quoted pair) mx.example.org; dkim=pass",
        "\"mx.example.org\"; dkim=pass",
        "\"mx.exam\\ple.org\"; dkim=pass",
        "\r\n\t(folded)\r\n mx.example.org\r\n ; dkim=pass",
        "mx.example.org.; dkim=pass",
        " \"MX.EXAMPLE.ORG\" (c) 1; dkim=pass",
        // White space inside the quotes: a reader that trims would take
        // it for ours, so it goes too.
        "\"mx.example.org \"; dkim=pass",
    ] {
        assert!(claims(forged, "mx.example.org"), "{forged:?}");
    }
    assert!(claims("xn--bcher-kva.example; dkim=pass", "bücher.example"));
    assert!(claims(
        "mx.example.org\u{3002}; dkim=pass",
        "mx.example.org"
    ));
    for other in [
        "mx.example.org.evil; dkim=pass",
        "evil.example; dkim=pass (mx.example.org)",
        "(mx.example.org) evil.example; dkim=pass",
        "(unclosed mx.example.org; dkim=pass",
    ] {
        assert!(!claims(other, "mx.example.org"), "{other:?}");
    }
}

#[test]
fn builds_what_the_checks_write() {
    let from = Property::new("header", "from", "example.org");
    let ours = AuthResults::new(
        "mx.example.org",
        vec![
            ResInfo::new("spf", Status::Pass).with_property(Property::new(
                "smtp",
                "helo",
                "[192.0.2.1]",
            )),
            ResInfo::new("dkim", Status::Neutral)
                .with_reason("2 more signatures not checked (at most 5 are)"),
            ResInfo::new("dkim", Status::Pass)
                .with_property(Property::new("header", "d", "a.example"))
                .with_property(Property::new("header", "b", "ab/cd+ef")),
            ResInfo::new("dmarc", Status::Pass)
                .with_comment("p=reject dis=none")
                .with_property(from),
            ResInfo::new("iprev", Status::Pass).with_property(
                Property::new("policy", "iprev", "2001:db8::1").with_comment("mx.a.example"),
            ),
            ResInfo::new("arc", Status::None),
        ],
    );
    let text = "mx.example.org; spf=pass smtp.helo=\"[192.0.2.1]\"; \
        dkim=neutral reason=\"2 more signatures not checked (at most 5 are)\"; \
        dkim=pass header.d=a.example header.b=\"ab/cd+ef\"; \
        dmarc=pass (p=reject dis=none) header.from=example.org; \
        iprev=pass policy.iprev=2001:db8::1 (mx.a.example); arc=none";
    assert_eq!(ours.to_string(), text);
    assert_eq!(parse(text), Ok(ours));
    assert_eq!(
        AuthResults::new("mx.example.org", Vec::new()).to_string(),
        "mx.example.org; none"
    );
    // Only the client's address in policy.iprev is written bare: a HELO
    // or a d= that looks like an IPv6 address is client text, and a
    // colon is no part of a token.
    let helo = ResInfo::new("spf", Status::None)
        .with_property(Property::new("smtp", "helo", "2001:db8::1"))
        .with_property(Property::new("header", "d", "::ffff:192.0.2.1"));
    assert_eq!(
        helo.to_string(),
        "spf=none smtp.helo=\"2001:db8::1\" header.d=\"::ffff:192.0.2.1\""
    );
    // A keyword cannot carry a `;` or a comment into the header.
    let forged =
        ResInfo::new("x; dkim", Status::Pass).with_property(Property::new("smtp(", "mail;", "a"));
    assert_eq!(forged.to_string(), "xdkim=pass smtp.mail=a");
    // What cannot stand in a comment or a quoted string is escaped or
    // dropped, so the text still reads as what was meant.
    let hostile = ResInfo::new("x", Status::Fail)
        .with_comment("a) (b\\\r\n")
        .with_reason("say \"hi\"\0");
    assert_eq!(
        hostile.to_string(),
        "x=fail (a\\) \\(b\\\\) reason=\"say \\\"hi\\\"\""
    );
}

/// `dispatch-milter test` prints a check's results as the text they
/// are written as, as it did when checks handed over text.
#[test]
fn a_check_result_serializes_its_results_as_text() {
    let mut r = crate::checks::CheckResult::pass();
    let json =
        |r: &crate::checks::CheckResult| serde_json::to_value(r).unwrap()["auth_results"].clone();
    assert_eq!(json(&r), serde_json::Value::Null);
    r.auth_results = Some(vec![
        ResInfo::new("spf", Status::Pass).with_property(Property::new(
            "smtp",
            "mailfrom",
            "a.example",
        )),
        ResInfo::new("arc", Status::None),
    ]);
    assert_eq!(json(&r), "spf=pass smtp.mailfrom=a.example; arc=none");
}

/// The examples of RFC 8601 Appendix B, comments everywhere included.
#[test]
fn reads_the_rfc_examples() {
    let r = parse("example.org 1; none").unwrap();
    assert_eq!(
        (r.authserv_id.as_str(), r.version),
        ("example.org", Some(1))
    );
    assert!(r.results.is_empty());

    let r = parse(
        "example.com;\r\n  auth=pass (cram-md5) smtp.auth=sender@example.net;\r\n  spf=pass smtp.mailfrom=example.net",
    )
    .unwrap();
    assert_eq!(r.results.len(), 2);
    assert_eq!(r.results[0].comment.as_deref(), Some("cram-md5"));
    assert_eq!(r.results[0].properties[0].value, "sender@example.net");
    assert_eq!(r.results[1].status(), Some(Status::Pass));

    let r = parse(
        "foo.example.net (foobar) 1 (baz);\r\n    dkim (Because I like it) / 1 (One yay) = (wait for it) fail\r\n      policy (A dot can go here) . (like that) expired\r\n      (this surprised me) = (as I wasn't expecting it) 1362471462",
    )
    .unwrap();
    assert_eq!(r.version, Some(1));
    let dkim = &r.results[0];
    assert_eq!(
        (dkim.method.as_str(), dkim.method_version),
        ("dkim", Some(1))
    );
    assert_eq!(dkim.result, "fail");
    // Comments before a value are white space; only one after it is
    // the property's.
    assert_eq!(
        dkim.properties,
        [Property::new("policy", "expired", "1362471462")]
    );

    // A quoted local part stays as written; `reason` may be a token.
    let r = parse("mx; x=pass reason=why smtp.mailfrom=\"a b\"@example.org").unwrap();
    assert_eq!(r.results[0].reason.as_deref(), Some("why"));
    assert_eq!(r.results[0].properties[0].value, "\"a b\"@example.org");
    // A method may be called `none`.
    assert_eq!(parse("mx; none=pass").unwrap().results[0].method, "none");
}

#[test]
fn malformed_values_are_errors() {
    use ParseError::*;
    for (value, error) in [
        (
            "",
            Expected {
                expected: "a token or a quoted string",
                at: 0,
            },
        ),
        (
            "mx.example.org",
            Expected {
                expected: "\";\"",
                at: 14,
            },
        ),
        (
            "mx;",
            Expected {
                expected: "a method",
                at: 3,
            },
        ),
        (
            "mx; none junk",
            Expected {
                expected: "\"=\" after the method",
                at: 9,
            },
        ),
        (
            "mx; spf",
            Expected {
                expected: "\"=\" after the method",
                at: 7,
            },
        ),
        (
            "mx; spf=",
            Expected {
                expected: "a result",
                at: 8,
            },
        ),
        (
            "mx; spf=pass smtp",
            Expected {
                expected: "\".\" after the property type",
                at: 17,
            },
        ),
        (
            "mx; spf=pass smtp.mailfrom=",
            Expected {
                expected: "a property value",
                at: 27,
            },
        ),
        (
            "mx; spf=pass; ",
            Expected {
                expected: "a method",
                at: 14,
            },
        ),
        ("(open mx; none", UnterminatedComment { at: 0 }),
        ("mx; spf=pass (a (b) c", UnterminatedComment { at: 13 }),
        ("mx; spf=pass (a \\", UnterminatedComment { at: 13 }),
        ("\"mx; none", UnterminatedQuote { at: 0 }),
        ("mx; x=y reason=\"open", UnterminatedQuote { at: 15 }),
        ("mx; x=y a.b=\"c\\\"", UnterminatedQuote { at: 12 }),
        ("mx 99999999999; none", Number { at: 3 }),
        ("mx; x/4294967296=y", Number { at: 6 }),
        ("mx; x=y reason=a reason=b", SecondReason { at: 17 }),
    ] {
        assert_eq!(parse(value), Err(error), "{value:?}");
    }
    assert!(parse_results("spf=pass smtp.mailfrom=a.example; dkim=none").is_ok());
    assert!(parse_results("").is_err());
}

/// Deep nesting, long runs and many results take time in proportion to
/// their length and no stack.
#[test]
fn huge_values() {
    let n = 100_000;
    let deep = format!("mx; x=y {}{}", "(".repeat(n), ")".repeat(n));
    let r = parse(&deep).unwrap();
    assert_eq!(
        r.results[0].comment.as_ref().map(String::len),
        Some(2 * (n - 1))
    );
    let open = format!("mx; x=y {}", "(".repeat(n));
    assert_eq!(parse(&open), Err(ParseError::UnterminatedComment { at: 8 }));
    let many = format!(
        "mx; {}",
        vec!["spf=pass smtp.mailfrom=a.example"; n].join("; ")
    );
    assert_eq!(parse(&many).unwrap().results.len(), n);
    let long = format!("mx; x=y a.b={}", "v".repeat(10 * n));
    assert_eq!(
        parse(&long).unwrap().results[0].properties[0].value.len(),
        10 * n
    );
    let quotes = format!("mx; x=y a.b=\"{}", "\\\"".repeat(n));
    assert!(matches!(
        parse(&quotes),
        Err(ParseError::UnterminatedQuote { .. })
    ));
    let digits = format!("mx {}; none", "9".repeat(n));
    assert_eq!(parse(&digits), Err(ParseError::Number { at: 3 }));
}

fn keyword() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9_-]{0,8}"
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,12}", "\\PC{0,8}", "[a-z.]{1,12}"]
}

fn property() -> impl Strategy<Value = Property> {
    let value = prop_oneof![
        text(),
        any::<std::net::IpAddr>().prop_map(|ip| ip.to_string()),
        "[a-z]{1,6}@[a-z.]{1,8}",
    ];
    (keyword(), keyword(), value, proptest::option::of(text())).prop_map(
        |(ptype, name, value, comment)| Property {
            ptype,
            name,
            value,
            comment,
        },
    )
}

fn resinfo() -> impl Strategy<Value = ResInfo> {
    (
        keyword(),
        proptest::option::of(any::<u32>()),
        keyword(),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::collection::vec(property(), 0..4),
    )
        .prop_map(
            |(method, method_version, result, comment, reason, properties)| ResInfo {
                method,
                method_version,
                result,
                comment,
                reason,
                properties,
            },
        )
}

fn auth_results() -> impl Strategy<Value = AuthResults> {
    (
        text(),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(resinfo(), 0..4),
    )
        .prop_map(|(authserv_id, version, results)| AuthResults {
            authserv_id,
            version,
            results,
        })
}

proptest! {
    #[test]
    fn never_panics(value in any::<String>()) {
        let _ = claims(&value, "mx.example.org");
        let _ = parse(&value);
        let _ = parse_results(&value);
    }

    /// What is read from a received header is built into text that
    /// reads back as the same value (the builder drops what cannot be
    /// written, once).
    #[test]
    fn what_is_read_builds_to_a_fixed_point(
        pieces in proptest::collection::vec(
            prop_oneof![
                Just(" a.b=x"),
                Just(" a.b=\"q\\\"\0\r\n é\""),
                Just(" s.m=\"l p\"@d.example"),
                Just(" p.i=2001:db8::1"),
                Just(" h.b=a/b+="),
                Just(" u.v=é"),
                Just(" (c\0 (n) \\) \r\n x)"),
                Just(" reason=\"r\0\\\\\""),
                Just("; m=r"),
                Just("; m/2=r (c)"),
                Just("\r\n "),
            ],
            0..12,
        ),
    ) {
        let tail = pieces.concat();
        let value = format!("mx.example.org; spf=pass {tail}");
        if let Ok(read) = parse(&value) {
            prop_assert_eq!(Some(read.authserv_id.clone()), authserv_id(&value));
            let once = read.to_string();
            let again = parse(&once);
            prop_assert!(again.is_ok(), "{:?} from {:?}", once, value);
            prop_assert_eq!(again.map(|a| a.to_string()), Ok(once));
        }
    }

    #[test]
    fn what_is_built_reads_back(x in auth_results()) {
        let text = x.to_string();
        prop_assert_eq!(parse(&text), Ok(x.clone()), "{}", text);
        // The sanitizer reads the same id, and the text is already
        // what a header value is sanitized into.
        prop_assert_eq!(authserv_id(&text), Some(x.authserv_id.clone()));
        prop_assert_eq!(crate::edits::sanitize_value(&text), text.clone());
        prop_assert_eq!(parse_results(&Results(&x.results).to_string()).ok(),
            (!x.results.is_empty()).then(|| x.results.clone()));
    }

    #[test]
    fn comments_and_quoting_do_not_hide_the_id(
        comments in proptest::collection::vec("[a-z ()\\\\]{0,8}", 0..3),
        quote in any::<bool>(),
        upper in any::<bool>(),
    ) {
        let id = if upper { "MX.EXAMPLE.ORG" } else { "mx.example.org" };
        let id = if quote { format!("\"{id}\"") } else { id.to_string() };
        // Only comments that are balanced once escaped.
        let prefix: String = comments
            .iter()
            .map(|c| {
                let escaped: String = c
                    .chars()
                    .flat_map(|ch| match ch {
                        '(' | ')' | '\\' => vec!['\\', ch],
                        ch => vec![ch],
                    })
                    .collect();
                format!("({escaped}) ")
            })
            .collect();
        let value = format!("{prefix}{id}; dkim=pass");
        prop_assert!(claims(&value, "mx.example.org"), "{}", value);
    }
}

/// A value with control characters is written as what it is without them,
/// token or quoted, so that reading it and building it again writes the same
/// text (the fuzzer's `"MX.Ex\0\0\0!pleRG."` id was written quoted, read
/// back as a token and then written bare).
#[test]
fn control_characters_do_not_decide_the_quoting() {
    assert_eq!(pvalue("a\0b"), "ab");
    assert_eq!(pvalue("a\0 b"), "\"a b\"");
    assert_eq!(pvalue("\0"), "\"\"");
    let read = parse("\"MX.Ex\0\0\0!pleRG.\"; dkim=pass").expect("reads");
    let once = read.to_string();
    assert_eq!(once, "MX.Ex!pleRG.; dkim=pass");
    assert_eq!(parse(&once).map(|again| again.to_string()), Ok(once));
}
