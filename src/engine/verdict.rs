//! Verdicts and how they combine: the most severe wins (reject > tempfail >
//! quarantine > discard > accept); between equals, the earlier in the config.
//! And what a stage before end of message answers (`StageReply`).

use crate::reply::Reply;
use serde::Serialize;
use std::fmt;

/// What happens to a message or a recipient, ordered by severity so that the
/// greatest of several wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Deliver.
    Accept,
    /// Drop the message for good. Below quarantine: when one part of the
    /// policy wants the mail kept on hold, it is kept.
    Discard,
    /// Accept, and hold in the MTA's quarantine (Postfix's hold queue).
    Quarantine,
    /// Refuse with a 4xx reply, so the client retries.
    Tempfail,
    /// Refuse with a 5xx reply.
    Reject,
}

impl Verdict {
    /// The lower-case word used in logs, reports and the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Discard => "discard",
            Verdict::Quarantine => "quarantine",
            Verdict::Tempfail => "tempfail",
            Verdict::Reject => "reject",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verdict with what goes with it. A refusal always carries the reply the
/// client gets, so no reader has to invent one; the reason says what
/// decided (for quarantine: the reason the MTA records).
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Deliver.
    Accept,
    /// Accept and drop the message for good.
    Discard {
        /// What decided it, for the logs.
        reason: Option<String>,
    },
    /// Accept and hold the message in the MTA's quarantine.
    Quarantine {
        /// The reason the MTA records with the quarantine.
        reason: Option<String>,
    },
    /// Refuse with a 4xx reply, so the client retries.
    Tempfail {
        /// The reply the client gets.
        reply: Reply,
        /// What decided it, for the logs.
        reason: Option<String>,
    },
    /// Refuse with a 5xx reply.
    Reject {
        /// The reply the client gets.
        reply: Reply,
        /// What decided it, for the logs.
        reason: Option<String>,
    },
}

impl Decision {
    /// A plain accept, with no reason.
    pub fn accept() -> Decision {
        Decision::Accept
    }

    /// `verdict` with the reply the policy names for it; a refusal without
    /// one gets the default reply of its kind, and the reply of anything
    /// else is dropped (only a refusal is answered with one). An accept
    /// keeps no reason.
    pub fn new(verdict: Verdict, reply: Option<Reply>, reason: Option<String>) -> Decision {
        match verdict {
            Verdict::Accept => Decision::Accept,
            Verdict::Discard => Decision::Discard { reason },
            Verdict::Quarantine => Decision::Quarantine { reason },
            Verdict::Tempfail => Decision::Tempfail {
                reply: reply.unwrap_or_else(Reply::default_tempfail),
                reason,
            },
            Verdict::Reject => Decision::Reject {
                reply: reply.unwrap_or_else(Reply::default_reject),
                reason,
            },
        }
    }

    /// The verdict alone, without reply or reason.
    pub fn verdict(&self) -> Verdict {
        match self {
            Decision::Accept => Verdict::Accept,
            Decision::Discard { .. } => Verdict::Discard,
            Decision::Quarantine { .. } => Verdict::Quarantine,
            Decision::Tempfail { .. } => Verdict::Tempfail,
            Decision::Reject { .. } => Verdict::Reject,
        }
    }

    /// The reply of a refusal; `None` for anything else.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Decision::Tempfail { reply, .. } | Decision::Reject { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// What decided this, if known; an accept has none.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Decision::Accept => None,
            Decision::Discard { reason }
            | Decision::Quarantine { reason }
            | Decision::Tempfail { reason, .. }
            | Decision::Reject { reason, .. } => reason.as_deref(),
        }
    }

    /// Keep the more severe of the two; on a tie keep `self` (the earlier).
    pub(crate) fn merge(&mut self, other: Decision) {
        if other.verdict() > self.verdict() {
            *self = other;
        }
    }
}

/// Written as it always was: `{"verdict": ..., "reply": ..., "reason": ...}`,
/// the last two only when there is one (the `test --json` output and the
/// reports).
impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let fields = 1 + usize::from(self.reply().is_some()) + usize::from(self.reason().is_some());
        let mut out = serializer.serialize_struct("Decision", fields)?;
        out.serialize_field("verdict", &self.verdict())?;
        if let Some(reply) = self.reply() {
            out.serialize_field("reply", reply)?;
        }
        if let Some(reason) = self.reason() {
            out.serialize_field("reason", reason)?;
        }
        out.end()
    }
}

/// The answer to a stage before end of message.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum StageReply {
    /// Go on to the next stage: nothing refused yet.
    Continue,
    /// Refuse with this 5xx reply.
    Reject(Reply),
    /// Refuse with this 4xx reply, so the client retries.
    Tempfail(Reply),
}

impl StageReply {
    pub(crate) fn from_decision(d: &Decision) -> StageReply {
        match d {
            Decision::Reject { reply, .. } => StageReply::Reject(reply.clone()),
            Decision::Tempfail { reply, .. } => StageReply::Tempfail(reply.clone()),
            _ => StageReply::Continue,
        }
    }

    /// Whether the stage lets the transaction go on.
    pub fn is_continue(&self) -> bool {
        matches!(self, StageReply::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: Verdict, reason: &str) -> Decision {
        Decision::new(v, None, Some(reason.into()))
    }

    #[test]
    fn severity_order_and_ties_keep_the_first() {
        assert!(Verdict::Reject > Verdict::Tempfail);
        assert!(Verdict::Tempfail > Verdict::Quarantine);
        assert!(Verdict::Quarantine > Verdict::Discard);
        assert!(Verdict::Discard > Verdict::Accept);
        let mut acc = Decision::accept();
        acc.merge(d(Verdict::Quarantine, "first"));
        acc.merge(d(Verdict::Quarantine, "second"));
        assert_eq!(acc.reason(), Some("first"));
        acc.merge(d(Verdict::Reject, "r"));
        acc.merge(d(Verdict::Tempfail, "t"));
        assert_eq!(acc.verdict(), Verdict::Reject);
    }

    #[test]
    fn a_refusal_always_has_its_reply_and_nothing_else_has_one() {
        let custom = Reply::fixed(554, "5.7.1", "No");
        let r = Decision::new(Verdict::Reject, Some(custom.clone()), None);
        assert_eq!(r.reply(), Some(&custom));
        let r = Decision::new(Verdict::Reject, None, None);
        assert_eq!(r.reply(), Some(&Reply::default_reject()));
        let t = Decision::new(Verdict::Tempfail, None, Some("why".into()));
        assert_eq!(t.reply(), Some(&Reply::default_tempfail()));
        assert_eq!(
            StageReply::from_decision(&t),
            StageReply::Tempfail(Reply::default_tempfail())
        );
        let q = Decision::new(Verdict::Quarantine, Some(custom), Some("held".into()));
        assert_eq!((q.reply(), q.reason()), (None, Some("held")));
        assert_eq!(
            Decision::new(Verdict::Accept, None, Some("x".into())),
            Decision::Accept
        );
    }

    #[test]
    fn serialized_as_verdict_reply_and_reason() {
        let r = Decision::new(Verdict::Reject, None, Some("dnsbl: listed".into()));
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["verdict"], "reject");
        assert_eq!(v["reply"]["code"], 550);
        assert_eq!(v["reason"], "dnsbl: listed");
        assert_eq!(
            serde_json::to_string(&Decision::Accept).expect("json"),
            r#"{"verdict":"accept"}"#
        );
    }
}
