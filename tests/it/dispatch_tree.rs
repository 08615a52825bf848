//! The dispatch tree: precedence, defaults, the seed's equivalences,
//! duplicates, IDNA and case, the null sender, and connection-based sources.

use crate::common;

use common::{compile, errors_of};
use dispatch_milter::address::Address;
use dispatch_milter::policy::{MatchedBy, Policy, SourceFacts};
use std::net::IpAddr;

/// Where a (sender, recipient) pair goes: "source label > branch label: outcome".
fn route_with(
    policy: &Policy,
    sender: &str,
    rcpt: &str,
    auth: Option<&str>,
    ip: Option<&str>,
    daemon: Option<&str>,
) -> (String, MatchedBy) {
    let pipeline = &policy.pipelines[0];
    let sender = Address::parse(sender).unwrap();
    let facts = SourceFacts {
        auth_user: auth,
        client_ip: ip.map(|s| s.parse::<IpAddr>().unwrap()),
        daemon_name: daemon,
        sender: &sender,
    };
    let (source, _) = pipeline.sources.select(&facts);
    let (branch, how) = source.destinations.select(&Address::parse(rcpt).unwrap());
    (format!("{}: {}", branch.label, branch.outcome.name()), how)
}

fn route(policy: &Policy, sender: &str, rcpt: &str) -> String {
    route_with(policy, sender, rcpt, None, None, None).0
}

/// The outcome alone, to compare configs written differently.
fn outcome(policy: &Policy, sender: &str, rcpt: &str) -> String {
    let r = route(policy, sender, rcpt);
    r.rsplit(": ").next().unwrap().to_string()
}

#[test]
fn exact_address_beats_domain_whatever_the_order() {
    for (first, second) in [
        ("joe@example.org", "example.org"),
        ("example.org", "joe@example.org"),
    ] {
        let p = compile(&format!(
            r#"
            [pipelines.p]
            [[pipelines.p.destination]]
            match = ["{first}"]
            action = "{a1}"
            [[pipelines.p.destination]]
            match = ["{second}"]
            action = "{a2}"
            "#,
            a1 = if first.contains('@') {
                "reject"
            } else {
                "accept"
            },
            a2 = if second.contains('@') {
                "reject"
            } else {
                "accept"
            },
        ));
        assert_eq!(outcome(&p, "a@x.net", "joe@example.org"), "reject");
        assert_eq!(outcome(&p, "a@x.net", "ann@example.org"), "accept");
        let (_, how) = route_with(&p, "a@x.net", "joe@example.org", None, None, None);
        assert_eq!(how, MatchedBy::Address);
    }
}

#[test]
fn defaults_at_each_level_and_the_implicit_default() {
    let p = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.source]]
        match = ["example.org"]
        [[pipelines.p.source.destination]]
        match = ["example.com"]
        action = "accept"
        [pipelines.p.source.default]
        action = "tempfail"

        [[pipelines.p.source]]
        match = ["example.net"]
        [[pipelines.p.source.destination]]
        match = ["example.com"]
        action = "discard"

        [pipelines.p.default]
        action = "reject"
        "#,
    );
    assert_eq!(outcome(&p, "a@example.org", "b@example.com"), "accept");
    // The source's own default.
    assert_eq!(outcome(&p, "a@example.org", "b@other.test"), "tempfail");
    // A source without a default: the implicit default accepts.
    assert_eq!(outcome(&p, "a@example.net", "b@other.test"), "accept");
    assert_eq!(outcome(&p, "a@example.net", "b@example.com"), "discard");
    // No source matched: the pipeline's default.
    assert_eq!(outcome(&p, "a@elsewhere.test", "b@example.com"), "reject");

    // A pipeline with no dispatch at all accepts everything.
    let empty = compile("[pipelines.p]\n");
    assert_eq!(outcome(&empty, "a@x.test", "b@y.test"), "accept");
}

const PAIRS: &[(&str, &str)] = &[
    ("a@example.org", "x@example.com"),
    ("a@example.org", "x@other.test"),
    ("a@example.net", "x@example.com"),
    ("a@elsewhere.test", "x@example.com"),
    ("<>", "x@example.com"),
];

