//! One mailbox, one branch: every spelling RFC 5321 makes the same mailbox
//! (quoting, quoted pairs, case, a trailing dot, U-label or A-label) reaches
//! the same dispatch branch, through source rules, destination rules, file
//! and inline tables and `strip_plus`; an address that cannot be read is
//! refused, never matched by a looser rule.

use crate::common;

use common::daemon::{LISTEN, TestDaemon, open_greeted};
use common::{Mail, compile_with, run_mail};
use dispatch_milter::engine::StageReply;
use dispatch_milter::policy::Policy;
use indymilter_test::Status;
use proptest::prelude::*;
use std::ffi::CString;
use std::sync::{Arc, OnceLock};

fn config(table_path: &str) -> String {
    format!(
        r#"
[tables.boxes]
type = "file"
path = "{table_path}"

[tables.guests]
type = "inline"
entries = {{ "Carol@Bücher.example" = true }}

[modifiers.plus]
kind = "strip_plus"

[pipelines.mx]
modify = ["plus"]

[[pipelines.mx.source]]
match = ["spammer@example.net", "Spam.Mer@bücher.example"]
[pipelines.mx.source.default]
action = "reject"
reply = {{ code = 554, status = "5.7.1", text = "spammer" }}

[[pipelines.mx.destination]]
match = ["blocked@example.org"]
action = "reject"
reply = {{ code = 550, status = "5.7.1", text = "blocked" }}

[[pipelines.mx.destination]]
table = "boxes"

[[pipelines.mx.destination]]
table = "guests"
action = "tempfail"
reply = {{ code = 450, status = "4.7.1", text = "guest" }}

[pipelines.mx.default]
action = "reject"
reply = {{ code = 550, status = "5.1.1", text = "No such user here" }}
"#
    )
}

/// The file table: one plain mailbox and one whose name needs quotes,
/// written with quoting and case the envelope need not share.
const BOXES: &str = "alice@example.org ok\n\"John Smith\"@Example.ORG ok\n";

fn policy() -> &'static (tempfile::TempDir, Arc<Policy>) {
    static POLICY: OnceLock<(tempfile::TempDir, Arc<Policy>)> = OnceLock::new();
    POLICY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boxes");
        std::fs::write(&path, BOXES).unwrap();
        let policy = compile_with(
            &config(path.to_str().unwrap()),
            Arc::new(common::Probes::default()),
        );
        (dir, policy)
    })
}

/// What MAIL FROM and one RCPT TO are told, as `code text` ("250" for
/// continue): each branch of the config answers differently.
fn route(sender: &str, rcpt: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut mail = Mail::new(sender, &[rcpt]);
        // run_mail adds the angle brackets.
        mail.from = sender.to_string();
        let run = run_mail(&policy().1, "mx", &mail).await;
        let show = |r: &StageReply| match r {
            StageReply::Continue => "250".to_string(),
            StageReply::Reject(r) | StageReply::Tempfail(r) => format!("{} {}", r.code, r.text),
        };
        if !run.mail.is_continue() {
            return format!("mail {}", show(&run.mail));
        }
        show(&run.rcpts[0])
    })
}

/// A spelling of the same mailbox, driven by `choices`: random case,
/// quoting of the whole local part or of runs of it, quoted pairs, and
/// for the domain random case, a trailing dot and the A-label form.
fn spell(local: &str, domain: &str, a_label: Option<&str>, choices: &[u8]) -> String {
    let mut c = choices.iter().copied().cycle();
    let mut next = move || c.next().unwrap_or(0);
    let needs_quotes = local.contains(' ');
    let flip = |ch: char, bit: u8| {
        if bit & 1 == 1 {
            ch.to_ascii_uppercase()
        } else {
            ch.to_ascii_lowercase()
        }
    };
    let mut out = String::new();
    let mode = if needs_quotes { 1 } else { next() % 3 };
    match mode {
        // As it is, in random case.
        0 => out.extend(local.chars().map(|ch| flip(ch, next()))),
        // One quoted string, some characters as quoted pairs.
        1 => {
            out.push('"');
            for ch in local.chars() {
                if next() % 3 == 0 {
                    out.push('\\');
                }
                out.push(flip(ch, next()));
            }
            out.push('"');
        }
        // Runs that alternate quoted and unquoted.
        _ => {
            let mut quoted = false;
            for ch in local.chars() {
                if next() % 2 == 0 {
                    out.push('"');
                    quoted = !quoted;
                }
                if quoted && next() % 4 == 0 {
                    out.push('\\');
                }
                out.push(flip(ch, next()));
            }
            if quoted {
                out.push('"');
            }
        }
    }
    out.push('@');
    let domain = match a_label {
        Some(a) if next() % 2 == 0 => a,
        _ => domain,
    };
    out.extend(domain.chars().map(|ch| flip(ch, next())));
    if next() % 2 == 0 {
        out.push('.');
    }
    out
}

