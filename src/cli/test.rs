//! `dispatch-milter test`: run the whole policy on one message offline, the
//! way the daemon would stage by stage, and print what happened: each check
//! with its result, action and time, the branch of each recipient, the
//! replies, the verdict and the exact edits. `--json` prints one object.

use crate::engine::{MessageReport, Session, StageReply, Verdict};
use crate::message::{AuthInfo, ConnectionFacts, Header, TlsInfo};
use crate::policy::Policy;
use crate::reply::Reply;
use serde::Serialize;
use serde_json::json;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything the command line says about the message.
#[derive(Clone, Debug, Default)]
pub struct TestInput {
    /// `--pipeline`: the pipeline to use instead of the daemon's choice.
    pub pipeline: Option<String>,
    /// The SMTP client's address.
    pub client_ip: Option<IpAddr>,
    /// The SMTP client's host name.
    pub client_name: Option<String>,
    /// The HELO name; the client name (or "localhost") when absent.
    pub helo: Option<String>,
    /// The envelope sender, "" for the null sender.
    pub from: String,
    /// The envelope recipients.
    pub to: Vec<String>,
    /// The SASL user name, as if the client had authenticated.
    pub auth_user: Option<String>,
    /// Pretend the client used TLS 1.3.
    pub tls: bool,
    /// The MTA's `{daemon_name}`.
    pub daemon_name: Option<String>,
    /// The MTA's queue id.
    pub queue_id: Option<String>,
    /// The message as read from the file: headers, a blank line, the body.
    pub message: Vec<u8>,
}

/// One SMTP stage as `test` ran it.
#[derive(Clone, Debug, Serialize)]
pub struct StageLine {
    /// `connect`, `helo`, `mail`, `rcpt`, ...
    pub stage: String,
    /// What was sent at that stage.
    pub detail: String,
    /// What the policy answered.
    pub reply: StageReply,
}

/// What `test` found.
#[derive(Clone, Debug, Serialize)]
pub struct TestOutcome {
    /// The pipeline the message went through.
    pub pipeline: String,
    /// What happened to the message.
    pub verdict: Verdict,
    /// The reply sent with a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// Why, when the policy says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In dry-run mode: what the policy would have done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run_verdict: Option<Verdict>,
    /// Every stage run, in order.
    pub stages: Vec<StageLine>,
    /// The message's report, when it reached end of message.
    pub report: Option<MessageReport>,
    /// The edits the MTA would be asked to make.
    pub edits: Vec<crate::edits::Edit>,
}

/// Split a message into headers as text (name trimmed; the value without
/// the one space after the colon, folds kept as CRLF, bytes that are not
/// UTF-8 replaced) and a CRLF body: `parse_message_exact` read as text,
/// for what wants strings.
pub fn parse_message(raw: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let (headers, body) = parse_message_exact(raw);
    let headers = headers
        .iter()
        .map(|h| {
            let value = h.raw_value().strip_prefix(b" ").unwrap_or(h.raw_value());
            (
                h.name().trim().to_string(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect();
    (headers, body)
}

/// Split a message file into headers as an MTA passes them with
/// LEADING_SPACE (each name, and every byte after the colon with folds as
/// CRLF) and the body with CRLF line ends. A file with LF line ends reads
/// as if each LF were CRLF, as an MTA receives it; every other byte, 8-bit
/// ones included, is kept, so DKIM signatures over it verify.
pub(crate) fn parse_message_exact(raw: &[u8]) -> (Vec<Header>, Vec<u8>) {
    let mut normalized = Vec::with_capacity(raw.len() + raw.len() / 32);
    for (i, b) in raw.iter().enumerate() {
        if *b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            normalized.push(b'\r');
        }
        normalized.push(*b);
    }
    // A message that starts with an empty line has no headers, whatever
    // empty lines its body holds further down.
    let (head, body): (&[u8], &[u8]) = if let Some(body) = normalized.strip_prefix(b"\r\n") {
        (&[], body)
    } else if let Some(i) = normalized.windows(4).position(|w| w == b"\r\n\r\n") {
        (&normalized[..i], &normalized[i + 4..])
    } else {
        (normalized.as_slice(), &[])
    };
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    for line in lines.filter(|l| !l.is_empty()) {
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            if let Some((_, value)) = fields.last_mut() {
                value.extend_from_slice(b"\r\n");
                value.extend_from_slice(line);
            }
            continue;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            fields.push((line[..colon].to_vec(), line[colon + 1..].to_vec()));
        }
    }
    let headers = fields
        .into_iter()
        .map(|(name, value)| Header::received(name, value))
        .collect();
    (headers, body.to_vec())
}

fn stage(stages: &mut Vec<StageLine>, name: &str, detail: String, reply: &StageReply) {
    stages.push(StageLine {
        stage: name.to_string(),
        detail,
        reply: reply.clone(),
    });
}

/// `--pipeline` names no pipeline of the configuration.
#[derive(Debug, thiserror::Error)]
#[error(
    "no pipeline \"{name}\" in {}; pipelines: {}",
    .file.display(),
    .pipelines.join(", ")
)]
pub struct UnknownPipeline {
    name: String,
    file: PathBuf,
    /// The configuration's pipelines, in order.
    pipelines: Vec<String>,
}

