//! What happened to one message, for the log line and the `test` command:
//! each check with its result, action and time, each recipient with its
//! branch and reply, and the score.

use super::runner::Finished;
use super::verdict::StageReply;
use crate::address::Address;
use crate::policy::{CheckInstance, MatchedBy};
use crate::reply::Reply;
use crate::stage::Stage;
use serde::Serialize;
use std::borrow::Cow;
use std::sync::Arc;

/// One check's part in a message: its result, what that did, and how long it took.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Shared with the check's configuration: a report costs no copy of it.
    #[serde(serialize_with = "as_str")]
    pub name: Arc<str>,
    /// The check's kind, such as `"spf"`.
    #[serde(serialize_with = "as_str")]
    pub kind: Arc<str>,
    /// pass, fail, ..., or `cancelled` when a reject made it moot.
    pub result: &'static str,
    /// The check's own explanation of its result, if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the result did under the check's config: `ignore`, `reject`, `score`, ...
    pub action: Cow<'static, str>,
    /// The points the result added to the message's score, when its action scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The stage the check started at and the stage its result was used at.
    pub started: Stage,
    /// The stage its result was used at.
    pub decided: Stage,
    /// How long the check ran, in milliseconds (to the microsecond).
    pub elapsed_ms: f64,
    /// Position in the config, to list checks in a stable order.
    #[serde(skip)]
    pub order: usize,
}

fn as_str<S: serde::Serializer>(value: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value)
}

impl CheckReport {
    pub(crate) fn finished(instance: &CheckInstance, f: &Finished, decided: Stage) -> CheckReport {
        let action = instance.action_for(f.result.status);
        CheckReport {
            name: instance.name.clone(),
            kind: instance.kind.clone(),
            result: f.result.status.as_str(),
            reason: f.result.reason.clone(),
            action: action.label(),
            score: match action {
                crate::checks::action::Action::Score(n) => n.or(f.result.score),
                _ => None,
            },
            started: f.started_at,
            decided,
            elapsed_ms: (f.elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            order: f.id,
        }
    }

    pub(crate) fn cancelled(instance: &CheckInstance) -> CheckReport {
        CheckReport {
            name: instance.name.clone(),
            kind: instance.kind.clone(),
            result: "cancelled",
            reason: Some("another check already rejected the message".to_string()),
            action: "ignore".into(),
            score: None,
            started: instance.inputs,
            decided: Stage::Eom,
            elapsed_ms: 0.0,
            order: usize::MAX,
        }
    }
}

/// One recipient of a message: the branch it took and what it got.
#[derive(Clone, Debug, Serialize)]
pub struct RecipientReport {
    /// As given at RCPT TO.
    pub address: String,
    /// accept, reject, tempfail, split (452 4.5.3 under split_transactions)
    /// or error.
    pub outcome: String,
    /// The destination branches it took, as their config labels joined by ", ".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// How the (first) branch was chosen: `address`, `domain`, `table` or `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_by: Option<String>,
    /// The reply it got at RCPT TO or end of message, when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// Where the mail goes after rewrites, aliases and redirect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delivered_to: Vec<String>,
    /// The addresses a `copy` sent the message to as well.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<String>,
}

impl RecipientReport {
    /// A recipient refused because its address could not be read, shown
    /// escaped as the client wrote it.
    pub(crate) fn unreadable(shown: String, reply: &Reply) -> RecipientReport {
        RecipientReport {
            address: shown,
            outcome: "reject".to_string(),
            branch: None,
            matched_by: None,
            reply: Some(reply.clone()),
            delivered_to: Vec::new(),
            copies: Vec::new(),
        }
    }

    pub(crate) fn new(
        original: &Address,
        branch: Option<String>,
        matched_by: Option<MatchedBy>,
        reply: &StageReply,
        outcome: &str,
        delivered_to: Vec<String>,
    ) -> RecipientReport {
        let reply = match reply {
            StageReply::Continue => None,
            StageReply::Reject(r) | StageReply::Tempfail(r) => Some(r.clone()),
        };
        RecipientReport {
            address: original.to_string(),
            outcome: outcome.to_string(),
            branch,
            matched_by: matched_by.map(|m| m.as_str().to_string()),
            reply,
            delivered_to,
            copies: Vec::new(),
        }
    }
}

/// What happened to one message, as the log line and `test` show it.
#[derive(Clone, Debug, Serialize)]
pub struct MessageReport {
    /// The name of the pipeline that ran.
    pub pipeline: String,
    /// The MTA's queue id, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    /// The envelope sender as given at MAIL FROM.
    pub sender: String,
    /// The sender after rewrites, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_rewritten: Option<String>,
    /// The source block that applied, as its config label.
    pub source: String,
    /// How the source was chosen: `auth user`, `network`, `daemon name`, `address`, ...
    pub source_matched_by: String,
    /// Set when MAIL FROM itself was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail_reply: Option<StageReply>,
    /// Every recipient given at RCPT TO, in order.
    pub recipients: Vec<RecipientReport>,
    /// Every check that ran or was due, in config order.
    pub checks: Vec<CheckReport>,
    /// The total score: the sum of what the scoring checks added.
    pub score: f64,
}

impl MessageReport {
    /// What happened to a message that never reached end of message:
    /// refused at MAIL, refused for every recipient, or abandoned.
    pub fn ended_verdict(&self) -> &'static str {
        match &self.mail_reply {
            Some(StageReply::Reject(_)) => return "reject",
            Some(StageReply::Tempfail(_)) => return "tempfail",
            _ => {}
        }
        let accepted = self.recipients.iter().any(|r| r.outcome == "accept");
        if self.recipients.is_empty() || accepted {
            "aborted"
        } else if self.recipients.iter().any(|r| r.outcome == "reject") {
            "reject"
        } else {
            "tempfail"
        }
    }

    /// The report of a message that reached no source: no sender it could
    /// be dispatched by (unreadable, or the message state was lost).
    pub(crate) fn unrouted(pipeline: &str) -> MessageReport {
        MessageReport::new(
            pipeline,
            &Address::Null,
            &Address::Null,
            "",
            MatchedBy::Default,
        )
    }

    pub(crate) fn new(
        pipeline: &str,
        sender: &Address,
        rewritten: &Address,
        source: &str,
        matched: MatchedBy,
    ) -> MessageReport {
        MessageReport {
            pipeline: pipeline.to_string(),
            queue_id: None,
            sender: sender.to_string(),
            sender_rewritten: (rewritten.original() != sender.original())
                .then(|| rewritten.to_string()),
            source: source.to_string(),
            source_matched_by: matched.as_str().to_string(),
            mail_reply: None,
            recipients: Vec::new(),
            checks: Vec::new(),
            score: 0.0,
        }
    }
}