/// (local part, domain, A-label of the domain, what it must be told)
const RECIPIENTS: &[(&str, &str, Option<&str>, &str)] = &[
    ("blocked", "example.org", None, "550 blocked"),
    ("alice", "example.org", None, "250"),
    ("alice+news", "example.org", None, "250"),
    ("John Smith", "example.org", None, "250"),
    (
        "carol",
        "bücher.example",
        Some("xn--bcher-kva.example"),
        "450 guest",
    ),
    ("nobody", "example.org", None, "550 No such user here"),
];

const SENDERS: &[(&str, &str, Option<&str>, &str)] = &[
    ("spammer", "example.net", None, "554 spammer"),
    (
        "spam.mer",
        "bücher.example",
        Some("xn--bcher-kva.example"),
        "554 spammer",
    ),
];

#[test]
fn the_plain_spellings_reach_their_branches() {
    for (local, domain, _, expected) in RECIPIENTS {
        let rcpt = if local.contains(' ') {
            format!("\"{local}\"@{domain}")
        } else {
            format!("{local}@{domain}")
        };
        assert_eq!(route("someone@example.net", &rcpt), *expected, "{rcpt}");
    }
    for (local, domain, _, expected) in SENDERS {
        assert_eq!(
            route(&format!("{local}@{domain}"), "alice@example.org"),
            *expected
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_spelling_of_a_recipient_reaches_the_same_branch(
        which in 0..RECIPIENTS.len(),
        choices in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let (local, domain, a_label, expected) = RECIPIENTS[which];
        let rcpt = spell(local, domain, a_label, &choices);
        prop_assert_eq!(route("someone@example.net", &rcpt), expected, "{}", rcpt);
    }

    #[test]
    fn every_spelling_of_a_sender_reaches_the_same_source(
        which in 0..SENDERS.len(),
        choices in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let (local, domain, a_label, expected) = SENDERS[which];
        let sender = spell(local, domain, a_label, &choices);
        prop_assert_eq!(route(&sender, "alice@example.org"), expected, "{}", sender);
    }
}

#[test]
fn unreadable_addresses_are_refused_not_defaulted() {
    for rcpt in [
        "\"blocked@example.org",
        "bl\"ocked@example.org",
        "blocked\\x@example.org",
        "blocked@example..org",
        "a b@example.org",
    ] {
        assert_eq!(
            route("someone@example.net", rcpt),
            "553 Bad recipient address syntax",
            "{rcpt}"
        );
    }
    assert_eq!(
        route("\"spammer@example.net", "alice@example.org"),
        "mail 553 Bad sender address syntax"
    );
}

#[tokio::test]
async fn a_refusal_at_eom_still_refuses_an_unreadable_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boxes");
    std::fs::write(&path, BOXES).unwrap();
    let src = config(path.to_str().unwrap())
        .replace("[pipelines.mx]\n", "[pipelines.mx]\nrefuse_at_eom = true\n");
    let policy = compile_with(&src, Arc::new(common::Probes::default()));
    let mail = Mail::new(
        "someone@example.net",
        &["alice@example.org", "a\"b@example.org"],
    );
    let run = run_mail(&policy, "mx", &mail).await;
    assert!(run.rcpts.iter().all(StageReply::is_continue));
    let outcome = run.outcome.expect("reached end of message");
    assert_eq!(
        outcome.decision.reply().map(|r| (r.code, r.status.clone())),
        Some((553, "5.1.3".to_string()))
    );
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

#[tokio::test]
async fn quoted_local_parts_are_refused_over_the_milter_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boxes");
    std::fs::write(&path, BOXES).unwrap();
    let d = TestDaemon::start(&format!("{LISTEN}{}", config(path.to_str().unwrap()))).await;
    let mut conn = open_greeted(d.addr(), "mx").await;
    assert_eq!(
        conn.mail(["<someone@example.net>"]).await.unwrap(),
        Status::Continue
    );
    for rcpt in [
        "<blocked@example.org>",
        "<\"blocked\"@example.org>",
        "<\"Blo\\cked\"@Example.ORG.>",
    ] {
        assert_eq!(
            conn.rcpt([rcpt]).await.unwrap(),
            Status::Reject {
                message: Some(c("550 5.7.1 blocked"))
            },
            "{rcpt}"
        );
    }
    assert_eq!(
        conn.rcpt(["<\"blocked@example.org>"]).await.unwrap(),
        Status::Reject {
            message: Some(c("553 5.1.3 Bad recipient address syntax"))
        }
    );
    assert_eq!(
        conn.rcpt(["<\"alice\"@example.org>"]).await.unwrap(),
        Status::Continue
    );
}

#[tokio::test]
async fn an_unreadable_sender_is_reported_like_any_refusal() {
    let mut mail = Mail::new("someone@example.net", &["alice@example.org"]);
    mail.from = "\"spammer@example.net".into();
    let mut run = run_mail(&policy().1, "mx", &mail).await;
    let ended = run.session.take_ended();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].ended_verdict(), "reject");
    assert_eq!(ended[0].sender, "<\\\"spammer@example.net>");
}
