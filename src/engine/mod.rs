//! The policy engine: one [`Session`] per SMTP connection, fed plain data
//! stage by stage, answering with replies at each stage and, at end of
//! message, a decision and one ordered list of edits. It knows nothing of the
//! milter protocol; the daemon and the offline `test` command both drive it.
//!
//! Checks start as soon as their inputs exist (connect, HELO, MAIL, RCPT,
//! end of message) and are awaited where the policy needs their answer, so
//! slow I/O overlaps the SMTP dialogue. Modifiers run in config order.

pub mod report;
pub mod runner;
pub mod verdict;

mod envelope;
mod eom;

use envelope::{branch_signature, dispatch_recipient, rewrite_sender};

use crate::address::Address;
use crate::checks::action::Action;
use crate::checks::{CheckInput, Early};
use crate::edits::{Edit, EditList};
use crate::message::{AuthInfo, ConnectionFacts, Envelope, Header, Message, TlsInfo};
use crate::modifiers::MessageContext;
use crate::policy::{
    Branch, CheckId, ErrorAction, LimitAction, MatchedBy, ModifierId, Outcome, OversizeAction,
    Pipeline, Policy, SourceFacts, SourceNode,
};
use crate::reply::Reply;
use crate::stage::Stage;
pub use report::{CheckReport, MessageReport, RecipientReport};
use runner::{Mode, Runner, Scope};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
pub use verdict::{Decision, StageReply, Verdict};

/// The outcome of one message.
#[derive(Clone, Debug, Serialize)]
pub struct MessageOutcome {
    /// What the MTA is told. In dry-run mode always accept.
    pub decision: Decision,
    /// What the policy decided; differs from `decision` only in dry-run mode.
    pub policy_decision: Decision,
    /// The edits to send, in order; empty unless the message goes on.
    pub edits: Vec<Edit>,
    /// What goes into the log line and the `test` report.
    pub report: MessageReport,
}

/// The reply `split_transactions` gives to a recipient whose branch differs
/// from the first accepted one: RFC 5321 §4.5.3.1.10 tells clients to send
/// the rest in a new transaction.
pub(crate) fn split_reply() -> Reply {
    Reply::fixed(
        452,
        "4.5.3",
        "Too many recipients for one policy, send this one in a new transaction",
    )
}

/// MAIL FROM with an address that cannot be read (RFC 3463 X.1.7). No
/// policy can be evaluated for it, so it is refused even in dry run.
fn bad_sender_reply() -> Reply {
    Reply::fixed(553, "5.1.7", "Bad sender address syntax")
}

/// RCPT TO with an address that cannot be read (RFC 3463 X.1.3).
fn bad_recipient_reply() -> Reply {
    Reply::fixed(553, "5.1.3", "Bad recipient address syntax")
}

struct RecipientState {
    /// As the MTA gave it at RCPT TO: DELRCPT must name it this way.
    original: Address,
    /// After rewrites, each with the branch it was dispatched to.
    targets: Vec<Target>,
    /// Dry-run only: what the recipient would have been told.
    would_refuse: Option<StageReply>,
    /// The RCPT TO parameters a replacement keeps (`crate::esmtp`).
    kept_parameters: Option<String>,
}

struct Target {
    address: Address,
    branch: Arc<Branch>,
    matched_by: MatchedBy,
}