fn same_outcomes(a: &Policy, b: &Policy) {
    for (s, r) in PAIRS {
        assert_eq!(outcome(a, s, r), outcome(b, s, r), "{s} -> {r}");
    }
}

/// The seed: `source ...; default { reject }` equals `default { default { reject } }`.
#[test]
fn seed_equivalence_default_without_dispatch() {
    let short = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.source]]
        match = ["example.org"]
        action = "accept"
        [pipelines.p.default]
        action = "reject"
        "#,
    );
    let long = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.source]]
        match = ["example.org"]
        [pipelines.p.source.default]
        action = "accept"
        [pipelines.p.default]
        [pipelines.p.default.default]
        action = "reject"
        "#,
    );
    same_outcomes(&short, &long);
    assert_eq!(outcome(&short, "a@example.net", "x@example.com"), "reject");
    assert_eq!(outcome(&short, "a@example.org", "x@example.com"), "accept");
}

/// The seed: a source with destinations and its own default, next to a
/// top-level default without dispatch directives.
#[test]
fn seed_equivalence_source_with_destinations() {
    let short = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.source]]
        match = ["example.org"]
        [[pipelines.p.source.destination]]
        match = ["example.com"]
        action = "accept"
        [pipelines.p.source.default]
        action = "reject"
        [pipelines.p.default]
        action = "reject"
        "#,
    );
    let long = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.source]]
        match = ["example.org"]
        [[pipelines.p.source.destination]]
        match = ["example.com"]
        action = "accept"
        [pipelines.p.source.default]
        action = "reject"
        [pipelines.p.default]
        [pipelines.p.default.default]
        action = "reject"
        "#,
    );
    same_outcomes(&short, &long);
    assert_eq!(outcome(&short, "a@example.org", "x@example.com"), "accept");
    assert_eq!(outcome(&short, "a@example.org", "x@other.test"), "reject");
}

/// Top-level destinations belong to the default source: the same as writing
/// them inside `default`.
#[test]
fn top_level_destinations_equal_destinations_inside_default() {
    let top = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.destination]]
        match = ["example.com"]
        action = "accept"
        [pipelines.p.default]
        action = "reject"
        "#,
    );
    let nested = compile(
        r#"
        [pipelines.p]
        [pipelines.p.default]
        [[pipelines.p.default.destination]]
        match = ["example.com"]
        action = "accept"
        [pipelines.p.default.default]
        action = "reject"
        "#,
    );
    same_outcomes(&top, &nested);
    assert_eq!(outcome(&top, "a@x.test", "x@example.com"), "accept");
    assert_eq!(outcome(&top, "a@x.test", "x@other.test"), "reject");
}

#[test]
fn duplicates_are_errors_with_line_and_column() {
    let e = errors_of(
        "[pipelines.p]\n[[pipelines.p.destination]]\nmatch = [\"example.org\"]\n[[pipelines.p.destination]]\nmatch = [\"b@x.test\", \"EXAMPLE.org.\"]\n",
    );
    assert!(
        e.contains(
            "test.toml:5:22: domain \"EXAMPLE.org.\" is matched by two blocks at this level"
        ),
        "{e}"
    );
    assert!(e.contains("first matched at line 3, column 10"), "{e}");

    // The same address in one source's destinations twice, via its U-label.
    let e = errors_of(
        "[pipelines.p]\n[[pipelines.p.source]]\nmatch = [\"bücher.example\", \"xn--bcher-kva.example\"]\n",
    );
    assert!(e.contains("test.toml:3:28:"), "{e}");

    // The same domain at two different levels is fine.
    compile(
        "[pipelines.p]\n[[pipelines.p.source]]\nmatch = [\"example.org\"]\n[[pipelines.p.source.destination]]\nmatch = [\"example.org\"]\n",
    );
}

#[test]
fn idna_case_and_trailing_dot_are_one_domain() {
    let p = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.destination]]
        match = ["Bücher.Example"]
        action = "reject"
        [[pipelines.p.destination]]
        match = ["Joe@Example.ORG"]
        action = "discard"
        "#,
    );
    assert_eq!(
        outcome(&p, "a@x.test", "kim@xn--bcher-kva.example"),
        "reject"
    );
    assert_eq!(outcome(&p, "a@x.test", "kim@BÜCHER.example."), "reject");
    assert_eq!(
        outcome(&p, "a@x.test", "kim@bu\u{0308}cher.example"),
        "reject"
    );
    assert_eq!(outcome(&p, "a@x.test", "JOE@example.org"), "discard");
    assert_eq!(outcome(&p, "a@x.test", "joe@other.test"), "accept");
}