/// Run the policy on one message. Errors are for the command line (an
/// unknown pipeline), not for the policy's verdict.
pub async fn run(policy: Arc<Policy>, input: &TestInput) -> Result<TestOutcome, UnknownPipeline> {
    // The daemon's choice: --pipeline as a listener's `pipeline`, else by
    // {daemon_name}, else the first.
    let named = input.pipeline.as_deref();
    let pipeline = policy
        .choose_pipeline(named, input.daemon_name.as_deref())
        .ok_or_else(|| UnknownPipeline {
            name: named.unwrap_or_default().to_string(),
            file: policy.file.clone(),
            pipelines: policy.pipelines.iter().map(|p| p.name.clone()).collect(),
        })?;
    let facts = ConnectionFacts {
        client_ip: input.client_ip,
        client_name: input.client_name.clone(),
        daemon_name: input.daemon_name.clone(),
        helo: None,
        tls: None,
        auth: None,
    };
    let mut session = Session::new(policy.clone(), pipeline, facts);
    let pipeline_name = session.pipeline().name.clone();
    let mut stages = Vec::new();
    let refused = |verdict: Verdict, reply: &StageReply, stages: Vec<StageLine>| TestOutcome {
        pipeline: pipeline_name.clone(),
        verdict,
        reply: match reply {
            StageReply::Reject(r) | StageReply::Tempfail(r) => Some(r.clone()),
            StageReply::Continue => None,
        },
        reason: None,
        dry_run_verdict: None,
        stages,
        report: None,
        edits: Vec::new(),
    };
    let verdict_of = |reply: &StageReply| match reply {
        StageReply::Reject(_) => Verdict::Reject,
        _ => Verdict::Tempfail,
    };

    let client = format!(
        "{} [{}]",
        input
            .client_ip
            .map_or("unknown".to_string(), |ip| ip.to_string()),
        input.client_name.as_deref().unwrap_or("unknown")
    );
    let reply = session.connect().await;
    stage(&mut stages, "connect", client, &reply);
    if !reply.is_continue() {
        return Ok(refused(verdict_of(&reply), &reply, stages));
    }
    let tls = input.tls.then(|| TlsInfo {
        version: "TLSv1.3".to_string(),
        cipher: Some("TLS_AES_256_GCM_SHA384".to_string()),
    });
    let helo = input
        .helo
        .clone()
        .or_else(|| input.client_name.clone())
        .unwrap_or_else(|| "localhost".to_string());
    let reply = session.helo(&helo, tls).await;
    let tls_text = if input.tls { "TLSv1.3" } else { "no TLS" };
    stage(&mut stages, "helo", format!("{helo}, {tls_text}"), &reply);
    if !reply.is_continue() {
        return Ok(refused(verdict_of(&reply), &reply, stages));
    }
    let auth = input.auth_user.as_ref().map(|u| AuthInfo {
        user: u.clone(),
        mechanism: Some("PLAIN".to_string()),
    });
    let auth_text = input
        .auth_user
        .as_ref()
        .map_or(String::new(), |u| format!(", auth {u}"));
    let reply = session.mail(&format!("<{}>", input.from), &[], auth).await;
    stage(
        &mut stages,
        "mail",
        format!("<{}>{auth_text}", input.from),
        &reply,
    );
    if !reply.is_continue() {
        // The report of the refused transaction names the check that refused.
        let mut out = refused(verdict_of(&reply), &reply, stages);
        out.report = session.take_ended().pop();
        return Ok(out);
    }
    let mut accepted = 0;
    let mut worst: Option<StageReply> = None;
    for to in &input.to {
        let reply = session.rcpt(&format!("<{to}>"), &[]).await;
        stage(&mut stages, "rcpt", format!("<{to}>"), &reply);
        if reply.is_continue() {
            accepted += 1;
        } else if worst
            .as_ref()
            .is_none_or(|w| matches!(w, StageReply::Tempfail(_)))
        {
            worst = Some(reply);
        }
    }
    session.set_queue_id(input.queue_id.as_deref());
    if accepted == 0 {
        let reply = worst.unwrap_or(StageReply::Continue);
        let mut out = refused(verdict_of(&reply), &reply, stages);
        out.reason = Some("no recipient was accepted".to_string());
        session.abort();
        out.report = session.take_ended().pop();
        return Ok(out);
    }
    let (headers, body) = parse_message_exact(&input.message);
    let header_count = headers.len();
    for h in headers {
        session.header_received(h.name().as_bytes().to_vec(), h.raw_value().to_vec());
    }
    let body_len = body.len();
    session.body(body.into());
    let outcome = session.eom().await;
    let decision = &outcome.decision;
    stage(
        &mut stages,
        "eom",
        format!("{header_count} headers, {body_len} body bytes"),
        &StageReply::from_decision(decision),
    );
    let dry_run = session.pipeline().settings.dry_run;
    Ok(TestOutcome {
        pipeline: pipeline_name,
        verdict: decision.verdict(),
        reply: decision.reply().cloned(),
        reason: outcome.policy_decision.reason().map(str::to_string),
        dry_run_verdict: dry_run.then_some(outcome.policy_decision.verdict()),
        stages,
        report: Some(outcome.report),
        edits: outcome.edits,
    })
}