struct MessageState {
    original_sender: Address,
    sender: Address,
    mail_args: Vec<String>,
    source: Arc<SourceNode>,
    recipients: Vec<RecipientState>,
    /// Branch signature of the first accepted recipient (split_transactions).
    first_signature: Option<Vec<usize>>,
    /// Headers and body as received. Shared, not copied, with the checks
    /// and modifiers at end of message; until then only this state holds it,
    /// so `Arc::make_mut` appends in place.
    content: Arc<Message>,
    /// Body bytes counted against the limit but not kept (nobody reads them).
    body_dropped: u64,
    report: MessageReport,
    /// What the message's checks establish for each other.
    evidence: Arc<crate::auth::Evidence>,
    /// The checks that may apply to the message and have not started yet:
    /// they are told about MAIL FROM and each header as it arrives, so they
    /// can start lookups early (`Check::prefetch`).
    early: Vec<CheckId>,
    /// Recipients whose address could not be read, under dry run or
    /// `refuse_at_eom`: their refusal applies at end of message.
    unreadable_recipients: Vec<(String, Reply)>,
    /// Bytes of the header fields kept so far (names and values).
    header_bytes: u64,
    /// A header field came past `header_limits`: it and all after it were
    /// dropped, and the message is refused at end of message.
    headers_over_limit: bool,
}

/// One milter connection running one pipeline: the messages of the connection,
/// one after another, with what the connection's checks found kept across them.
pub struct Session {
    policy: Arc<Policy>,
    pipeline: usize,
    facts: Arc<ConnectionFacts>,
    runner: Runner,
    message: Option<MessageState>,
    queue_id: Option<String>,
    /// Reports of messages that ended without end of message (MAIL refused,
    /// every recipient refused, abort), for the daemon's log line.
    ended: Vec<MessageReport>,
    connection_evidence: Arc<crate::auth::Evidence>,
}

impl Session {
    /// A session on `policy.pipelines[pipeline]`. The policy is kept for the
    /// whole session: a reload changes nothing for connections already open.
    pub fn new(policy: Arc<Policy>, pipeline: usize, facts: ConnectionFacts) -> Session {
        let runner = Runner::new(policy.checks.len());
        Session {
            policy,
            pipeline,
            facts: Arc::new(facts),
            runner,
            message: None,
            queue_id: None,
            ended: Vec::new(),
            connection_evidence: Arc::default(),
        }
    }

    /// The pipeline this session runs.
    pub fn pipeline(&self) -> &Pipeline {
        &self.policy.pipelines[self.pipeline]
    }

    /// What the MTA told us about the connection: client, HELO, TLS, macros.
    pub fn facts(&self) -> &ConnectionFacts {
        &self.facts
    }

    /// The largest number of checks this session had running at once.
    pub fn checks_in_flight_peak(&self) -> usize {
        self.runner.in_flight_peak()
    }

    /// The MTA's queue id, as each stage's macros tell it (the same one,
    /// usually: kept once).
    pub fn set_queue_id(&mut self, queue_id: Option<&str>) {
        if let Some(q) = queue_id.filter(|q| !q.is_empty())
            && self.queue_id.as_deref() != Some(q)
        {
            self.queue_id = Some(q.to_string());
        }
    }

    fn input(&self, stage: Stage) -> Arc<CheckInput> {
        let envelope = self.message.as_ref().map(|m| self.envelope_of(m));
        let message = match (&self.message, stage) {
            (Some(m), Stage::Eom) => Some(m.content.clone()),
            _ => None,
        };
        Arc::new(CheckInput {
            stage,
            connection: self.facts.clone(),
            envelope,
            message,
            queue_id: self.queue_id.clone(),
            evidence: match &self.message {
                Some(m) if stage >= Stage::Mail => m.evidence.clone(),
                _ => self.connection_evidence.clone(),
            },
        })
    }

    fn envelope_of(&self, m: &MessageState) -> Envelope {
        Envelope {
            sender: m.original_sender.clone(),
            rewritten_sender: (m.sender.original() != m.original_sender.original())
                .then(|| m.sender.clone()),
            mail_args: m.mail_args.clone(),
            recipients: m
                .recipients
                .iter()
                .flat_map(|r| r.targets.iter().map(|t| t.address.clone()))
                .collect(),
        }
    }

