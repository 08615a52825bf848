//! Stages whose reply the MTA does not wait for (SMFIP_NR_CONN, NR_HELO,
//! NR_MAIL, NR_RCPT), and the refusals met there. The daemon waives a
//! stage's reply only where the policy never refuses at it
//! (`Pipeline::compute_stage_use`), but an internal failure, an address that
//! cannot be read or a check that finished after its stage's deadline can
//! still refuse there. Such a refusal is kept and answered at the next stage
//! that replies (end of message always does), so nothing the daemon refused
//! is let through.

use crate::engine::{Decision, StageReply, Verdict};
use crate::policy::StageUse;
use crate::stage::Stage;
use indymilter::ProtoOpts;

/// A refusal decided at a stage that has no reply.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Deferred {
    /// Reject or tempfail, never continue.
    pub reply: StageReply,
    /// Where it was decided.
    pub stage: Stage,
}

impl Deferred {
    /// A refusal at connect or HELO holds for the whole SMTP session, as
    /// the MTA makes such a reply (Postfix: every later command refused);
    /// one at MAIL FROM or RCPT TO for its transaction only.
    pub fn session_wide(&self) -> bool {
        self.stage <= Stage::Helo
    }

    /// Whether the engine has no message to go on with: the session was
    /// refused, or the message ended at MAIL FROM. Later stages then answer
    /// the refusal without asking the engine.
    pub fn before_message(&self) -> bool {
        self.stage <= Stage::Mail
    }

    /// The refusal as an end-of-message decision, saying where it came from.
    pub fn decision(&self) -> Decision {
        let (verdict, reply) = match &self.reply {
            StageReply::Reject(r) => (Verdict::Reject, r.clone()),
            StageReply::Tempfail(r) => (Verdict::Tempfail, r.clone()),
            StageReply::Continue => return Decision::accept(),
        };
        Decision::new(
            verdict,
            Some(reply),
            Some(format!(
                "refused at {} (a stage without reply), answered at end of message",
                self.stage
            )),
        )
    }
}

fn severity(r: &StageReply) -> u8 {
    match r {
        StageReply::Continue => 0,
        StageReply::Tempfail(_) => 1,
        StageReply::Reject(_) => 2,
    }
}

/// Per connection: which stages the MTA does not wait for, and the refusal
/// still to be answered.
#[derive(Debug, Default)]
pub(crate) struct StageReplies {
    /// Connect, HELO, MAIL, RCPT: negotiated without reply.
    silent: [bool; 4],
    deferred: Option<Deferred>,
}

fn index(stage: Stage) -> Option<usize> {
    match stage {
        Stage::Connect => Some(0),
        Stage::Helo => Some(1),
        Stage::Mail => Some(2),
        Stage::Rcpt => Some(3),
        Stage::Eom => None,
    }
}

impl StageReplies {
    /// From the protocol options negotiated with the MTA.
    pub fn new(negotiated: ProtoOpts) -> StageReplies {
        StageReplies {
            silent: [
                negotiated.contains(ProtoOpts::NOREPLY_CONNECT),
                negotiated.contains(ProtoOpts::NOREPLY_HELO),
                negotiated.contains(ProtoOpts::NOREPLY_MAIL),
                negotiated.contains(ProtoOpts::NOREPLY_RCPT),
            ],
            deferred: None,
        }
    }

    /// Whether the MTA waits for the milter's reply at `stage`.
    pub fn answers(&self, stage: Stage) -> bool {
        index(stage).is_none_or(|i| !self.silent[i])
    }

    /// The stages this connection answers silently at which `policy_use`
    /// can refuse: a policy that would need them cannot serve this
    /// connection without a new negotiation.
    pub fn conflicts(&self, policy_use: StageUse) -> Vec<Stage> {
        Stage::ALL
            .into_iter()
            .filter(|&s| !self.answers(s) && policy_use.refuses_at(s))
            .collect()
    }

    /// The refusal kept from a stage without reply, if any.
    pub fn deferred(&self) -> Option<&Deferred> {
        self.deferred.as_ref()
    }

    /// What to answer at `stage` (not end of message), given what was
    /// decided there: the more severe of that and a refusal kept from an
    /// earlier stage (on a tie the earlier). `None` where the stage has no
    /// reply: then a refusal is kept for the next stage that replies.
    pub fn settle(&mut self, stage: Stage, reply: StageReply) -> Option<StageReply> {
        let answers = self.answers(stage);
        if !reply.is_continue() {
            let more_severe = self
                .deferred
                .as_ref()
                .is_none_or(|d| severity(&reply) > severity(&d.reply));
            if !answers && more_severe {
                tracing::info!(%stage, reply = ?reply, "refusal at a stage the MTA does not wait for; it is answered at the next stage that replies");
                // A session-wide refusal stays session-wide.
                let stage = match &self.deferred {
                    Some(d) if d.session_wide() => d.stage,
                    _ => stage,
                };
                self.deferred = Some(Deferred { reply, stage });
                return None;
            }
            if answers && more_severe {
                return Some(reply);
            }
        }
        if !answers {
            return None;
        }
        Some(self.deferred.as_ref().map_or(reply, |d| d.reply.clone()))
    }

