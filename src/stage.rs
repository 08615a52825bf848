//! The SMTP stages a milter sees, in the order they happen. Checks declare the
//! stage their inputs exist at and the stage whose decision needs them.

use serde::Serialize;
use std::fmt;

/// A stage of the SMTP transaction as the milter sees it, ordered as they happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The client connected.
    Connect,
    /// The client sent HELO or EHLO.
    Helo,
    /// The client sent MAIL FROM.
    Mail,
    /// The client sent a RCPT TO.
    Rcpt,
    /// End of message: the headers and body are in.
    Eom,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 5] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Eom,
    ];

    /// The stage's name as the config and reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Eom => "eom",
        }
    }

    /// The stage written `s`, if it is one of the names `as_str` gives.
    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