    /// Start the checks among `ids` whose inputs exist at `stage`. Those in
    /// `awaited_now`, which the session waits for next, run inline (see
    /// `runner`); the others run as tasks, making progress while the
    /// dialogue goes on.
    fn start_checks(&mut self, ids: &[CheckId], stage: Stage, awaited_now: &[CheckId]) {
        let policy = self.policy.clone();
        let mut input = None;
        for &id in ids {
            let instance = &policy.checks[id];
            if instance.inputs <= stage && self.runner.is_idle(id) {
                let input = input.get_or_insert_with(|| self.input(stage));
                let scope = if instance.inputs <= Stage::Helo {
                    Scope::Connection
                } else {
                    Scope::Message
                };
                let mode = if awaited_now.contains(&id) {
                    Mode::Inline
                } else {
                    Mode::Task
                };
                self.runner.start(id, instance, input, scope, mode);
            }
        }
    }

    /// What a finished check asks for, with the pipeline's error action
    /// resolved.
    fn resolve_action(&self, id: CheckId) -> Option<(Action, &crate::checks::CheckResult)> {
        let finished = self.runner.finished(id)?;
        let action = self.policy.checks[id].action_for(finished.result.status);
        Some((action, &finished.result))
    }

    /// The refusal (reject or tempfail) the finished checks among `ids` ask
    /// for; scores and quarantine wait for end of message.
    fn refusal(&self, ids: &[CheckId]) -> Decision {
        let mut decision = Decision::accept();
        for &id in ids {
            if let Some(d) = self.check_decision(id)
                && d.verdict() >= Verdict::Tempfail
            {
                decision.merge(d);
            }
        }
        decision
    }

    /// What one finished check decides on its own (scores aside).
    fn check_decision(&self, id: CheckId) -> Option<Decision> {
        let (action, result) = self.resolve_action(id)?;
        let instance = &self.policy.checks[id];
        let error_action = &self.pipeline().settings.error_action;
        let (verdict, reply) = match action {
            Action::Reject => (Verdict::Reject, Some(instance.reject_reply.clone())),
            Action::Tempfail => (Verdict::Tempfail, Some(instance.tempfail_reply.clone())),
            Action::Error => match error_action {
                ErrorAction::Tempfail(r) => (Verdict::Tempfail, Some(r.clone())),
                ErrorAction::Reject(r) => (Verdict::Reject, Some(r.clone())),
            },
            Action::Quarantine => (Verdict::Quarantine, None),
            Action::Ignore | Action::Score(_) => return None,
        };
        let described = match &result.reason {
            Some(reason) => format!("{}: {reason}", instance.name),
            None => format!("{}: {}", instance.name, result.status),
        };
        Some(Decision::new(verdict, reply, Some(described)))
    }

    /// Wait for `ids`, stopping early when one asks for a reject, and never
    /// longer than the pipeline's stage deadline.
    async fn await_checks(&mut self, ids: &[CheckId]) {
        let policy = self.policy.clone();
        let pipeline = self.pipeline;
        let deadline = tokio::time::Instant::now() + policy.pipelines[pipeline].settings.deadline;
        self.runner
            .wait_for(
                ids,
                |f| {
                    let action = policy.checks[f.id].action_for(f.result.status);
                    match action {
                        Action::Reject => true,
                        Action::Error => matches!(
                            policy.pipelines[pipeline].settings.error_action,
                            ErrorAction::Reject(_)
                        ),
                        _ => false,
                    }
                },
                deadline,
            )
            .await;
    }

    fn record_checks(&mut self, ids: &[CheckId], stage: Stage) {
        let reports: Vec<CheckReport> = ids
            .iter()
            .filter_map(|&id| {
                let finished = self.runner.finished(id)?;
                let instance = &self.policy.checks[id];
                Some(CheckReport::finished(instance, finished, stage))
            })
            .collect();
        if let Some(m) = &mut self.message {
            for r in reports {
                if !m.report.checks.iter().any(|c| c.name == r.name) {
                    m.report.checks.push(r);
                }
            }
        }
    }

    fn checks_deciding_by(&self, ids: &[CheckId], stage: Stage) -> Vec<CheckId> {
        ids.iter()
            .copied()
            .filter(|&id| self.policy.checks[id].decides <= stage)
            .collect()
    }