    /// A new transaction (MAIL FROM), or the end of one (RSET, end of
    /// message): a refusal of the old transaction is forgotten, one of the
    /// session stays.
    pub fn end_transaction(&mut self) {
        if self.deferred.as_ref().is_some_and(|d| !d.session_wide()) {
            self.deferred = None;
        }
    }

    /// The SMTP session ended (QUIT, QUIT_NC): nothing stays.
    pub fn end_session(&mut self) {
        self.deferred = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Reply;

    fn all_silent() -> StageReplies {
        StageReplies::new(
            ProtoOpts::NOREPLY_CONNECT
                | ProtoOpts::NOREPLY_HELO
                | ProtoOpts::NOREPLY_MAIL
                | ProtoOpts::NOREPLY_RCPT,
        )
    }

    fn tempfail() -> StageReply {
        StageReply::Tempfail(Reply::default_tempfail())
    }

    fn reject() -> StageReply {
        StageReply::Reject(Reply::default_reject())
    }

    #[test]
    fn a_stage_with_a_reply_answers_what_it_decided() {
        let mut r = StageReplies::new(ProtoOpts::empty());
        assert!(r.answers(Stage::Connect) && r.answers(Stage::Rcpt) && r.answers(Stage::Eom));
        assert_eq!(r.settle(Stage::Mail, reject()), Some(reject()));
        assert_eq!(
            r.settle(Stage::Rcpt, StageReply::Continue),
            Some(StageReply::Continue)
        );
        assert_eq!(r.deferred(), None);
    }

    #[test]
    fn a_refusal_without_reply_is_answered_at_the_next_stage_that_replies() {
        let mut r = StageReplies::new(ProtoOpts::NOREPLY_MAIL);
        assert_eq!(r.settle(Stage::Mail, tempfail()), None);
        // Every recipient of the transaction is refused.
        assert_eq!(
            r.settle(Stage::Rcpt, StageReply::Continue),
            Some(tempfail())
        );
        assert_eq!(
            r.settle(Stage::Rcpt, StageReply::Continue),
            Some(tempfail())
        );
        // A more severe refusal of the stage itself wins.
        assert_eq!(r.settle(Stage::Rcpt, reject()), Some(reject()));
        assert!(r.deferred().is_some_and(|d| d.before_message()));
        // The next transaction starts clean.
        r.end_transaction();
        assert_eq!(
            r.settle(Stage::Rcpt, StageReply::Continue),
            Some(StageReply::Continue)
        );
    }

    #[test]
    fn the_most_severe_refusal_is_kept_and_a_session_refusal_stays() {
        let mut r = all_silent();
        assert_eq!(r.settle(Stage::Helo, tempfail()), None);
        assert_eq!(r.settle(Stage::Mail, StageReply::Continue), None);
        assert_eq!(r.settle(Stage::Rcpt, reject()), None);
        let d = r.deferred().cloned().expect("kept");
        assert_eq!(d.reply, reject());
        assert!(
            d.session_wide(),
            "a connect/HELO refusal holds for the session"
        );
        r.end_transaction();
        assert!(r.deferred().is_some(), "a new transaction does not lift it");
        assert_eq!(d.decision().verdict(), Verdict::Reject);
        r.end_session();
        assert_eq!(r.deferred(), None);
    }

    #[test]
    fn a_transaction_refusal_ends_with_its_transaction() {
        let mut r = all_silent();
        assert_eq!(r.settle(Stage::Rcpt, tempfail()), None);
        let d = r.deferred().cloned().expect("kept");
        assert!(!d.session_wide() && !d.before_message());
        assert_eq!(d.decision().verdict(), Verdict::Tempfail);
        r.end_transaction();
        assert_eq!(r.deferred(), None);
    }

    #[test]
    fn conflicts_name_silent_stages_a_policy_refuses_at() {
        let r = StageReplies::new(ProtoOpts::NOREPLY_CONNECT | ProtoOpts::NOREPLY_RCPT);
        let quiet = StageUse::default();
        assert!(r.conflicts(quiet).is_empty());
        let rcpt = StageUse {
            refuses_at_rcpt: true,
            refuses_at_mail: true,
            ..StageUse::default()
        };
        assert_eq!(r.conflicts(rcpt), vec![Stage::Rcpt]);
    }
}