#[test]
fn null_sender_and_bare_postmaster() {
    let p = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.source]]
        match = ["<>"]
        [[pipelines.p.source.destination]]
        match = ["postmaster"]
        action = "accept"
        [pipelines.p.source.default]
        action = "reject"
        [pipelines.p.default]
        action = "tempfail"
        "#,
    );
    // Bounces match only "<>", never a domain block.
    assert_eq!(outcome(&p, "<>", "Postmaster"), "accept");
    assert_eq!(outcome(&p, "<>", "x@example.com"), "reject");
    assert_eq!(outcome(&p, "a@example.com", "x@example.com"), "tempfail");
    // A bare postmaster matches only "postmaster", not postmaster@domain.
    assert_eq!(outcome(&p, "<>", "postmaster@example.com"), "reject");
}

#[test]
fn sources_by_network_auth_user_and_daemon_name() {
    let p = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.source]]
        networks = ["192.0.2.0/24", "2001:db8::/32"]
        action = "accept"
        [[pipelines.p.source]]
        networks = ["192.0.2.128/25"]
        action = "quarantine"
        [[pipelines.p.source]]
        auth_users = ["Alice"]
        action = "discard"
        [[pipelines.p.source]]
        auth_users = ["*"]
        action = "tempfail"
        [[pipelines.p.source]]
        daemon_names = ["submission"]
        action = "reject"
        [[pipelines.p.source]]
        match = ["example.org"]
        action = "accept"
        [pipelines.p.default]
        action = "reject"
        "#,
    );
    let r = |auth, ip, daemon| route_with(&p, "x@example.net", "y@example.com", auth, ip, daemon).0;
    assert!(r(None, Some("192.0.2.1"), None).ends_with("accept"));
    // Longest prefix wins.
    assert!(r(None, Some("192.0.2.200"), None).ends_with("quarantine"));
    assert!(
        r(None, Some("::ffff:192.0.2.1"), None).ends_with("accept"),
        "IPv4-mapped"
    );
    assert!(r(None, Some("2001:db8::1"), None).ends_with("accept"));
    assert!(r(None, Some("198.51.100.1"), None).ends_with("reject"));
    // An authenticated user beats the network; names compare without case.
    assert!(r(Some("alice"), Some("192.0.2.1"), None).ends_with("discard"));
    assert!(r(Some("bob"), Some("192.0.2.1"), None).ends_with("tempfail"));
    assert!(r(None, Some("198.51.100.1"), Some("submission")).ends_with("reject"));
    // The sender's domain comes after the connection facts.
    let s = route_with(
        &p,
        "x@example.org",
        "y@example.com",
        None,
        Some("198.51.100.1"),
        None,
    )
    .0;
    assert!(s.ends_with("accept"), "{s}");
}

#[test]
fn table_membership_comes_after_address_and_domain() {
    let p = compile(
        r#"
        [tables.boxes]
        type = "inline"
        entries = { "alice@example.org" = true, "bob@example.org" = true }

        [pipelines.p]
        [[pipelines.p.destination]]
        table = "boxes"
        action = "accept"
        [[pipelines.p.destination]]
        match = ["bob@example.org"]
        action = "quarantine"
        [pipelines.p.default]
        action = "reject"
        reply = { code = 550, status = "5.1.1", text = "No such user" }
        "#,
    );
    assert_eq!(outcome(&p, "a@x.test", "Alice@example.org"), "accept");
    assert_eq!(outcome(&p, "a@x.test", "bob@example.org"), "quarantine");
    assert_eq!(outcome(&p, "a@x.test", "carol@example.org"), "reject");
    let (_, how) = route_with(&p, "a@x.test", "alice@example.org", None, None, None);
    assert_eq!(how, MatchedBy::Table);
}

