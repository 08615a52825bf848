//! The check runner through the engine: overlap, cancellation, timeouts,
//! panics, run-once, scores, severity, stages, split transactions, dry-run.

use crate::common;

use common::wait::{self, WAIT};
use common::{Mail, Probes, compile_with, reply_code, run_mail};
use dispatch_milter::engine::{StageReply, Verdict};
use dispatch_milter::message::ConnectionFacts;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn probes() -> Arc<Probes> {
    Arc::new(Probes::default())
}

#[tokio::test]
async fn checks_of_one_stage_run_at_the_same_time() {
    let p = probes();
    let policy = compile_with(
        r#"
        [checks.a]
        kind = "probe"
        delay_ms = 200
        [checks.b]
        kind = "probe"
        delay_ms = 200
        [checks.c]
        kind = "probe"
        delay_ms = 200
        [pipelines.p]
        checks = ["a", "b", "c"]
        "#,
        p.clone(),
    );
    let run = run_mail(&policy, "p", &Mail::new("a@x.test", &["b@y.test"])).await;
    let outcome = run.outcome.expect("message reached EOM");
    assert_eq!(outcome.decision.verdict(), Verdict::Accept);
    // All three were in flight at once: proof of overlap, not of timing.
    assert_eq!(p.peak.load(Ordering::SeqCst), 3);
    assert_eq!(run.session.checks_in_flight_peak(), 3);
    assert_eq!(p.finished.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_reject_cancels_a_pending_slow_check() {
    let p = probes();
    let policy = compile_with(
        r#"
        [checks.slow]
        kind = "probe"
        delay_ms = 60000
        timeout = "120s"
        [checks.bad]
        kind = "probe"
        status = "fail"
        delay_ms = 20
        reply = { code = 554, status = "5.7.1", text = "bad message" }
        [pipelines.p]
        checks = ["slow", "bad"]
        "#,
        p.clone(),
    );
    let started = std::time::Instant::now();
    let run = run_mail(&policy, "p", &Mail::new("a@x.test", &["b@y.test"])).await;
    let outcome = run.outcome.expect("EOM");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "did not wait for the slow check"
    );
    assert_eq!(outcome.decision.verdict(), Verdict::Reject);
    let reply = outcome.decision.reply().cloned().expect("a reply");
    assert_eq!(
        (reply.code, reply.status.as_str(), reply.text.as_str()),
        (554, "5.7.1", "bad message")
    );
    // The slow check's future was dropped, not left running.
    wait::until(WAIT, "the slow check dropped", || {
        p.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(p.running.load(Ordering::SeqCst), 0);
    assert_eq!(common::reported(&outcome, "slow").result, "cancelled");
}

#[tokio::test]
async fn timeout_and_panic_become_temperror_and_the_error_action() {
    let p = probes();
    let policy = compile_with(
        r#"
        [checks.hang]
        kind = "probe"
        delay_ms = 60000
        timeout = "50ms"
        [checks.boom]
        kind = "probe"
        panic = true
        [pipelines.p]
        checks = ["hang", "boom"]
        [pipelines.strict]
        error_action = "reject"
        error_reply = { code = 554, status = "5.3.0", text = "Internal error" }
        checks = ["boom"]
        "#,
        p.clone(),
    );
    let run = run_mail(&policy, "p", &Mail::new("a@x.test", &["b@y.test"])).await;
    let outcome = run.outcome.expect("EOM");
    assert_eq!(outcome.decision.verdict(), Verdict::Tempfail);
    assert_eq!(outcome.decision.reply().map(|r| r.code), Some(451));
    assert!(outcome.edits.is_empty());
    let by_name = |n: &str| common::reported(&outcome, n).clone();
    assert_eq!(by_name("hang").result, "temperror");
    assert!(
        by_name("hang")
            .reason
            .unwrap_or_default()
            .contains("timed out")
    );
    assert_eq!(by_name("boom").result, "temperror");
    assert_eq!(by_name("boom").action, "error_action");

    // The same panic under error_action = "reject".
    let run = run_mail(&policy, "strict", &Mail::new("a@x.test", &["b@y.test"])).await;
    let outcome = run.outcome.expect("EOM");
    assert_eq!(outcome.decision.verdict(), Verdict::Reject);
    assert_eq!(outcome.decision.reply().map(|r| r.code), Some(554));
}

#[tokio::test]
async fn a_session_survives_a_panic_and_takes_the_next_message() {
    let p = probes();
    let policy = compile_with(
        r#"
        [checks.boom]
        kind = "probe"
        panic = true
        [pipelines.p]
        [[pipelines.p.destination]]
        match = ["panic.test"]
        checks = ["boom"]
        "#,
        p,
    );
    let mut run = run_mail(&policy, "p", &Mail::new("a@x.test", &["b@panic.test"])).await;
    assert_eq!(
        run.outcome.expect("EOM").decision.verdict(),
        Verdict::Tempfail
    );
    let s = &mut run.session;
    assert_eq!(s.mail("<a@x.test>", &[], None).await, StageReply::Continue);
    assert_eq!(s.rcpt("<b@fine.test>", &[]).await, StageReply::Continue);
    s.header("Subject", "second");
    assert_eq!(s.eom().await.decision.verdict(), Verdict::Accept);
}

#[tokio::test]
async fn a_check_named_at_several_levels_runs_once() {
    let p = probes();
    let policy = compile_with(
        r#"
        [checks.c]
        kind = "probe"
        delay_ms = 10
        [pipelines.p]
        checks = ["c"]
        [[pipelines.p.source]]
        match = ["x.test"]
        checks = ["c"]
        [[pipelines.p.source.destination]]
        match = ["y.test"]
        checks = ["c"]
        "#,
        p.clone(),
    );
    run_mail(
        &policy,
        "p",
        &Mail::new("a@x.test", &["b@y.test", "c@y.test"]),
    )
    .await;
    assert_eq!(p.started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn scores_add_up_against_the_thresholds() {
    let config = |extra: f64| {
        format!(
            r#"
            [checks.a]
            kind = "probe"
            status = "fail"
            score = 3
            on_fail = "score"
            [checks.b]
            kind = "probe"
            status = "softfail"
            on_softfail = "score {extra}"
            [pipelines.p]
            quarantine_score = 5
            reject_score = 10
            checks = ["a", "b"]
            "#
        )
    };
    let cases = [
        (1.0, Verdict::Accept, 4.0),
        (2.0, Verdict::Quarantine, 5.0),
        (7.5, Verdict::Reject, 10.5),
    ];
    for (extra, verdict, score) in cases {
        let policy = compile_with(&config(extra), probes());
        let run = run_mail(&policy, "p", &Mail::new("a@x.test", &["b@y.test"])).await;
        let outcome = run.outcome.expect("EOM");
        assert_eq!(outcome.decision.verdict(), verdict, "extra {extra}");
        assert_eq!(outcome.report.score, score);
        if verdict == Verdict::Quarantine {
            assert!(outcome.edits.iter().any(|e| matches!(e, dispatch_milter::edits::Edit::Quarantine { reason } if reason.contains("score 5"))));
        }
    }
}

#[tokio::test]
async fn the_most_severe_action_wins_and_ties_keep_config_order() {
    let policy = compile_with(
        r#"
        [checks.q]
        kind = "probe"
        status = "fail"
        on_fail = "quarantine"
        [checks.t1]
        kind = "probe"
        status = "fail"
        on_fail = "tempfail"
        tempfail_reply = { code = 451, status = "4.7.1", text = "first" }
        [checks.t2]
        kind = "probe"
        status = "fail"
        on_fail = "tempfail"
        tempfail_reply = { code = 452, status = "4.7.1", text = "second" }
        [checks.r]
        kind = "probe"
        status = "fail"
        delay_ms = 30
        [pipelines.qt]
        checks = ["t2", "q", "t1"]
        [pipelines.all]
        checks = ["q", "t1", "r"]
        "#,
        probes(),
    );
    for _ in 0..20 {
        let run = run_mail(&policy, "qt", &Mail::new("a@x.test", &["b@y.test"])).await;
        let d = run.outcome.expect("EOM").decision;
        assert_eq!(d.verdict(), Verdict::Tempfail);
        // t1 comes first in the file, whatever the order of the list or of finishing.
        assert_eq!(d.reply().map(|r| r.text.clone()), Some("first".to_string()));
    }
    let run = run_mail(&policy, "all", &Mail::new("a@x.test", &["b@y.test"])).await;
    assert_eq!(
        run.outcome.expect("EOM").decision.verdict(),
        Verdict::Reject
    );
}

#[tokio::test]
async fn checks_start_when_their_inputs_exist() {
    let p = probes();
    let policy = compile_with(
        r#"
        [checks.at_connect]
        kind = "probe"
        inputs = "connect"
        decide_at = "eom"
        delay_ms = 50
        [checks.at_mail]
        kind = "probe"
        inputs = "mail"
        decide_at = "eom"
        delay_ms = 50
        [checks.at_eom]
        kind = "probe"
        [pipelines.p]
        checks = ["at_connect", "at_mail", "at_eom"]
        "#,
        p.clone(),
    );
    let mut s =
        dispatch_milter::engine::Session::new(policy.clone(), 0, ConnectionFacts::default());
    assert_eq!(s.connect().await, StageReply::Continue);
    assert!(
        wait::within(WAIT, || p.started.load(Ordering::SeqCst) == 1).await,
        "connect check started at connect"
    );
    s.helo("h.test", None).await;
    s.mail("<a@x.test>", &[], None).await;
    assert!(
        wait::within(WAIT, || p.started.load(Ordering::SeqCst) == 2).await,
        "mail check started at MAIL"
    );
    s.rcpt("<b@y.test>", &[]).await;
    assert_eq!(
        p.started.load(Ordering::SeqCst),
        2,
        "EOM check waits for the message"
    );
    let outcome = s.eom().await;
    assert_eq!(p.started.load(Ordering::SeqCst), 3);
    let stages: Vec<(String, String)> = outcome
        .report
        .checks
        .iter()
        .map(|c| (c.name.to_string(), format!("{}->{}", c.started, c.decided)))
        .collect();
    assert_eq!(
        stages,
        vec![
            ("at_connect".to_string(), "connect->eom".to_string()),
            ("at_mail".to_string(), "mail->eom".to_string()),
            ("at_eom".to_string(), "eom->eom".to_string()),
        ]
    );
}

#[tokio::test]
async fn rcpt_checks_refuse_one_recipient_and_mail_checks_the_transaction() {
    let p = probes();
    let policy = compile_with(
        r#"
        [checks.deny]
        kind = "probe"
        status = "fail"
        inputs = "rcpt"
        reply = { code = 550, status = "5.7.1", text = "not for you" }
        [checks.mail_deny]
        kind = "probe"
        status = "fail"
        inputs = "mail"
        reply = { code = 553, status = "5.7.1", text = "sender refused" }
        [checks.slow_eom]
        kind = "probe"
        inputs = "mail"
        decide_at = "eom"
        delay_ms = 60000
        timeout = "120s"

        [pipelines.p]
        [[pipelines.p.destination]]
        match = ["closed.test"]
        checks = ["deny"]

        [pipelines.m]
        checks = ["slow_eom", "mail_deny"]
        "#,
        p.clone(),
    );
    let run = run_mail(
        &policy,
        "p",
        &Mail::new("a@x.test", &["b@open.test", "c@closed.test"]),
    )
    .await;
    assert_eq!(run.rcpts[0], StageReply::Continue);
    assert_eq!(reply_code(&run.rcpts[1]), 550);
    assert_eq!(
        run.outcome.expect("EOM").decision.verdict(),
        Verdict::Accept
    );

    let run = run_mail(&policy, "m", &Mail::new("a@x.test", &["b@open.test"])).await;
    match &run.mail {
        StageReply::Reject(r) => assert_eq!((r.code, r.text.as_str()), (553, "sender refused")),
        other => panic!("MAIL should be refused, got {other:?}"),
    }
    // The refused transaction's pending check was cancelled.
    wait::until(WAIT, "the pending check cancelled", || {
        p.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn abort_cancels_the_messages_checks() {
    let p = probes();
    let policy = compile_with(
        r#"
        [checks.slow]
        kind = "probe"
        inputs = "mail"
        decide_at = "eom"
        delay_ms = 60000
        timeout = "120s"
        [pipelines.p]
        checks = ["slow"]
        "#,
        p.clone(),
    );
    let mut s = dispatch_milter::engine::Session::new(policy, 0, ConnectionFacts::default());
    s.connect().await;
    s.mail("<a@x.test>", &[], None).await;
    wait::until(WAIT, "the check running", || {
        p.running.load(Ordering::SeqCst) == 1
    })
    .await;
    s.abort();
    wait::until(WAIT, "the check cancelled by abort", || {
        p.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    // Dropping a session (client gone) cancels its checks too.
    s.mail("<a@x.test>", &[], None).await;
    wait::until(WAIT, "the check running", || {
        p.running.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(s);
    wait::until(WAIT, "the check cancelled by the session's end", || {
        p.dropped.load(Ordering::SeqCst) == 2
    })
    .await;
}

#[tokio::test]
async fn split_transactions_sends_differing_recipients_to_a_new_transaction() {
    let policy = compile_with(
        r#"
        [checks.extra]
        kind = "probe"
        [pipelines.p]
        split_transactions = true
        [[pipelines.p.destination]]
        match = ["strict.test"]
        checks = ["extra"]
        "#,
        probes(),
    );
    let run = run_mail(
        &policy,
        "p",
        &Mail::new(
            "a@x.test",
            &["a@plain.test", "b@plain.test", "c@strict.test"],
        ),
    )
    .await;
    assert_eq!(run.rcpts[0], StageReply::Continue);
    assert_eq!(run.rcpts[1], StageReply::Continue);
    match &run.rcpts[2] {
        StageReply::Tempfail(r) => assert_eq!((r.code, r.status.as_str()), (452, "4.5.3")),
        other => panic!("expected 452 4.5.3, got {other:?}"),
    }
    let outcome = run.outcome.expect("EOM");
    assert_eq!(outcome.report.recipients[2].outcome, "split");
    assert!(
        outcome.report.checks.is_empty(),
        "the strict branch's check did not run for this transaction"
    );

    // In the next transaction the strict recipient comes first and is accepted.
    let run = run_mail(&policy, "p", &Mail::new("a@x.test", &["c@strict.test"])).await;
    assert_eq!(run.rcpts[0], StageReply::Continue);
}

#[tokio::test]
async fn dry_run_refuses_nothing_but_reports_the_verdict() {
    let policy = compile_with(
        r#"
        [checks.bad]
        kind = "probe"
        status = "fail"
        [pipelines.p]
        dry_run = true
        [[pipelines.p.destination]]
        match = ["bad.test"]
        checks = ["bad"]
        [[pipelines.p.destination]]
        match = ["gone.test"]
        action = "reject"
        [[pipelines.p.destination]]
        match = ["copy.test"]
        copy = ["archive@x.test"]
        "#,
        probes(),
    );
    let run = run_mail(
        &policy,
        "p",
        &Mail::new("a@x.test", &["a@gone.test", "b@bad.test", "c@copy.test"]),
    )
    .await;
    assert!(
        run.rcpts.iter().all(StageReply::is_continue),
        "{:?}",
        run.rcpts
    );
    let outcome = run.outcome.expect("EOM");
    assert_eq!(outcome.decision.verdict(), Verdict::Accept);
    assert_eq!(outcome.policy_decision.verdict(), Verdict::Reject);
    // Only header edits: no copy recipient, plus the dry-run header.
    assert_eq!(outcome.edits.len(), 1, "{:?}", outcome.edits);
    match &outcome.edits[0] {
        dispatch_milter::edits::Edit::AddHeader { name, value } => {
            assert_eq!(name, "X-Dispatch-Dry-Run");
            assert!(value.starts_with("would reject"), "{value}");
        }
        other => panic!("unexpected edit {other:?}"),
    }
}

#[tokio::test]
async fn a_second_ehlo_restarts_helo_checks() {
    let policy = compile_with(
        r#"
        [checks.tls]
        kind = "require_tls"
        [pipelines.p]
        checks = ["tls"]
        "#,
        probes(),
    );
    let mut s = dispatch_milter::engine::Session::new(policy, 0, ConnectionFacts::default());
    s.connect().await;
    s.helo("h.test", None).await;
    // STARTTLS, then EHLO again with TLS: the check must see it.
    let tls = dispatch_milter::message::TlsInfo {
        version: "TLSv1.3".into(),
        cipher: None,
    };
    s.helo("h.test", Some(tls)).await;
    assert_eq!(s.mail("<a@x.test>", &[], None).await, StageReply::Continue);
}

#[tokio::test]
async fn no_stage_waits_past_the_pipeline_deadline() {
    let p = probes();
    let policy = compile_with(
        r#"
        [checks.hang]
        kind = "probe"
        delay_ms = 60000
        timeout = "120s"
        [pipelines.p]
        deadline = "100ms"
        checks = ["hang"]
        "#,
        p.clone(),
    );
    let started = std::time::Instant::now();
    let outcome = run_mail(&policy, "p", &Mail::new("a@x.test", &["b@y.test"]))
        .await
        .outcome
        .expect("EOM");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(outcome.decision.verdict(), Verdict::Tempfail);
    let hang = &outcome.report.checks[0];
    assert_eq!(hang.result, "temperror");
    assert!(
        hang.reason
            .as_deref()
            .unwrap_or_default()
            .contains("deadline"),
        "{hang:?}"
    );
    assert!(
        wait::within(WAIT, || p.dropped.load(Ordering::SeqCst) == 1).await,
        "the check was aborted"
    );
}

#[tokio::test]
async fn refuse_at_eom_moves_recipient_refusals_to_the_end() {
    let policy = compile_with(
        r#"
        [pipelines.p]
        refuse_at_eom = true
        [[pipelines.p.destination]]
        match = ["gone.test"]
        action = "reject"
        reply = { code = 550, status = "5.1.1", text = "No such user" }
        "#,
        probes(),
    );
    let run = run_mail(
        &policy,
        "p",
        &Mail::new("a@x.test", &["ok@fine.test", "x@gone.test"]),
    )
    .await;
    assert!(
        run.rcpts.iter().all(StageReply::is_continue),
        "no refusal at RCPT: {:?}",
        run.rcpts
    );
    let d = run.outcome.expect("EOM").decision;
    assert_eq!(d.verdict(), Verdict::Reject);
    assert_eq!(
        d.reply().map(|r| (r.code, r.text.clone())),
        Some((550, "No such user".to_string()))
    );
}

#[tokio::test]
async fn oversize_bodies_follow_the_oversize_action() {
    let config = |action: &str| {
        format!(
            r#"
            [pipelines.p]
            max_body_size = 16
            oversize_action = "{action}"
            "#
        )
    };
    let mut mail = Mail::new("a@x.test", &["b@y.test"]);
    mail.body = "x".repeat(100);
    for (action, verdict, code) in [
        ("reject", Verdict::Reject, Some(552)),
        ("tempfail", Verdict::Tempfail, Some(452)),
        ("truncate", Verdict::Accept, None),
    ] {
        let policy = compile_with(&config(action), probes());
        let d = run_mail(&policy, "p", &mail)
            .await
            .outcome
            .expect("EOM")
            .decision;
        assert_eq!(d.verdict(), verdict, "{action}");
        assert_eq!(d.reply().map(|r| r.code), code, "{action}");
    }
}

#[tokio::test]
async fn messages_that_end_before_eom_leave_a_report_for_the_log() {
    let policy = compile_with(
        r#"
        [checks.deny_mail]
        kind = "probe"
        status = "fail"
        inputs = "mail"
        [pipelines.p]
        [[pipelines.p.source]]
        match = ["bad.test"]
        checks = ["deny_mail"]
        [[pipelines.p.destination]]
        match = ["gone.test"]
        action = "reject"
        "#,
        probes(),
    );
    let mut s = dispatch_milter::engine::Session::new(policy, 0, ConnectionFacts::default());
    s.connect().await;
    // Refused at MAIL.
    assert!(!s.mail("<a@bad.test>", &[], None).await.is_continue());
    // Every recipient refused, then the client gives up.
    s.mail("<a@fine.test>", &[], None).await;
    assert!(!s.rcpt("<x@gone.test>", &[]).await.is_continue());
    s.abort();
    // Accepted, then abandoned.
    s.mail("<a@fine.test>", &[], None).await;
    assert!(s.rcpt("<x@open.test>", &[]).await.is_continue());
    s.abort();
    let verdicts: Vec<&str> = s.take_ended().iter().map(|r| r.ended_verdict()).collect();
    assert_eq!(verdicts, vec!["reject", "reject", "aborted"]);
    assert!(s.take_ended().is_empty(), "each report is handed out once");
}
