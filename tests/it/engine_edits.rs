//! Modifiers through the engine: order, rewrites, aliases, redirect, copy,
//! discard per recipient, quarantine, sender change, failures, determinism.

use crate::common;

use common::{Mail, Probes, compile, registry, run_mail};
use dispatch_milter::config::compile_str;
use dispatch_milter::edits::{Edit, EditList};
use dispatch_milter::engine::{StageReply, Verdict};
use dispatch_milter::modifiers::{
    EditError, Effects, MessageContext, Modifier, ModifierBuildContext,
};
use dispatch_milter::reply::{Reply, ReplyClass};
use std::path::Path;
use std::sync::Arc;

fn add(a: &str) -> Edit {
    Edit::AddRecipient {
        address: a.to_string(),
        args: None,
    }
}

fn del(a: &str) -> Edit {
    Edit::DeleteRecipient {
        address: a.to_string(),
    }
}

#[tokio::test]
async fn recipient_rewrites_run_global_then_source_then_destination() {
    // Each step appends a marker to the local part; the final address shows
    // the order. Dispatch sees the global and source rewrites only.
    let policy = compile(
        r#"
        [modifiers.g]
        kind = "rewrite_rcpt"
        pattern = "^([^@]+)@(.+)$"
        replacement = "${1}-g@$2"
        [modifiers.s]
        kind = "rewrite_rcpt"
        pattern = "^([^@]+)@(.+)$"
        replacement = "${1}-s@$2"
        [modifiers.d]
        kind = "rewrite_rcpt"
        pattern = "^([^@]+)@(.+)$"
        replacement = "${1}-d@$2"

        [pipelines.p]
        modify = ["g"]
        [[pipelines.p.source]]
        match = ["x.test"]
        modify = ["s"]
        [[pipelines.p.source.destination]]
        match = ["joe-g-s@y.test"]
        modify = ["d"]
        [pipelines.p.source.default]
        action = "reject"
        "#,
    );
    let run = run_mail(&policy, "p", &Mail::new("a@x.test", &["joe@y.test"])).await;
    assert_eq!(
        run.rcpts[0],
        StageReply::Continue,
        "dispatched on the rewritten address"
    );
    let outcome = run.outcome.expect("EOM");
    assert_eq!(
        outcome.edits,
        vec![del("joe@y.test"), add("joe-g-s-d@y.test")]
    );
}

#[tokio::test]
async fn table_rewrites_and_sender_change() {
    let policy = compile(
        r#"
        [tables.canonical]
        type = "inline"
        entries = { "old@x.test" = "new@x.test", "@legacy.test" = "@y.test" }
        [modifiers.rcpt_table]
        kind = "rewrite_rcpt"
        table = "canonical"
        [modifiers.sender_table]
        kind = "rewrite_sender"
        table = "canonical"
        [pipelines.p]
        modify = ["sender_table", "rcpt_table"]
        "#,
    );
    let run = run_mail(
        &policy,
        "p",
        &Mail::new("old@x.test", &["kim@legacy.test", "ann@z.test"]),
    )
    .await;
    let outcome = run.outcome.expect("EOM");
    assert_eq!(
        outcome.edits,
        vec![
            Edit::ChangeSender {
                address: "new@x.test".into(),
                args: None
            },
            del("kim@legacy.test"),
            add("kim@y.test"),
        ]
    );
    assert_eq!(
        outcome.report.sender_rewritten.as_deref(),
        Some("new@x.test")
    );
}

#[tokio::test]
async fn alias_expansion_dispatches_each_result_and_survives_a_loop() {
    let policy = compile(
        r#"
        [tables.aliases]
        type = "inline"
        entries = { "team@x.test" = ["ann@x.test", "bob@x.test", "loop@x.test"], "loop@x.test" = ["team@x.test", "ext@other.test"] }
        [modifiers.aliases]
        kind = "alias"
        table = "aliases"
        [pipelines.p]
        modify = ["aliases"]
        [[pipelines.p.destination]]
        match = ["x.test"]
        [[pipelines.p.destination]]
        match = ["other.test"]
        copy = ["archive@x.test"]
        "#,
    );
    let run = run_mail(&policy, "p", &Mail::new("a@y.test", &["team@x.test"])).await;
    assert_eq!(run.rcpts[0], StageReply::Continue);
    let outcome = run.outcome.expect("EOM");
    assert_eq!(
        outcome.edits,
        vec![
            add("ann@x.test"),
            add("bob@x.test"),
            add("ext@other.test"),
            add("archive@x.test"),
        ]
    );
    let branches = outcome.report.recipients[0]
        .branch
        .clone()
        .unwrap_or_default();
    assert!(
        branches.contains("destination x.test") && branches.contains("destination other.test"),
        "{branches}"
    );
}