    /// Connection opened: start the checks whose inputs are the client's
    /// address and name, and decide on those the policy needs now.
    pub async fn connect(&mut self) -> StageReply {
        let all = self.pipeline().all_checks.clone();
        let global = self.checks_deciding_by(&self.pipeline().checks.clone(), Stage::Connect);
        self.start_checks(&all, Stage::Connect, &global);
        self.await_checks(&global).await;
        self.stage_reply(&global)
    }

    /// HELO or EHLO. A second EHLO (after STARTTLS) restarts the HELO-stage
    /// checks, since what they look at has changed.
    pub async fn helo(&mut self, helo: &str, tls: Option<TlsInfo>) -> StageReply {
        let facts = Arc::make_mut(&mut self.facts);
        facts.helo = Some(helo.to_string());
        if tls.is_some() {
            facts.tls = tls;
        }
        let policy = self.policy.clone();
        let input = self.input(Stage::Helo);
        for &id in &self.pipeline().all_checks.clone() {
            let instance = &policy.checks[id];
            if instance.inputs == Stage::Helo {
                self.runner.restart(id, instance, &input, Scope::Connection);
            } else if instance.inputs < Stage::Helo && self.runner.is_idle(id) {
                self.runner
                    .start(id, instance, &input, Scope::Connection, Mode::Task);
            }
        }
        let global = self.checks_deciding_by(&self.pipeline().checks.clone(), Stage::Helo);
        self.await_checks(&global).await;
        self.stage_reply(&global)
    }

    /// Record the TLS facts when they arrive apart from HELO (for example
    /// with MAIL FROM macros).
    pub(crate) fn set_tls(&mut self, tls: Option<TlsInfo>) {
        if tls.is_some() {
            Arc::make_mut(&mut self.facts).tls = tls;
        }
    }

    fn stage_reply(&self, ids: &[CheckId]) -> StageReply {
        let d = self.refusal(ids);
        if self.pipeline().settings.dry_run {
            return StageReply::Continue;
        }
        StageReply::from_decision(&d)
    }

    /// MAIL FROM: a new message. Global sender rewrites run first, then the
    /// source is chosen, then the source's sender rewrites run.
    pub async fn mail(
        &mut self,
        sender: &str,
        args: &[String],
        auth: Option<AuthInfo>,
    ) -> StageReply {
        self.abort();
        if auth.is_some() {
            Arc::make_mut(&mut self.facts).auth = auth;
        }
        let policy = self.policy.clone();
        let pipeline = &policy.pipelines[self.pipeline];
        let original_sender = match Address::parse(sender) {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(error = %e, queue_id = ?self.queue_id, "sender refused");
                let reply = StageReply::Reject(bad_sender_reply());
                // Logged and counted like any message refused at MAIL FROM.
                let mut report = MessageReport::unrouted(&pipeline.name);
                report.sender = e.address.escape_debug().to_string();
                report.mail_reply = Some(reply.clone());
                report.queue_id = self.queue_id.clone();
                self.ended.push(report);
                return reply;
            }
        };

        let rewritten = rewrite_sender(&policy, &pipeline.modifiers, &original_sender);
        let mut sender = match rewritten {
            Ok(s) => s,
            Err(e) => return self.internal_error("mail", &e),
        };
        let facts = SourceFacts {
            auth_user: self.facts.auth.as_ref().map(|a| a.user.as_str()),
            client_ip: self.facts.client_ip,
            daemon_name: self.facts.daemon_name.as_deref(),
            sender: &sender,
        };
        let (source, source_matched) = pipeline.sources.select(&facts);
        let source = source.clone();
        sender = match rewrite_sender(&policy, &source.modifiers, &sender) {
            Ok(s) => s,
            Err(e) => return self.internal_error("mail", &e),
        };

