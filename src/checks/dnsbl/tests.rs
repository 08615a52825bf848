use super::*;
use crate::address::Address;
use crate::checks::require_tls::tests::{build_err, build_ok, input, run};
use crate::message::{Envelope, Header, Message};

fn list(codes: Option<&[&str]>) -> List {
    List {
        zone: "bl.example".into(),
        kind: ListType::Ip,
        score: None,
        codes: codes.map(|c| c.iter().map(|s| parse_code(s).unwrap()).collect()),
        label: "bl.example".into(),
    }
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn ipv4_reversal() {
    let name = |ip: &str| Target::Ip(IpAddr::V4(ip4(ip))).query_name("bl.example");
    assert_eq!(name("192.0.2.10").as_deref(), Some("10.2.0.192.bl.example"));
    assert_eq!(name("127.0.0.2").as_deref(), Some("2.0.0.127.bl.example"));
    assert_eq!(name("0.0.0.0").as_deref(), Some("0.0.0.0.bl.example"));
    assert_eq!(
        name("255.100.9.10").as_deref(),
        Some("10.9.100.255.bl.example")
    );
    // Every octet is written as Display writes it.
    for octet in 0..=255u8 {
        let ip = Ipv4Addr::new(1, octet, 2, octet);
        assert_eq!(
            Target::Ip(IpAddr::V4(ip)).query_name("z"),
            Some(format!("{octet}.2.{octet}.1.z"))
        );
    }
}

#[test]
fn ipv6_nibble_form() {
    // The example of RFC 5782 §2.4.
    let ip: Ipv6Addr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
    assert_eq!(
        reverse_ipv6(ip),
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
    );
    let ip: Ipv6Addr = "::1".parse().unwrap();
    let nibbles = reverse_ipv6(ip);
    assert_eq!(nibbles.len(), 63);
    assert!(nibbles.starts_with("1.0.0.0."), "{nibbles}");
}

#[test]
fn query_names() {
    let t = Target::Ip("192.0.2.10".parse().unwrap());
    assert_eq!(
        t.query_name("zen.example").as_deref(),
        Some("10.2.0.192.zen.example")
    );
    let t = Target::Sender("example.org".into());
    assert_eq!(
        t.query_name("dbl.example").as_deref(),
        Some("example.org.dbl.example")
    );
    let long = format!("{}.example", "a".repeat(60));
    let t = Target::From(format!("{long}.{long}.{long}.{long}"));
    assert_eq!(t.query_name("dbl.example"), None);
}

#[test]
fn mapped_ipv6_is_ipv4() {
    let mapped: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
    assert_eq!(
        crate::ip::canonical(mapped),
        "192.0.2.10".parse::<IpAddr>().unwrap()
    );
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(crate::ip::canonical(v6), v6);
}

#[test]
fn code_parsing() {
    let r = parse_code("127.0.0.4-127.0.0.7").unwrap();
    assert!(!r.contains(ip4("127.0.0.3")));
    assert!(r.contains(ip4("127.0.0.4")));
    assert!(r.contains(ip4("127.0.0.7")));
    assert!(!r.contains(ip4("127.0.0.8")));
    let r = parse_code(" 127.0.0.2 ").unwrap();
    assert!(r.contains(ip4("127.0.0.2")) && !r.contains(ip4("127.0.0.3")));
    let r = parse_code("127.0.1.0/24").unwrap();
    assert!(r.contains(ip4("127.0.1.0")) && r.contains(ip4("127.0.1.255")));
    assert!(!r.contains(ip4("127.0.2.0")));

    let e = parse_code("127.0.0.300").unwrap_err().to_string();
    assert!(e.contains("not an IPv4 address"), "{e}");
    let e = parse_code("127.0.0.7-127.0.0.4").unwrap_err().to_string();
    assert!(e.contains("ends before it starts"), "{e}");
    let e = parse_code("10.0.0.2").unwrap_err().to_string();
    assert!(e.contains("outside 127.0.0.0/8"), "{e}");
    let e = parse_code("127.0.0.0/8").unwrap_err().to_string();
    assert!(e.contains("127.255.255.0/24"), "{e}");
    let e = parse_code("127.0.0.0/33").unwrap_err().to_string();
    assert!(e.contains("prefix"), "{e}");
    let texts = [
        ("127.0.0.300", "\"127.0.0.300\" is not an IPv4 address"),
        (
            " 127.0.0.7 - 127.0.0.4 ",
            "the range \"127.0.0.7 - 127.0.0.4\" ends before it starts",
        ),
        (
            "127.0.0.0/33",
            "\"127.0.0.0/33\" is not an IPv4 prefix such as \"127.0.0.0/24\"",
        ),
        (
            "10.0.0.2",
            "\"10.0.0.2\" is outside 127.0.0.0/8, where list answers are (RFC 5782 §2.1)",
        ),
        (
            "127.0.0.0/8",
            "\"127.0.0.0/8\" overlaps 127.255.255.0/24, which lists use for error answers, never for listings",
        ),
    ];
    for (code, text) in texts {
        assert_eq!(parse_code(code).unwrap_err().to_string(), text);
    }
}

#[test]
fn default_codes_skip_errors_and_foreign_answers() {
    let l = list(None);
    assert_eq!(
        l.classify(Ok(vec![ip4("127.0.0.2")])),
        Answer::Listed(vec![ip4("127.0.0.2")])
    );
    assert_eq!(l.classify(Ok(vec![ip4("192.0.2.1")])), Answer::NotListed);
    assert_eq!(l.classify(Err(DnsError::NotFound)), Answer::NotListed);
    match l.classify(Ok(vec![ip4("127.255.255.254")])) {
        Answer::Error(e) => {
            assert!(e.contains("127.255.255.254"), "{e}");
            assert!(e.contains("public or open resolver"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    match l.classify(Err(DnsError::Temporary("timed out".into()))) {
        Answer::Error(e) => assert!(e.starts_with("bl.example: "), "{e}"),
        other => panic!("{other:?}"),
    }
    // A listing code wins over an error code in the same answer.
    assert_eq!(
        l.classify(Ok(vec![ip4("127.255.255.255"), ip4("127.0.0.4")])),
        Answer::Listed(vec![ip4("127.0.0.4")])
    );
}

#[test]
fn configured_codes_filter() {
    let l = list(Some(&["127.0.0.2", "127.0.0.4-127.0.0.7"]));
    assert_eq!(l.classify(Ok(vec![ip4("127.0.0.3")])), Answer::NotListed);
    assert_eq!(
        l.classify(Ok(vec![
            ip4("127.0.0.10"),
            ip4("127.0.0.5"),
            ip4("127.0.0.2")
        ])),
        Answer::Listed(vec![ip4("127.0.0.2"), ip4("127.0.0.5")])
    );
}

#[test]
fn from_header_parsing() {
    assert_eq!(from_header_domains("alice@Example.org"), ["example.org"]);
    assert_eq!(
        from_header_domains(
            "\"Smith, A <x@evil.example>\" <a@ok.example>, b@two.example (c@three.example)"
        ),
        ["ok.example", "two.example"]
    );
    assert_eq!(
        from_header_domains("Team: a@one.example, \"q\"@two.example;"),
        ["one.example", "two.example"]
    );
    assert_eq!(
        from_header_domains("Alice\r\n <alice@bücher.example>"),
        ["xn--bcher-kva.example"]
    );
    assert!(from_header_domains("undisclosed-recipients:;").is_empty());
    assert!(from_header_domains("someone@[192.0.2.1]").is_empty());
    assert!(from_header_domains("no address here").is_empty());
}

#[test]
fn helo_domains() {
    assert_eq!(
        lookup_domain("Mail.Example.NET.").as_deref(),
        Some("mail.example.net")
    );
    assert_eq!(lookup_domain("[192.0.2.1]"), None);
    assert_eq!(lookup_domain("192.0.2.1"), None);
    assert_eq!(lookup_domain("localhost"), None);
    assert_eq!(lookup_domain("bad..example"), None);
}

#[test]
fn stages_follow_the_latest_list() {
    let ip = build_ok(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip" }]"#,
    );
    assert_eq!(ip.inputs(), Stage::Connect);
    assert_eq!(ip.decides(), Stage::Mail);
    let helo = build_ok(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip" }, { zone = "dbl.example", type = "helo" }]"#,
    );
    assert_eq!(helo.inputs(), Stage::Helo);
    let sender = build_ok(
        DnsblCheck::build,
        r#"lists = [{ zone = "dbl.example", type = "sender" }, { zone = "zen.example", type = "ip" }]"#,
    );
    assert_eq!(sender.inputs(), Stage::Mail);
    assert_eq!(sender.decides(), Stage::Mail);
    let from = build_ok(
        DnsblCheck::build,
        r#"
        [[lists]]
        zone = "dbl.example"
        type = "from"
        score = 2.5
        codes = ["127.0.1.2-127.0.1.99"]
        name = "dbl"
        "#,
    );
    assert_eq!(from.inputs(), Stage::Eom);
    assert_eq!(from.decides(), Stage::Eom);
}

#[test]
fn option_errors() {
    let e = build_err(DnsblCheck::build, "");
    assert!(e.contains("needs `lists`"), "{e}");
    let e = build_err(DnsblCheck::build, "lists = []");
    assert!(e.contains("is empty"), "{e}");
    let e = build_err(DnsblCheck::build, r#"lists = "zen.example""#);
    assert!(e.contains("must be a list of tables such as"), "{e}");
    let e = build_err(DnsblCheck::build, r#"lists = ["zen.example"]"#);
    assert!(
        e.contains("`lists[0]`") && e.contains("must be a table such as"),
        "{e}"
    );
    let e = build_err(DnsblCheck::build, r#"lists = [{ type = "ip" }]"#);
    assert!(e.contains("needs `zone`"), "{e}");
    let e = build_err(DnsblCheck::build, r#"lists = [{ zone = "zen.example" }]"#);
    assert!(
        e.contains("needs `type`") && e.contains("\"sender\""),
        "{e}"
    );
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip" }, { zone = "bad..zone", type = "ip" }]"#,
    );
    assert!(
        e.contains("`lists[1].zone`") && e.contains("not a valid domain"),
        "{e}"
    );
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "127.0.0.2", type = "ip" }]"#,
    );
    assert!(e.contains("not an address"), "{e}");
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "client" }]"#,
    );
    assert!(e.contains("found \"client\""), "{e}");
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip", score = "high" }]"#,
    );
    assert!(
        e.contains("`lists[0].score` in check \"t\" must be a number, found \"high\""),
        "{e}"
    );
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip", score = inf }]"#,
    );
    assert!(
        e.contains("`lists[0].score`") && e.contains("finite"),
        "{e}"
    );
    // A missing key is named in every list of one run, with what it may be.
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ type = "ip" }, { zone = "zen.example" }]"#,
    );
    assert!(
        e.contains("`lists[0]` in check \"t\" needs `zone`")
            && e.contains("`lists[1]` in check \"t\" needs `type`"),
        "{e}"
    );
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip", codes = ["127.0.0.2", "127.0.0.x"] }]"#,
    );
    assert!(e.contains("\"127.0.0.x\" is not an IPv4 address"), "{e}");
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip", codes = [] }]"#,
    );
    assert!(e.contains("`lists[0].codes`") && e.contains("empty"), "{e}");
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip", codes = [2] }]"#,
    );
    assert!(
        e.contains("`lists[0].codes[0]` in check \"t\" must be a string, found 2"),
        "{e}"
    );
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip", name = "" }]"#,
    );
    assert!(e.contains("`lists[0].name`"), "{e}");
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip", scroe = 1 }]"#,
    );
    assert!(e.contains("unknown key `scroe` in `lists[0]`"), "{e}");
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip" }, { zone = "Zen.Example.", type = "ip" }]"#,
    );
    assert!(
        e.contains("`lists[1]` in check \"t\" repeats `lists[0]`"),
        "{e}"
    );
    // A wrong list between the two does not shift the numbers.
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip" }, { zone = "x" }, { zone = "zen.example", type = "ip" }]"#,
    );
    assert!(
        e.contains("`lists[2]` in check \"t\" repeats `lists[0]`"),
        "{e}"
    );
    let e = build_err(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip" }]
        list = 1"#,
    );
    assert!(e.contains("unknown key `list`"), "{e}");
}

