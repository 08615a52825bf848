//! End of message: the checks still to run, the verdict (checks, limits,
//! scores, recipients), dry run, and the one ordered edit list.

use super::*;
use crate::auth_results::{AuthResults, ResInfo};
use crate::edits::InvalidHeaderName;
use crate::modifiers::EditError;
use crate::policy::PipelineSettings;

const DRY_RUN_HEADER: &str = "X-Dispatch-Dry-Run";

/// Why the edit list could not be built; then no edit at all is sent.
#[derive(Debug, thiserror::Error)]
enum EditsError {
    #[error("no message")]
    NoMessage,
    #[error(transparent)]
    Header(#[from] InvalidHeaderName),
    /// A modifier's header edits failed.
    #[error("modifier \"{modifier}\": {error}")]
    Modifier {
        modifier: String,
        #[source]
        error: EditError,
    },
}

impl Session {
    /// End of message: run what is left, decide, and build the edits.
    pub async fn eom(&mut self) -> MessageOutcome {
        if self.message.is_none() {
            tracing::error!("end of message without a message; applying the error action");
            return self.lost_message("end of message without MAIL FROM");
        }
        let policy = self.policy.clone();
        let pipeline = &policy.pipelines[self.pipeline];
        let settings = &pipeline.settings;

        let (checks, cancelled) = self.finish_checks().await;
        let (mut decision, score) = self.checks_verdict(&checks);
        let Some(message) = self.message.as_ref() else {
            return self.lost_message("message state lost");
        };
        let header_limit = message
            .headers_over_limit
            .then(|| header_limit_decision(settings.header_limits));
        // In this order: between equally severe decisions the first stands.
        let others = size_decision(settings, message)
            .into_iter()
            .chain(header_limit.clone())
            .chain(score_decision(settings, score))
            .chain(recipient_decisions(message));
        for d in others {
            decision.merge(d);
        }
        if let Decision::Quarantine {
            reason: reason @ None,
        } = &mut decision
        {
            *reason = Some("quarantined by policy".to_string());
        }

        let edits = if matches!(decision.verdict(), Verdict::Accept | Verdict::Quarantine)
            || settings.dry_run
        {
            match self.build_edits(pipeline, &decision, &checks) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, queue_id = ?self.queue_id, "building the edits failed; no edit is sent and the error action applies");
                    decision = self.error_decision(&e.to_string());
                    EditList::new()
                }
            }
        } else {
            EditList::new()
        };

        let policy_decision = decision.clone();
        let (decision, edits) = if settings.dry_run {
            dry_run(settings, &policy_decision, edits, header_limit)
        } else {
            (decision, edits)
        };
        let report = self.finish_report(&cancelled, score);
        MessageOutcome {
            decision,
            policy_decision,
            edits: edits.into_vec(),
            report,
        }
    }

    /// The outcome when there is no message to decide on: the error action.
    fn lost_message(&self, why: &str) -> MessageOutcome {
        let d = self.error_decision(why);
        MessageOutcome {
            decision: d.clone(),
            policy_decision: d,
            edits: Vec::new(),
            report: MessageReport::unrouted(&self.pipeline().name),
        }
    }

    /// Start what is left of the message's checks (its source's and every
    /// branch's), wait for them within the deadline, and stop the rest.
    /// The checks in config order, and those stopped unfinished.
    async fn finish_checks(&mut self) -> (Vec<CheckId>, Vec<CheckId>) {
        let mut checks: Vec<CheckId> = Vec::new();
        if let Some(message) = &self.message {
            checks.extend(&message.source.checks);
            for r in &message.recipients {
                for t in &r.targets {
                    for id in &t.branch.checks {
                        if !checks.contains(id) {
                            checks.push(*id);
                        }
                    }
                }
            }
        }
        checks.sort_unstable();
        self.start_checks(&checks, Stage::Eom, &checks);
        self.await_checks(&checks).await;
        let cancelled = self.runner.cancel_running();
        self.record_checks(&checks, Stage::Eom);
        (checks, cancelled)
    }

    /// What the finished checks decide, and the message's score.
    fn checks_verdict(&self, checks: &[CheckId]) -> (Decision, f64) {
        let mut decision = Decision::accept();
        let mut score = 0.0;
        for &id in checks {
            if let Some(d) = self.check_decision(id) {
                decision.merge(d);
            }
            if let Some((Action::Score(n), result)) = self.resolve_action(id) {
                score += n.or(result.score).unwrap_or(0.0);
            }
        }
        (decision, score)
    }

    /// The message's report, with the checks stopped unfinished and the
    /// score; the message state ends here.
    fn finish_report(&mut self, cancelled: &[CheckId], score: f64) -> MessageReport {
        let mut report = match self.message.take() {
            Some(m) => m.report,
            None => MessageReport::unrouted(&self.pipeline().name),
        };
        for &id in cancelled {
            report
                .checks
                .push(CheckReport::cancelled(&self.policy.checks[id]));
        }
        report.checks.sort_by_key(|c| c.order);
        report.score = score;
        report.queue_id = self.queue_id.clone();
        self.runner.end_message();
        report
    }

    fn error_decision(&self, why: &str) -> Decision {
        let (verdict, reply) = match &self.pipeline().settings.error_action {
            ErrorAction::Tempfail(r) => (Verdict::Tempfail, r.clone()),
            ErrorAction::Reject(r) => (Verdict::Reject, r.clone()),
        };
        Decision::new(verdict, Some(reply), Some(why.to_string()))
    }

    /// Authentication-Results from the checks' fragments, in config order:
    /// headers that claim our authserv-id, however spelled, are deleted
    /// first and always (RFC 8601 §5: a sender could forge our verdicts,
    /// and whether our checks got an answer changes nothing about that);
    /// then ours goes on top, followed by extra trace headers checks asked
    /// for (Received-SPF). A check that reports a method but ended without
    /// a fragment (timed out, panicked) is shown as `method=temperror`.
    /// A check that asks for it gets the message's disposition (DMARC's
    /// `dis=`): `quarantine` when the message goes on hold, `none` when it
    /// is delivered (edits, and so this header, exist for nothing else;
    /// in dry run the message is delivered whatever the policy said).
    /// Returns the header added, for ARC sealing to copy.
    fn authentication_results(
        &self,
        pipeline: &Pipeline,
        message: &MessageState,
        decision: &Decision,
        checks: &[CheckId],
        edits: &mut EditList,
    ) -> Result<Option<AuthResults>, InvalidHeaderName> {
        let disposition = match decision.verdict() {
            Verdict::Quarantine if !pipeline.settings.dry_run => "quarantine",
            _ => "none",
        };
        let mut results = Vec::new();
        let mut extra = Vec::new();
        for &id in checks {
            if let Some(f) = self.runner.finished(id) {
                match (
                    &f.result.auth_results,
                    self.policy.checks[id].check.auth_method(),
                ) {
                    (Some(own), _) => {
                        let start = results.len();
                        results.extend(own.iter().cloned());
                        if f.result.auth_disposition {
                            add_disposition(&mut results[start..], disposition);
                        }
                    }
                    (None, Some(method)) => results.push(ResInfo::new(method, f.result.status)),
                    (None, None) => {}
                }
                extra.extend(f.result.add_headers.iter().cloned());
            }
        }
        // Extra trace headers (Received-SPF) do not depend on
        // Authentication-Results being on.
        for (name, value) in extra.iter().rev() {
            edits.insert_header(0, name, value)?;
        }
        let Some(authserv_id) = pipeline.settings.authserv_id.as_deref() else {
            return Ok(None);
        };
        edits.delete_headers_where("Authentication-Results", &message.content.headers, |v| {
            crate::auth_results::claims(v, authserv_id)
        });
        if results.is_empty() {
            return Ok(None);
        }
        let ours = AuthResults::new(authserv_id, results);
        // The daemon folds long values when it sends them.
        edits.insert_header(0, "Authentication-Results", &ours.to_string())?;
        Ok(Some(ours))
    }

    /// The edit list: sender, recipients, header modifiers, quarantine. Any
    /// failure returns an error and no edit at all is sent.
    fn build_edits(
        &self,
        pipeline: &Pipeline,
        decision: &Decision,
        checks: &[CheckId],
    ) -> Result<EditList, EditsError> {
        let message = self.message.as_ref().ok_or(EditsError::NoMessage)?;
        let mut edits = EditList::new();

        if message.sender.original() != message.original_sender.original() {
            edits.push(Edit::ChangeSender {
                address: message.sender.original().to_string(),
                args: None,
            });
        }

        let all_discard = message.recipients.iter().all(|r| {
            r.targets
                .iter()
                .all(|t| t.branch.outcome == Outcome::Discard)
        });
        // Recipients that stay as they are: never add them a second time.
        let mut present: HashSet<String> = message
            .recipients
            .iter()
            .filter(|r| r.unchanged())
            .map(|r| r.original.key())
            .collect();
        for r in &message.recipients {
            let delivered: Vec<&Target> = r
                .targets
                .iter()
                .filter(|t| all_discard || t.branch.outcome != Outcome::Discard)
                .collect();
            if !r.unchanged() || delivered.len() != r.targets.len() {
                // An alias that lists itself keeps its recipient: no delete
                // and re-add of the same address.
                let keeps_original = delivered.iter().any(|t| t.is_original(&r.original));
                if keeps_original {
                    present.insert(r.original.key());
                } else {
                    edits.push(Edit::DeleteRecipient {
                        address: r.original.original().to_string(),
                    });
                }
                // Each address that replaces the recipient keeps its
                // delivery-status parameters (RFC 3461 §6.2.7.3).
                for t in &delivered {
                    if !t.is_original(&r.original) && present.insert(t.address.key()) {
                        edits.push(Edit::AddRecipient {
                            address: t.address.original().to_string(),
                            args: r.kept_parameters.clone(),
                        });
                    }
                }
            }
            for t in &delivered {
                for copy in &t.branch.copy {
                    if present.insert(copy.key()) {
                        edits.push(Edit::AddRecipient {
                            address: copy.original().to_string(),
                            args: None,
                        });
                    }
                }
            }
        }

        let ours = self.authentication_results(pipeline, message, decision, checks, &mut edits)?;
        // Headers only we write: a copy the client sent would pass for our
        // own verdict with whoever reads the delivered message.
        let settings = &pipeline.settings;
        let quarantine_header = (pipeline.edit_kinds.quarantine
            && !settings.quarantine_header.is_empty())
        .then_some(settings.quarantine_header.as_str());
        let dry_run_header = settings.dry_run.then_some(DRY_RUN_HEADER);
        for name in [quarantine_header, dry_run_header].into_iter().flatten() {
            edits.delete_headers_named(name, &message.content.headers);
        }

        let envelope = self.envelope_of(message);
        let ctx = MessageContext {
            connection: &self.facts,
            envelope: &envelope,
            message: &message.content,
            queue_id: self.queue_id.as_deref(),
            pipeline: &pipeline.name,
            auth_results: ours.as_ref(),
        };
        for id in signers_last(&self.policy, eom_modifiers(pipeline, message)) {
            let instance = &self.policy.modifiers[id];
            instance
                .modifier
                .edit_message(&ctx, &mut edits)
                .map_err(|error| EditsError::Modifier {
                    modifier: instance.name.clone(),
                    error,
                })?;
        }

        if let Decision::Quarantine { reason } = decision {
            let reason = reason.clone().unwrap_or_default();
            edits.add_header(&pipeline.settings.quarantine_header, &reason)?;
            edits.push(Edit::Quarantine {
                reason: crate::edits::sanitize_value(&reason),
            });
        }
        Ok(edits)
    }
}