/// A recipient replaced by an alias, a rewrite or a redirect keeps its
/// NOTIFY and ORCPT for each address that replaces it (RFC 3461 §6.2.7.3);
/// other parameters and copies to other addresses get none.
#[tokio::test]
async fn replacements_keep_the_recipients_dsn_parameters() {
    let policy = compile(
        r#"
        [tables.aliases]
        type = "inline"
        entries = { "team@x.test" = ["ann@x.test", "bob@x.test"] }
        [modifiers.aliases]
        kind = "alias"
        table = "aliases"
        [pipelines.p]
        modify = ["aliases"]
        [[pipelines.p.destination]]
        match = ["old@x.test"]
        redirect = "new@x.test"
        [[pipelines.p.destination]]
        match = ["x.test"]
        copy = ["archive@x.test"]
        "#,
    );
    let mut mail = Mail::new("a@y.test", &["team@x.test", "old@x.test"]);
    mail.rcpt_args = vec![
        "ORCPT=rfc822;team@x.test".into(),
        "RRVS=2027-01-01T00:00:00Z".into(),
        "NOTIFY=FAILURE,DELAY".into(),
    ];
    let run = run_mail(&policy, "p", &mail).await;
    let outcome = run.outcome.expect("EOM");
    let with = |a: &str| Edit::AddRecipient {
        address: a.to_string(),
        args: Some("NOTIFY=FAILURE,DELAY ORCPT=rfc822;team@x.test".into()),
    };
    assert_eq!(
        outcome.edits,
        vec![
            del("team@x.test"),
            with("ann@x.test"),
            with("bob@x.test"),
            add("archive@x.test"),
            del("old@x.test"),
            with("new@x.test"),
        ]
    );
}

#[tokio::test]
async fn redirect_copy_discard_and_quarantine_edits() {
    let policy = compile(
        r#"
        [pipelines.p]
        [[pipelines.p.destination]]
        match = ["old@x.test"]
        redirect = "new@x.test"
        [[pipelines.p.destination]]
        match = ["sales@x.test"]
        copy = ["archive@x.test", "crm@x.test"]
        [[pipelines.p.destination]]
        match = ["void@x.test"]
        action = "discard"
        [[pipelines.p.destination]]
        match = ["hold@x.test"]
        action = "quarantine"
        reason = "held for review"
        "#,
    );
    let run = run_mail(
        &policy,
        "p",
        &Mail::new(
            "a@y.test",
            &["old@x.test", "sales@x.test", "void@x.test", "keep@x.test"],
        ),
    )
    .await;
    let outcome = run.outcome.expect("EOM");
    assert_eq!(outcome.decision.verdict(), Verdict::Accept);
    assert_eq!(
        outcome.edits,
        vec![
            del("old@x.test"),
            add("new@x.test"),
            add("archive@x.test"),
            add("crm@x.test"),
            del("void@x.test"),
        ]
    );

    // Only discard recipients: the whole message is discarded, no edits.
    let run = run_mail(&policy, "p", &Mail::new("a@y.test", &["void@x.test"])).await;
    let outcome = run.outcome.expect("EOM");
    assert_eq!(outcome.decision.verdict(), Verdict::Discard);
    assert!(outcome.edits.is_empty());

    // Quarantine for one recipient holds the whole message, with the reason header.
    let run = run_mail(
        &policy,
        "p",
        &Mail::new("a@y.test", &["hold@x.test", "keep@x.test"]),
    )
    .await;
    let outcome = run.outcome.expect("EOM");
    assert_eq!(outcome.decision.verdict(), Verdict::Quarantine);
    assert_eq!(
        outcome.edits,
        vec![
            Edit::AddHeader {
                name: "X-Quarantine-Reason".into(),
                value: "held for review".into()
            },
            Edit::Quarantine {
                reason: "held for review".into()
            },
        ]
    );

    // Quarantine beats discard: nothing is dropped while another branch holds it.
    let run = run_mail(
        &policy,
        "p",
        &Mail::new("a@y.test", &["hold@x.test", "void@x.test"]),
    )
    .await;
    assert_eq!(
        run.outcome.expect("EOM").decision.verdict(),
        Verdict::Quarantine
    );
}