/// The JSON form: `verdict`, `recipients`, `checks`, `edits` and more.
pub fn to_json(outcome: &TestOutcome) -> serde_json::Value {
    let recipients: Vec<serde_json::Value> = match &outcome.report {
        Some(r) => r
            .recipients
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect(),
        None => outcome
            .stages
            .iter()
            .filter(|s| s.stage == "rcpt")
            .map(|s| {
                let (state, reply) = match &s.reply {
                    StageReply::Continue => ("accept", None),
                    StageReply::Reject(r) => ("reject", Some(r)),
                    StageReply::Tempfail(r) => ("tempfail", Some(r)),
                };
                json!({"address": s.detail.trim_matches(['<', '>']), "outcome": state, "reply": reply})
            })
            .collect(),
    };
    let checks = outcome
        .report
        .as_ref()
        .map(|r| serde_json::to_value(&r.checks).unwrap_or_default())
        .unwrap_or_else(|| json!([]));
    let mut v = json!({
        "pipeline": outcome.pipeline,
        "verdict": outcome.verdict,
        "recipients": recipients,
        "checks": checks,
        "edits": outcome.edits,
        "stages": outcome.stages,
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(r) = &outcome.reply {
            obj.insert("reply".into(), json!(r));
        }
        if let Some(r) = &outcome.reason {
            obj.insert("reason".into(), json!(r));
        }
        if let Some(d) = outcome.dry_run_verdict {
            obj.insert("dry_run_verdict".into(), json!(d));
        }
        if let Some(r) = &outcome.report {
            obj.insert("score".into(), json!(r.score));
            obj.insert("source".into(), json!(r.source));
        }
    }
    v
}

fn reply_text(reply: &StageReply) -> String {
    match reply {
        StageReply::Continue => "continue".to_string(),
        StageReply::Reject(r) | StageReply::Tempfail(r) => r.to_string(),
    }
}

/// The human form, meant to be read top to bottom like the SMTP dialogue.
pub fn render_text(outcome: &TestOutcome) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pipeline  {}", outcome.pipeline);
    if let Some(r) = &outcome.report {
        let _ = writeln!(
            out,
            "source    {} (matched by {})",
            r.source, r.source_matched_by
        );
        if let Some(s) = &r.sender_rewritten {
            let _ = writeln!(out, "sender    {} rewritten to {s}", r.sender);
        }
    }
    let _ = writeln!(out);
    for s in &outcome.stages {
        let _ = writeln!(
            out,
            "{:<8}  {:<40}  {}",
            s.stage,
            s.detail,
            reply_text(&s.reply)
        );
        if s.stage == "rcpt"
            && let Some(r) = outcome.report.as_ref().and_then(|r| {
                r.recipients
                    .iter()
                    .find(|x| format!("<{}>", x.address) == s.detail)
            })
        {
            if let Some(b) = &r.branch {
                let by = r
                    .matched_by
                    .as_deref()
                    .map_or(String::new(), |m| format!(" (by {m})"));
                let _ = writeln!(out, "          -> {b}{by}");
            }
            if r.delivered_to.len() != 1 || r.delivered_to.first() != Some(&r.address) {
                let _ = writeln!(
                    out,
                    "          -> delivered to {}",
                    r.delivered_to.join(", ")
                );
            }
            if !r.copies.is_empty() {
                let _ = writeln!(out, "          -> copy to {}", r.copies.join(", "));
            }
        }
    }
    if let Some(r) = &outcome.report
        && !r.checks.is_empty()
    {
        let _ = writeln!(out, "\nchecks");
        for c in &r.checks {
            let reason = c
                .reason
                .as_deref()
                .map_or(String::new(), |r| format!("  {r}"));
            let _ = writeln!(
                out,
                "  {:<20} {:<10} {:<12} {:>9.3} ms  {}->{}{}",
                c.name, c.result, c.action, c.elapsed_ms, c.started, c.decided, reason
            );
        }
        if r.score != 0.0 {
            let _ = writeln!(out, "  score {}", r.score);
        }
    }
    let _ = writeln!(out);
    let mut verdict = outcome.verdict.as_str().to_uppercase();
    if let Some(r) = &outcome.reply {
        verdict.push_str(&format!("  {r}"));
    }
    if let Some(d) = outcome.dry_run_verdict {
        verdict.push_str(&format!("  (dry run: the policy says {d})"));
    }
    let _ = writeln!(out, "verdict   {verdict}");
    if let Some(reason) = &outcome.reason
        && outcome.verdict != Verdict::Accept
    {
        let _ = writeln!(out, "reason    {reason}");
    }
    if outcome.edits.is_empty() {
        let _ = writeln!(out, "edits     none");
    } else {
        let _ = writeln!(out, "edits");
        for e in &outcome.edits {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{parse_message, parse_message_exact};

    #[test]
    fn exact_parsing_keeps_every_header_byte() {
        let (h, b) =
            parse_message_exact(b"Subject:x\nX-8bit:  caf\xe9\r\n\tfolded\nFrom: a@b\n\n\xe9\n");
        assert_eq!(h.len(), 3);
        assert_eq!((h[0].name(), h[0].raw_value()), ("Subject", &b"x"[..]));
        assert_eq!(h[1].raw_value(), b"  caf\xe9\r\n\tfolded");
        assert_eq!(h[2].raw_value(), b" a@b");
        assert_eq!(b, b"\xe9\r\n");
    }

    #[test]
    fn message_parsing_keeps_folding_and_crlf_body() {
        let (h, b) = parse_message(b"Subject: hi\n  there\nFrom: a@b\n\nline1\nline2\n");
        assert_eq!(h[0], ("Subject".to_string(), "hi\r\n  there".to_string()));
        assert_eq!(h[1].0, "From");
        assert_eq!(b, b"line1\r\nline2\r\n");
    }

    /// Found by the `message` fuzz target: a message without headers whose
    /// body has an empty line had its first paragraph read as headers.
    #[test]
    fn a_message_starting_with_an_empty_line_has_no_headers() {
        let (h, b) = parse_message(b"\r\nNot: a header\r\n\r\nbody\r\n");
        assert!(h.is_empty(), "{h:?}");
        assert_eq!(b, b"Not: a header\r\n\r\nbody\r\n");
    }
}