/// A body cut at `max_body_size`, refused when `oversize_action` says so.
fn size_decision(settings: &PipelineSettings, message: &MessageState) -> Option<Decision> {
    if !message.content.body_truncated {
        return None;
    }
    let (verdict, reply) = match settings.oversize_action {
        OversizeAction::Truncate => return None,
        OversizeAction::Tempfail => (
            Verdict::Tempfail,
            Reply::fixed(
                452,
                "4.3.1",
                "Message too big for the policy filter, try again later",
            ),
        ),
        OversizeAction::Reject => (
            Verdict::Reject,
            Reply::fixed(552, "5.3.4", "Message too big for the policy filter"),
        ),
    };
    Some(Decision::new(
        verdict,
        Some(reply),
        Some(format!(
            "body larger than max_body_size ({} bytes)",
            settings.max_body_size
        )),
    ))
}

/// `reject_score` or else `quarantine_score`, when the score reaches it.
fn score_decision(settings: &PipelineSettings, score: f64) -> Option<Decision> {
    if let Some(limit) = settings.reject_score
        && score >= limit
    {
        return Some(Decision::new(
            Verdict::Reject,
            Some(Reply::default_reject().with_text(&format!(
                "Message rejected by policy (score {score} reaches {limit})"
            ))),
            Some(format!("score {score} reaches reject_score {limit}")),
        ));
    }
    let limit = settings.quarantine_score.filter(|limit| score >= *limit)?;
    Some(Decision::new(
        Verdict::Quarantine,
        None,
        Some(format!("score {score} reaches quarantine_score {limit}")),
    ))
}