#[tokio::test]
async fn header_modifiers_run_in_order_and_cannot_inject_headers() {
    let policy = compile(
        r#"
        [modifiers.first]
        kind = "add_header"
        name = "X-Order"
        value = "first"
        [modifiers.second]
        kind = "add_header"
        name = "X-Order"
        value = "second from {sender}"
        position = "top"
        [modifiers.strip]
        kind = "remove_header"
        name = "X-Remove"
        [pipelines.p]
        modify = ["first", "strip"]
        [pipelines.p.default]
        modify = ["second"]
        "#,
    );
    // A sender with a line break never gets as far as a header: it cannot
    // be read, so MAIL FROM is refused.
    let mut evil = Mail::new("evil@x.test", &["b@y.test"]);
    evil.from = "evil\r\nBcc: victim@x.test@x.test".into();
    let run = run_mail(&policy, "p", &evil).await;
    assert_eq!(
        run.mail,
        StageReply::Reject(
            Reply::new(
                ReplyClass::Permanent,
                553,
                "5.1.7",
                "Bad sender address syntax"
            )
            .unwrap()
        )
    );
    let mut mail = Mail::new("evil@x.test", &["b@y.test"]);
    mail.headers.push(("X-Remove".into(), "1".into()));
    mail.headers.push(("X-Remove".into(), "2".into()));
    let outcome = run_mail(&policy, "p", &mail).await.outcome.expect("EOM");
    assert_eq!(outcome.edits.len(), 4, "{:?}", outcome.edits);
    assert_eq!(
        outcome.edits[0],
        Edit::AddHeader {
            name: "X-Order".into(),
            value: "first".into()
        }
    );
    assert!(matches!(
        &outcome.edits[1],
        Edit::DeleteHeader { index: 2, .. }
    ));
    assert!(matches!(
        &outcome.edits[2],
        Edit::DeleteHeader { index: 1, .. }
    ));
    match &outcome.edits[3] {
        Edit::InsertHeader {
            index: 0, value, ..
        } => {
            assert!(!value.contains('\n') && !value.contains('\r'), "{value:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A modifier that always fails at end of message.
struct FailingModifier;

impl Modifier for FailingModifier {
    fn effects(&self) -> Effects {
        Effects {
            headers: true,
            ..Effects::default()
        }
    }

    fn edit_message(
        &self,
        _ctx: &MessageContext<'_>,
        edits: &mut EditList,
    ) -> Result<(), EditError> {
        edits.add_header("X-Half", "done")?;
        Err(EditError::Other("backend unavailable".into()))
    }
}

#[tokio::test]
async fn a_failing_modifier_sends_no_edit_at_all() {
    let mut reg = registry(Arc::new(Probes::default()));
    reg.add_modifier(
        "failing",
        Arc::new(|_ctx: &mut ModifierBuildContext<'_, '_, '_>| {
            Some(Arc::new(FailingModifier) as Arc<dyn Modifier>)
        }),
    );
    let src = r#"
        [modifiers.tag]
        kind = "add_header"
        name = "X-Tag"
        value = "yes"
        [modifiers.broken]
        kind = "failing"
        [pipelines.p]
        modify = ["tag", "broken"]
        [pipelines.p.default]
        copy = ["archive@x.test"]
    "#;
    let policy = Arc::new(compile_str(Path::new("t.toml"), src, &reg).expect("compiles"));
    let outcome = run_mail(&policy, "p", &Mail::new("a@x.test", &["b@y.test"]))
        .await
        .outcome
        .expect("EOM");
    assert_eq!(outcome.decision.verdict(), Verdict::Tempfail);
    assert_eq!(outcome.decision.reply().map(|r| r.code), Some(451));
    assert!(outcome.edits.is_empty(), "{:?}", outcome.edits);
}

#[tokio::test]
async fn the_same_message_always_gets_the_same_verdict_and_edits() {
    let policy = compile(
        r#"
        [tables.aliases]
        type = "inline"
        entries = { "team@x.test" = ["d@x.test", "c@x.test", "b@x.test", "a@x.test"] }
        [modifiers.aliases]
        kind = "alias"
        table = "aliases"
        [modifiers.h1]
        kind = "add_header"
        name = "X-A"
        value = "{recipients}"
        [modifiers.h2]
        kind = "add_header"
        name = "X-B"
        value = "2"
        [pipelines.p]
        modify = ["aliases", "h1"]
        [[pipelines.p.destination]]
        match = ["x.test"]
        modify = ["h2"]
        copy = ["z@x.test", "y@x.test"]
        "#,
    );
    let mail = Mail::new("s@y.test", &["team@x.test", "q@x.test", "p@x.test"]);
    let first = run_mail(&policy, "p", &mail).await.outcome.expect("EOM");
    for _ in 0..50 {
        let again = run_mail(&policy, "p", &mail).await.outcome.expect("EOM");
        assert_eq!(again.decision, first.decision);
        assert_eq!(again.edits, first.edits);
    }
}

#[tokio::test]
async fn authentication_results_replaces_forgeries_of_our_id_only() {
    let policy = compile(
        r#"
        [checks.spf]
        kind = "probe"
        auth_results = "spf=pass smtp.mailfrom=x.test"
        [checks.dkim]
        kind = "probe"
        auth_results = "dkim=pass header.d=x.test"
        [checks.plain]
        kind = "probe"
        [pipelines.p]
        authserv_id = "mx.example.org"
        checks = ["dkim", "plain", "spf"]
        [pipelines.quiet]
        auth_results = false
        checks = ["spf"]
        "#,
    );
    let mut mail = Mail::new("a@x.test", &["b@y.test"]);
    mail.headers = vec![
        (
            "Authentication-Results".into(),
            "MX.example.org; spf=pass (forged)".into(),
        ),
        (
            "Authentication-Results".into(),
            "other.example; dkim=pass".into(),
        ),
        (
            "Authentication-Results".into(),
            "mx.example.org 1; dmarc=pass".into(),
        ),
    ];
    let outcome = run_mail(&policy, "p", &mail).await.outcome.expect("EOM");
    assert_eq!(
        outcome.edits,
        vec![
            Edit::DeleteHeader {
                name: "Authentication-Results".into(),
                index: 3
            },
            Edit::DeleteHeader {
                name: "Authentication-Results".into(),
                index: 1
            },
            Edit::InsertHeader {
                index: 0,
                name: "Authentication-Results".into(),
                // Config order of the checks, not list order.
                value: "mx.example.org; spf=pass smtp.mailfrom=x.test; dkim=pass header.d=x.test"
                    .into()
            },
        ]
    );
    let outcome = run_mail(&policy, "quiet", &mail)
        .await
        .outcome
        .expect("EOM");
    assert!(outcome.edits.is_empty(), "{:?}", outcome.edits);
}

#[tokio::test]
async fn copies_of_our_own_headers_sent_by_the_client_are_deleted() {
    let policy = compile(
        r#"
        [pipelines.p]
        auth_results = false
        [[pipelines.p.destination]]
        match = ["hold@x.test"]
        action = "quarantine"
        reason = "held for review"
        [pipelines.dry]
        auth_results = false
        dry_run = true
        [pipelines.dry.default]
        action = "reject"
        "#,
    );
    let forged = |mail: &mut Mail| {
        mail.headers
            .push(("X-Quarantine-Reason".into(), "none, all clean".into()));
        mail.headers
            .push(("x-dispatch-dry-run".into(), "would accept".into()));
    };
    // Delivered normally: the forged quarantine header still goes.
    let mut mail = Mail::new("a@y.test", &["b@x.test"]);
    forged(&mut mail);
    let outcome = run_mail(&policy, "p", &mail).await.outcome.expect("EOM");
    assert_eq!(
        outcome.edits,
        vec![Edit::DeleteHeader {
            name: "X-Quarantine-Reason".into(),
            index: 1
        }]
    );
    // Quarantined: ours is the only one left.
    let mut mail = Mail::new("a@y.test", &["hold@x.test"]);
    forged(&mut mail);
    let outcome = run_mail(&policy, "p", &mail).await.outcome.expect("EOM");
    let headers: Vec<(String, String)> = mail.headers.clone();
    let received: Vec<dispatch_milter::message::Header> = headers
        .into_iter()
        .map(|(name, value)| dispatch_milter::message::Header::new(name, value))
        .collect();
    let mut list = EditList::new();
    for e in &outcome.edits {
        list.push(e.clone());
    }
    let delivered: Vec<String> = list
        .resulting_headers(&received)
        .into_iter()
        .filter(|h| h.name().eq_ignore_ascii_case("X-Quarantine-Reason"))
        .map(|h| h.value().to_string())
        .collect();
    assert_eq!(delivered, ["held for review"]);
    // Dry run: the forged dry-run header goes, ours says what would happen.
    let mut mail = Mail::new("a@y.test", &["b@x.test"]);
    forged(&mut mail);
    let outcome = run_mail(&policy, "dry", &mail).await.outcome.expect("EOM");
    assert_eq!(
        outcome.edits.first(),
        Some(&Edit::DeleteHeader {
            name: "x-dispatch-dry-run".into(),
            index: 1
        }),
        "{:?}",
        outcome.edits
    );
    assert!(
        matches!(outcome.edits.last(), Some(Edit::AddHeader { name, value }) if name == "X-Dispatch-Dry-Run" && value.starts_with("would reject")),
        "{:?}",
        outcome.edits
    );
}