#[test]
fn structural_errors() {
    let e = errors_of(
        "[pipelines.p]\n[[pipelines.p.destination]]\nmatch = [\"a.test\"]\n[[pipelines.p.destination.source]]\nmatch = [\"b.test\"]\n",
    );
    assert!(
        e.contains("test.toml:4:1: a source block inside a destination block is not allowed"),
        "{e}"
    );

    let e = errors_of("[pipelines.p]\n[[pipelines.p.source]]\naction = \"accept\"\n");
    assert!(e.contains("a source block needs a selector"), "{e}");

    let e = errors_of(
        "[pipelines.p]\n[[pipelines.p.destination]]\nmatch = [\"a.test\"]\nnetworks = [\"10.0.0.0/8\"]\n",
    );
    assert!(
        e.contains("test.toml:4:12: `networks` can only select a source block"),
        "{e}"
    );

    let e = errors_of("[pipelines.p]\n[[pipelines.p.source]]\nnetworks = [\"10.0.0.300/8\"]\n");
    assert!(
        e.contains("test.toml:3:13: invalid network \"10.0.0.300/8\""),
        "{e}"
    );

    let e = errors_of(
        "[pipelines.p]\n[[pipelines.p.destination]]\nmatch = [\"a.test\"]\naction = \"reject\"\nreply = { code = 550, status = \"4.1.1\" }\n",
    );
    assert!(e.contains("does not match reply code 550"), "{e}");

    let e = errors_of("[pipelines.p]\n[[pipelines.p.destination]]\nmatch = [\"exa mple.test\"]\n");
    assert!(
        e.contains("test.toml:3:10: invalid domain \"exa mple.test\""),
        "{e}"
    );
}

#[test]
fn sender_rewrites_cannot_be_chosen_per_recipient() {
    let e = errors_of(
        "[modifiers.m]\nkind = \"rewrite_sender\"\npattern = \"a\"\nreplacement = \"b@x.test\"\n[pipelines.p]\n[[pipelines.p.destination]]\nmatch = [\"x.test\"]\nmodify = [\"m\"]\n",
    );
    assert!(
        e.contains("test.toml:8:11: modifier \"m\" rewrites the sender"),
        "{e}"
    );
    let e =
        errors_of("[modifiers.m]\nkind = \"strip_plus\"\n[pipelines.p]\nmodify = [\"m\", \"m\"]\n");
    assert!(
        e.contains("test.toml:4:16: modifier \"m\" is listed twice here"),
        "{e}"
    );
}

#[test]
fn one_daemon_name_selects_one_pipeline() {
    let e = errors_of(
        "[pipelines.a]\ndaemon_names = [\"submission\"]\n[pipelines.b]\ndaemon_names = [\"submission\"]\n",
    );
    assert!(
        e.contains("daemon name \"submission\" selects both pipeline \"a\" and pipeline \"b\""),
        "{e}"
    );
    let e = errors_of("[server]\nmax_connections = 9223372036854775807\n[pipelines.a]\n");
    assert!(
        e.contains("test.toml:2:19: `max_connections` must be between 1 and 1000000"),
        "{e}"
    );
}

/// One choice of pipeline for the daemon and `test`: the named one (a
/// listener's `pipeline`), else by `{daemon_name}`, else the first; a name
/// that does not exist chooses nothing rather than another pipeline.
#[test]
fn the_pipeline_is_chosen_by_name_then_daemon_name_then_first() {
    let policy = compile(
        r#"
        [pipelines.mx]
        [pipelines.submission]
        daemon_names = ["submission", "smtps"]
        [pipelines.local]
        daemon_names = ["pickup"]
        "#,
    );
    let chosen = |named: Option<&str>, daemon: Option<&str>| {
        policy
            .choose_pipeline(named, daemon)
            .map(|i| policy.pipelines[i].name.clone())
    };
    assert_eq!(
        chosen(Some("local"), Some("submission")).as_deref(),
        Some("local")
    );
    assert_eq!(chosen(Some("gone"), Some("submission")), None);
    assert_eq!(chosen(None, Some("smtps")).as_deref(), Some("submission"));
    assert_eq!(chosen(None, Some("pickup")).as_deref(), Some("local"));
    assert_eq!(chosen(None, Some("smtpd")).as_deref(), Some("mx"));
    assert_eq!(chosen(None, None).as_deref(), Some("mx"));
}