/// What the recipients ask for at end of message, in RCPT order: refusals
/// deferred to here (unreadable addresses, `refuse_at_eom`, dry run),
/// quarantine branches, and a discard when every branch discards.
fn recipient_decisions(message: &MessageState) -> Vec<Decision> {
    let mut out: Vec<Decision> = message
        .unreadable_recipients
        .iter()
        .map(|(address, reply)| {
            Decision::new(
                Verdict::Reject,
                Some(reply.clone()),
                Some(format!("recipient {address}")),
            )
        })
        .collect();
    for r in &message.recipients {
        match &r.would_refuse {
            Some(StageReply::Reject(reply)) => out.push(Decision::new(
                Verdict::Reject,
                Some(reply.clone()),
                Some(format!("recipient {}", r.original)),
            )),
            Some(StageReply::Tempfail(reply)) => out.push(Decision::new(
                Verdict::Tempfail,
                Some(reply.clone()),
                Some(format!("recipient {}", r.original)),
            )),
            Some(StageReply::Continue) | None => {}
        }
        for t in &r.targets {
            if let Outcome::Quarantine(reason) = &t.branch.outcome {
                out.push(Decision::new(
                    Verdict::Quarantine,
                    None,
                    Some(reason.clone()),
                ));
            }
        }
    }
    let all_discard = !message.recipients.is_empty()
        && message.recipients.iter().all(|r| {
            r.targets
                .iter()
                .all(|t| t.branch.outcome == Outcome::Discard)
        });
    if all_discard {
        out.push(Decision::new(
            Verdict::Discard,
            None,
            Some("discard".to_string()),
        ));
    }
    out
}