#[tokio::test]
async fn nothing_to_look_up_is_none() {
    let check = build_ok(
        DnsblCheck::build,
        r#"lists = [{ zone = "zen.example", type = "ip" }, { zone = "dbl.example", type = "sender" }, { zone = "dbl.example", type = "from" }, { zone = "dbl.example", type = "helo" }]"#,
    );
    let mut i = input(Stage::Eom);
    Arc::make_mut(&mut i.connection).helo = Some("[192.0.2.1]".into());
    i.envelope = Some(Envelope {
        rewritten_sender: None,
        sender: Address::Null,
        mail_args: vec![],
        recipients: vec![],
    });
    i.message = Some(Arc::new(Message {
        headers: vec![Header::new("From", "undisclosed:;")],
        ..Message::default()
    }));
    // No client address, an address literal, <> and no From domain: no
    // query is sent, and the result says why.
    let r = run(&check, i).await;
    assert_eq!(r.status, Status::None);
    let reason = r.reason.unwrap();
    assert!(reason.contains("no client address"), "{reason}");
    assert!(reason.contains("no sender domain"), "{reason}");
    assert!(reason.contains("no HELO domain"), "{reason}");
}

#[test]
fn targets_from_input() {
    let mut i = input(Stage::Eom);
    Arc::make_mut(&mut i.connection).client_ip = Some("::ffff:192.0.2.10".parse().unwrap());
    Arc::make_mut(&mut i.connection).helo = Some("Mail.Example.NET".into());
    i.envelope = Some(Envelope {
        rewritten_sender: None,
        sender: Address::parse("<joe@Sender.Example>").unwrap(),
        mail_args: vec![],
        recipients: vec![],
    });
    let from: Vec<Header> = (0..8)
        .map(|n| Header::new("from", format!("a@d{n}.example, b@d{n}.example")))
        .collect();
    i.message = Some(Arc::new(Message {
        headers: from,
        ..Message::default()
    }));
    assert_eq!(
        targets(ListType::Ip, &i),
        Ok(vec![Target::Ip("192.0.2.10".parse().unwrap())])
    );
    assert_eq!(
        targets(ListType::Helo, &i),
        Ok(vec![Target::Helo("mail.example.net".into())])
    );
    assert_eq!(
        targets(ListType::Sender, &i),
        Ok(vec![Target::Sender("sender.example".into())])
    );
    let from = targets(ListType::From, &i).unwrap();
    assert_eq!(from.len(), MAX_FROM_DOMAINS);
    assert_eq!(from[0], Target::From("d0.example".into()));
}