        self.message = Some(MessageState {
            report: MessageReport::new(
                &pipeline.name,
                &original_sender,
                &sender,
                &source.label,
                source_matched,
            ),
            original_sender,
            sender,
            mail_args: args.to_vec(),
            source: source.clone(),
            recipients: Vec::new(),
            first_signature: None,
            content: Arc::default(),
            body_dropped: 0,
            evidence: Arc::default(),
            early: Vec::new(),
            unreadable_recipients: Vec::new(),
            header_bytes: 0,
            headers_over_limit: false,
        });

        let now = self.checks_deciding_by(&source.checks, Stage::Mail);
        self.start_checks(&source.checks, Stage::Mail, &now);
        // Before waiting for what decides at MAIL FROM (on a connection's
        // first message, DNSBL and iprev from connect): the early lookups
        // overlap that wait. If MAIL FROM is refused, the message's memo goes
        // and its lookups are stopped.
        self.prefetch_for(&source.checks);
        self.await_checks(&now).await;
        self.record_checks(&now, Stage::Mail);
        let reply = self.stage_reply(&now);
        if !reply.is_continue() {
            self.runner.cancel_running();
            if let Some(m) = &mut self.message {
                m.report.mail_reply = Some(reply.clone());
            }
            self.finish_report_only();
        }
        reply
    }

    fn internal_error(&mut self, stage: &str, error: &dyn std::fmt::Display) -> StageReply {
        tracing::error!(stage, %error, queue_id = ?self.queue_id, pipeline = %self.pipeline().name, "modifier failed; applying the error action");
        match &self.pipeline().settings.error_action {
            ErrorAction::Tempfail(r) => StageReply::Tempfail(r.clone()),
            ErrorAction::Reject(r) => StageReply::Reject(r.clone()),
        }
    }

    /// RCPT TO: rewrite, dispatch, run what decides at RCPT, and answer for
    /// this recipient only.
    pub async fn rcpt(&mut self, recipient: &str, args: &[String]) -> StageReply {
        let Some(message) = &self.message else {
            tracing::error!(
                recipient,
                "RCPT without MAIL; answering with the error action"
            );
            return self.internal_error("rcpt", &"RCPT TO before MAIL FROM");
        };
        let policy = self.policy.clone();
        let pipeline = &policy.pipelines[self.pipeline];
        let source = message.source.clone();
        let original = match Address::parse(recipient) {
            Ok(a) => a,
            Err(e) => return self.refuse_unreadable_recipient(&e),
        };

        let targets = match dispatch_recipient(&policy, pipeline, &source, &original) {
            Ok(t) => t,
            Err(e) => {
                let reply = self.internal_error("rcpt", &e);
                self.note_recipient(&original, None, &reply, "error");
                return reply;
            }
        };

        // The branch outcome first: it needs no check.
        let mut decision = Decision::accept();
        for t in &targets {
            let d = match &t.branch.outcome {
                Outcome::Reject(r) => Decision::new(
                    Verdict::Reject,
                    Some(r.clone()),
                    Some(t.branch.label.clone()),
                ),
                Outcome::Tempfail(r) => Decision::new(
                    Verdict::Tempfail,
                    Some(r.clone()),
                    Some(t.branch.label.clone()),
                ),
                _ => continue,
            };
            decision.merge(d);
        }

        let mut checks: Vec<CheckId> = Vec::new();
        for t in &targets {
            for id in &t.branch.checks {
                if !checks.contains(id) {
                    checks.push(*id);
                }
            }
        }
        checks.sort_unstable();
        if decision.verdict() < Verdict::Tempfail {
            let now = self.checks_deciding_by(&checks, Stage::Rcpt);
            self.start_checks(&checks, Stage::Rcpt, &now);
            self.await_checks(&now).await;
            self.record_checks(&now, Stage::Rcpt);
            decision.merge(self.refusal(&now));
        }

        let mut reply = StageReply::from_decision(&decision);
        let settings = &pipeline.settings;
        if reply.is_continue() && settings.split_transactions {
            let signature = branch_signature(pipeline, &source, &targets);
            if let Some(message) = self.message.as_mut() {
                match &message.first_signature {
                    None => message.first_signature = Some(signature),
                    Some(first) if *first != signature => {
                        reply = StageReply::Tempfail(split_reply())
                    }
                    Some(_) => {}
                }
            }
        }
        let outcome = match &reply {
            StageReply::Continue => "accept",
            StageReply::Reject(_) => "reject",
            StageReply::Tempfail(r) if *r == split_reply() => "split",
            StageReply::Tempfail(_) => "tempfail",
        };
        self.note_recipient_targets(&original, &targets, &reply, outcome);
        if outcome == "accept" {
            // Checks only this recipient's branch lists: their early lookups
            // now that the recipient is in.
            self.prefetch_for(&checks);
        }

        // A split is a real answer even under refuse_at_eom: the client
        // retries that recipient, nothing is refused.
        let refused = !reply.is_continue();
        let deferred = settings.dry_run || (settings.refuse_at_eom && outcome != "split");
        let (kept, answer) = match (refused, deferred) {
            (false, _) => (Some(None), reply),
            (true, true) => (Some(Some(reply)), StageReply::Continue),
            (true, false) => (None, reply),
        };
        if let (Some(would_refuse), Some(message)) = (kept, self.message.as_mut()) {
            message.recipients.push(RecipientState {
                original,
                targets,
                would_refuse,
                kept_parameters: crate::esmtp::kept_rcpt_parameters(args),
            });
        }
        answer
    }

    /// A recipient address that cannot be read matches no rule, not even
    /// the default: it is refused, at RCPT TO or (dry run, `refuse_at_eom`)
    /// at end of message.
    fn refuse_unreadable_recipient(
        &mut self,
        error: &crate::address::InvalidAddress,
    ) -> StageReply {
        tracing::info!(error = %error, queue_id = ?self.queue_id, "recipient refused");
        let reply = bad_recipient_reply();
        let settings = &self.pipeline().settings;
        let deferred = settings.dry_run || settings.refuse_at_eom;
        let shown = error.address.escape_debug().to_string();
        if let Some(m) = &mut self.message {
            m.report
                .recipients
                .push(RecipientReport::unreadable(shown.clone(), &reply));
            if deferred {
                m.unreadable_recipients.push((shown, reply));
                return StageReply::Continue;
            }
        }
        StageReply::Reject(reply)
    }

    fn note_recipient(
        &mut self,
        original: &Address,
        branch: Option<String>,
        reply: &StageReply,
        outcome: &str,
    ) {
        if let Some(m) = &mut self.message {
            m.report.recipients.push(RecipientReport::new(
                original,
                branch,
                None,
                reply,
                outcome,
                Vec::new(),
            ));
        }
    }

    fn note_recipient_targets(
        &mut self,
        original: &Address,
        targets: &[Target],
        reply: &StageReply,
        outcome: &str,
    ) {
        let delivered: Vec<String> = targets.iter().map(|t| t.address.to_string()).collect();
        let mut labels: Vec<&str> = Vec::new();
        for t in targets {
            if !labels.contains(&t.branch.label.as_str()) {
                labels.push(&t.branch.label);
            }
        }
        let branch = (!labels.is_empty()).then(|| labels.join(", "));
        let matched = targets.first().map(|t| t.matched_by);
        if let Some(m) = &mut self.message {
            let mut r = RecipientReport::new(original, branch, matched, reply, outcome, delivered);
            for copy in targets.iter().flat_map(|t| t.branch.copy.iter()) {
                let copy = copy.to_string();
                if !r.copies.contains(&copy) {
                    r.copies.push(copy);
                }
            }
            m.report.recipients.push(r);
        }
    }

    /// Let the checks among `ids` that have not started and are new to
    /// this message start what they can from MAIL FROM, and remember them
    /// for the headers.
    fn prefetch_for(&mut self, ids: &[CheckId]) {
        let policy = self.policy.clone();
        let fresh: Vec<CheckId> = match &self.message {
            Some(m) => ids
                .iter()
                .copied()
                .filter(|&id| self.runner.is_idle(id) && !m.early.contains(&id))
                .collect(),
            None => return,
        };
        if let Some(m) = &mut self.message {
            let early = Early {
                sender: &m.original_sender,
                header: None,
                evidence: &m.evidence,
            };
            for &id in &fresh {
                policy.checks[id].check.prefetch(&early);
            }
            m.early.extend(fresh);
        }
    }

    /// One header as received (value without the leading space).
    pub fn header(&mut self, name: &str, value: &str) {
        self.add_header(Header::new(name, value));
    }

    /// A header as the MTA passed it: the name and every byte after the
    /// colon, kept exactly (see [`Header::received`]). The MTA's buffers
    /// become the stored header without a copy.
    pub fn header_received(&mut self, name: Vec<u8>, raw_value: Vec<u8>) {
        self.add_header(Header::received(name, raw_value));
    }

    fn add_header(&mut self, header: Header) {
        let limits = self.pipeline().settings.header_limits;
        let Some(m) = &mut self.message else {
            return;
        };
        let bytes = (header.name().len() + header.raw_value().len()) as u64;
        // On the wire: name, colon, value, CRLF.
        let wire = bytes + 3;
        if m.headers_over_limit
            || m.content.headers.len() >= limits.count
            || m.header_bytes + bytes > limits.bytes
        {
            // Kept no more: what a flood costs stops here. The message is
            // refused at end of message; its size still counts.
            if !m.headers_over_limit {
                tracing::info!(queue_id = ?self.queue_id, headers = m.content.headers.len(), bytes = m.header_bytes, "headers past the pipeline's limits; the message will be refused");
            }
            m.headers_over_limit = true;
            Arc::make_mut(&mut m.content).size += wire;
            return;
        }
        m.header_bytes += bytes;
        let early = Early {
            sender: &m.original_sender,
            header: Some((header.name(), header.value())),
            evidence: &m.evidence,
        };
        for &id in &m.early {
            self.policy.checks[id].check.prefetch(&early);
        }
        let content = Arc::make_mut(&mut m.content);
        content.size += wire;
        content.headers.push(header);
    }

    /// A piece of the body. Only the pipeline's `max_body_size` is kept, and
    /// nothing at all when no check or modifier reads the body.
    pub fn body(&mut self, chunk: bytes::Bytes) {
        let pipeline = self.pipeline();
        let limit = pipeline.settings.max_body_size;
        let keep = pipeline.needs_body;
        if let Some(m) = &mut self.message {
            let dropped = m.body_dropped;
            let content = Arc::make_mut(&mut m.content);
            content.size += chunk.len() as u64;
            let kept = content.body.len() as u64 + dropped;
            let room = limit.saturating_sub(kept) as usize;
            if chunk.len() > room {
                content.body_truncated = true;
            }
            let take = chunk.len().min(room);
            if keep {
                content.body.push(chunk.slice(..take));
            } else {
                m.body_dropped += take as u64;
            }
        }
    }

    /// The message was aborted (RSET, or the client went away): cancel its
    /// checks and forget it. Connection-level results stay.
    pub fn abort(&mut self) {
        self.finish_report_only();
    }

    /// End a message that will not reach end of message, keeping its report.
    fn finish_report_only(&mut self) {
        if let Some(m) = self.message.take() {
            let mut report = m.report;
            report.queue_id = self.queue_id.clone();
            self.ended.push(report);
        }
        self.runner.end_message();
    }

    /// Reports of messages that ended before end of message since the last
    /// call: refused at MAIL, every recipient refused, or aborted.
    pub fn take_ended(&mut self) -> Vec<MessageReport> {
        std::mem::take(&mut self.ended)
    }
}

impl Target {
    fn is_original(&self, original: &Address) -> bool {
        self.address.original() == original.original()
    }
}

impl RecipientState {
    fn unchanged(&self) -> bool {
        matches!(self.targets.as_slice(), [t] if t.address.original() == self.original.original())
    }
}