/// Dry run: accept, keep only the edits that change no delivery, and say
/// in a header what the policy would have done. Headers past the limit are
/// the exception: they were never seen, so no edit list can be trusted (a
/// forged Authentication-Results may stand among them), and the message is
/// refused even in dry run.
fn dry_run(
    settings: &PipelineSettings,
    policy_decision: &Decision,
    edits: EditList,
    header_limit: Option<Decision>,
) -> (Decision, EditList) {
    if let Some(refusal) = header_limit {
        return (refusal, EditList::new());
    }
    let mut kept = edits;
    kept.retain(|e| !e.changes_delivery() && !is_quarantine_header(e, settings));
    if policy_decision.verdict() != Verdict::Accept {
        let what = match policy_decision.reason() {
            Some(r) => format!("would {}: {r}", policy_decision.verdict()),
            None => format!("would {}", policy_decision.verdict()),
        };
        // The header text is built from check reasons: add_header sanitises it.
        if kept.add_header(DRY_RUN_HEADER, &what).is_err() {
            tracing::error!("dry-run header rejected");
        }
    }
    (Decision::accept(), kept)
}

/// What a message whose headers went past the pipeline's limits gets.
fn header_limit_decision(limits: crate::policy::HeaderLimits) -> Decision {
    let (verdict, reply) = match limits.action {
        LimitAction::Reject => (
            Verdict::Reject,
            Reply::fixed(552, "5.3.4", "Too many header fields or header bytes"),
        ),
        LimitAction::Tempfail => (
            Verdict::Tempfail,
            Reply::fixed(
                452,
                "4.3.1",
                "Too many header fields or header bytes, try again later",
            ),
        ),
    };
    Decision::new(
        verdict,
        Some(reply),
        Some(format!(
            "headers past max_headers ({}) or max_header_bytes ({} bytes)",
            limits.count, limits.bytes
        )),
    )
}

