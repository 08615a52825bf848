//! What a pipeline does with a check result, as the configuration names it
//! (`on_fail = "reject"`). A check may suggest one for a status
//! (`Check::default_action`); the policy holds the one configured.

/// What to do with a check result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Nothing: the result does not change the verdict.
    Ignore,
    /// Refuse with a permanent error, the check's `reply` (5xx).
    Reject,
    /// Refuse with a temporary error, the check's `tempfail_reply` (4xx),
    /// so the client retries later.
    Tempfail,
    /// Accept the message but have the MTA hold it (Postfix hold queue,
    /// Sendmail quarantine); decided at end of message.
    Quarantine,

    /// Add to the message's score; `None` uses the score the check suggested.
    Score(Option<f64>),
    /// Whatever the pipeline's `error_action` says (the default for
    /// temperror and permerror).
    Error,
}

impl Action {
    /// The action's name for reports: static but for a score with a number.
    pub fn label(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Action::Ignore => "ignore".into(),
            Action::Reject => "reject".into(),
            Action::Tempfail => "tempfail".into(),
            Action::Quarantine => "quarantine".into(),
            Action::Score(Some(_)) => self.to_string().into(),
            Action::Score(None) => "score".into(),
            Action::Error => "error_action".into(),
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Ignore => f.write_str("ignore"),
            Action::Reject => f.write_str("reject"),
            Action::Tempfail => f.write_str("tempfail"),
            Action::Quarantine => f.write_str("quarantine"),
            Action::Score(Some(n)) => write!(f, "score {n}"),
            Action::Score(None) => f.write_str("score"),
            Action::Error => f.write_str("error_action"),
        }
    }
}
