//! Verdicts and how they combine: the most severe wins (reject > tempfail >
//! quarantine > discard > accept); between equals, the earlier in the config.
//! And what a stage before end of message answers (`StageReply`).

use crate::reply::Reply;
use serde::Serialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    /// Drop the message for good. Below quarantine: when one part of the
    /// policy wants the mail kept on hold, it is kept.
    Discard,
    Quarantine,
    Tempfail,
    Reject,
}

impl Verdict {
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

/// A verdict with the reply or reason that goes with it, and who decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<crate::reply::Reply>,
    /// For quarantine: the reason; otherwise what decided, for logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Decision {
    pub fn accept() -> Decision {
        Decision {
            verdict: Verdict::Accept,
            reply: None,
            reason: None,
        }
    }

    /// Keep the more severe of the two; on a tie keep `self` (the earlier).
    pub fn merge(&mut self, other: Decision) {
        if other.verdict > self.verdict {
            *self = other;
        }
    }
}

/// The answer to a stage before end of message.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum StageReply {
    Continue,
    Reject(Reply),
    Tempfail(Reply),
}

impl StageReply {
    pub(super) fn from_decision(d: &Decision) -> StageReply {
        match d.verdict {
            Verdict::Reject => {
                StageReply::Reject(d.reply.clone().unwrap_or_else(Reply::default_reject))
            }
            Verdict::Tempfail => {
                StageReply::Tempfail(d.reply.clone().unwrap_or_else(Reply::default_tempfail))
            }
            _ => StageReply::Continue,
        }
    }

    pub fn is_continue(&self) -> bool {
        matches!(self, StageReply::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: Verdict, reason: &str) -> Decision {
        Decision {
            verdict: v,
            reply: None,
            reason: Some(reason.into()),
        }
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
        assert_eq!(acc.reason.as_deref(), Some("first"));
        acc.merge(d(Verdict::Reject, "r"));
        acc.merge(d(Verdict::Tempfail, "t"));
        assert_eq!(acc.verdict, Verdict::Reject);
    }
}