fn is_quarantine_header(e: &Edit, settings: &crate::policy::PipelineSettings) -> bool {
    matches!(e, Edit::AddHeader { name, .. } if *name == settings.quarantine_header)
}

/// Global, source, then each branch's modifiers in the order the branches
/// were first seen; each modifier once.
fn eom_modifiers(pipeline: &Pipeline, message: &MessageState) -> Vec<ModifierId> {
    let mut ids: Vec<ModifierId> = Vec::new();
    let mut push = |list: &[ModifierId]| {
        for id in list {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
    };
    push(&pipeline.modifiers);
    push(&message.source.modifiers);
    let mut seen = Vec::new();
    for r in &message.recipients {
        for t in &r.targets {
            if !seen.contains(&t.branch.id) {
                seen.push(t.branch.id);
                push(&t.branch.modifiers);
            }
        }
    }
    ids
}
/// DMARC's `dis=` (as OpenDMARC writes it) at the end of each result's
/// comment: `dmarc=pass (p=reject dis=none) header.from=example.org`.
fn add_disposition(results: &mut [ResInfo], disposition: &str) {
    for comment in results.iter_mut().filter_map(|r| r.comment.as_mut()) {
        comment.push_str(" dis=");
        comment.push_str(disposition);
    }
}

/// The same order with signers moved to the end (a stable partition), and
/// ARC sealing after DKIM signing: the seal must cover the new signature.
fn signers_last(policy: &Policy, ids: Vec<ModifierId>) -> Vec<ModifierId> {
    let (mut others, mut signers): (Vec<_>, Vec<_>) = ids
        .into_iter()
        .partition(|&id| !policy.modifiers[id].modifier.runs_last());
    signers.sort_by_key(|&id| policy.modifiers[id].kind == "arc_seal");
    others.extend(signers);
    others
}

#[cfg(test)]
mod tests {
    use super::{ResInfo, add_disposition};
    use crate::auth_results::{Property, Results, Status};

    #[test]
    fn the_disposition_ends_the_comment() {
        let from = Property::new("header", "from", "example.org");
        let mut results = vec![
            ResInfo::new("dmarc", Status::Pass)
                .with_comment("p=reject")
                .with_property(from.clone()),
            ResInfo::new("dmarc", Status::None).with_property(from),
        ];
        add_disposition(&mut results, "none");
        assert_eq!(
            Results(&results).to_string(),
            "dmarc=pass (p=reject dis=none) header.from=example.org; dmarc=none header.from=example.org"
        );
    }
}
