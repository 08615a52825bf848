//! One structured line per message: queue id, client, pipeline, sender, each
//! recipient with its outcome, each check with result, action and time, and
//! the verdict. Text or JSON depending on the subscriber the daemon set up.

use crate::engine::{MessageOutcome, MessageReport, StageReply};
use std::fmt::Write as _;
use std::time::Instant;

/// `alice@example.org=accept nobody@example.org=reject(550)`.
pub fn recipients_field(report: &MessageReport) -> String {
    let mut out = String::new();
    for r in &report.recipients {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{}={}", r.address, r.outcome);
        if let Some(reply) = &r.reply {
            let _ = write!(out, "({})", reply.code);
        }
    }
    out
}

/// `spf=pass/ignore/1.2ms dnsbl=fail/reject/20.0ms`.
pub fn checks_field(report: &MessageReport) -> String {
    let mut out = String::new();
    for c in &report.checks {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(
            out,
            "{}={}/{}/{:.1}ms",
            c.name, c.result, c.action, c.elapsed_ms
        );
    }
    out
}

pub fn log_message(client: &str, verdict: &str, outcome: &MessageOutcome, connected: Instant) {
    let report = &outcome.report;
    let reply = outcome
        .decision
        .reply
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_default();
    tracing::info!(
        target: "dispatch_milter::message",
        queue_id = report.queue_id.as_deref().unwrap_or("-"),
        client,
        pipeline = %report.pipeline,
        source = %report.source,
        sender = %report.sender,
        recipients = %recipients_field(report),
        checks = %checks_field(report),
        score = report.score,
        verdict,
        reason = outcome.policy_decision.reason.as_deref().unwrap_or(""),
        reply = %reply,
        dry_run = outcome.decision.verdict != outcome.policy_decision.verdict,
        connection_age_ms = connected.elapsed().as_millis() as u64,
        "message"
    );
}

/// The line for a message that ended before end of message: refused at MAIL
/// or for every recipient (verdict reject or tempfail), or abandoned by the
/// client (verdict aborted).
pub fn log_ended(client: &str, verdict: &str, report: &MessageReport, connected: Instant) {
    let reply = match &report.mail_reply {
        Some(StageReply::Reject(r) | StageReply::Tempfail(r)) => r.to_string(),
        _ => String::new(),
    };
    tracing::info!(
        target: "dispatch_milter::message",
        queue_id = report.queue_id.as_deref().unwrap_or("-"),
        client,
        pipeline = %report.pipeline,
        source = %report.source,
        sender = %report.sender,
        recipients = %recipients_field(report),
        checks = %checks_field(report),
        score = report.score,
        verdict,
        reason = "",
        reply = %reply,
        dry_run = false,
        connection_age_ms = connected.elapsed().as_millis() as u64,
        "message"
    );
}