#[test]
fn combining_sums_scores_of_listing_lists() {
    let check = DnsblCheck {
        lists: vec![
            List {
                score: Some(2.0),
                label: "a".into(),
                ..list(None)
            },
            List {
                score: Some(3.5),
                label: "b".into(),
                ..list(None)
            },
            List {
                score: Some(100.0),
                label: "c".into(),
                ..list(None)
            },
        ],
        dns: crate::dns::unreachable_for_tests(),
        inputs: Stage::Connect,
    };
    let ip = Target::Ip("192.0.2.10".parse().unwrap());
    let r = check.combine(&[
        (0, 0, ip.clone(), Answer::Listed(vec![ip4("127.0.0.2")])),
        (
            1,
            0,
            ip.clone(),
            Answer::Listed(vec![ip4("127.0.0.3"), ip4("127.0.0.4")]),
        ),
        (2, 0, ip.clone(), Answer::NotListed),
    ]);
    assert_eq!(r.status, Status::Fail);
    assert_eq!(r.score, Some(5.5));
    assert_eq!(
        r.reason.as_deref(),
        Some(
            "listed in a (127.0.0.2) for 192.0.2.10; listed in b (127.0.0.3, 127.0.0.4) for 192.0.2.10"
        )
    );
    let r = check.combine(&[
        (
            0,
            0,
            ip.clone(),
            Answer::Error("a: DNS failure: timed out".into()),
        ),
        (1, 0, ip.clone(), Answer::NotListed),
    ]);
    assert_eq!(r.status, Status::Temperror);
    assert_eq!(r.reason.as_deref(), Some("a: DNS failure: timed out"));
    let r = check.combine(&[
        (0, 0, ip.clone(), Answer::Error("a: DNS failure".into())),
        (1, 0, ip.clone(), Answer::Listed(vec![ip4("127.0.0.2")])),
    ]);
    assert_eq!(r.status, Status::Fail);
    assert_eq!(r.score, Some(3.5));
    let r = check.combine(&[(0, 0, ip.clone(), Answer::NotListed)]);
    assert_eq!(r.status, Status::Pass);
    assert_eq!(r.score, None);
}
