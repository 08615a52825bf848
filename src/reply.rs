//! SMTP replies sent back through the MTA: a three-digit code, an RFC 3463
//! enhanced status code and text, validated together once at load time so a
//! 5xx never travels with a 4.x.x (Postfix and Sendmail refuse such pairs).

use serde::Serialize;
use std::fmt;

/// A validated SMTP reply: code, enhanced status code and text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reply {
    /// The three-digit reply code (RFC 5321 §4.2).
    pub code: u16,
    /// The enhanced status code, `X.Y.Z` (RFC 3463).
    pub status: String,
    /// The text after the codes, one line.
    pub text: String,
}

/// Whether a reply refuses for good or asks the client to try again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyClass {
    /// 5xx, for a reject.
    Permanent,
    /// 4xx, for a tempfail.
    Temporary,
}

impl ReplyClass {
    fn digit(self) -> char {
        match self {
            ReplyClass::Permanent => '5',
            ReplyClass::Temporary => '4',
        }
    }

    /// What a reply of this class is used for, in an error.
    fn used_for(self) -> &'static str {
        match self {
            ReplyClass::Permanent => "reject",
            ReplyClass::Temporary => "tempfail",
        }
    }
}

/// Why a code, enhanced status and text do not make a reply of a class.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not a reply code, or one of the other class.
    #[error(
        "reply code {code} does not fit a {}: use {}xx (for example {}50)",
        .class.used_for(), .class.digit(), .class.digit()
    )]
    Code {
        /// What the reply is for.
        class: ReplyClass,
        /// The code as written.
        code: u16,
    },
    /// Not three dot-separated numbers.
    #[error("enhanced status \"{status}\" is not of the form {}.X.Y (RFC 3463)", .class.digit())]
    MalformedStatus {
        /// What the reply is for.
        class: ReplyClass,
        /// The enhanced status as written.
        status: String,
    },
    /// Its class digit does not agree with the reply code.
    #[error("enhanced status \"{status}\" does not match reply code {code}: use {}.x.x", .class.digit())]
    StatusMismatch {
        /// What the reply is for.
        class: ReplyClass,
        /// The reply code as written.
        code: u16,
        /// The enhanced status as written.
        status: String,
    },
    /// The text would break the reply line.
    #[error("reply text must not contain CR, LF or NUL")]
    LineBreak,
}

impl Reply {
    /// Build and validate a reply. `class` is what the reply is used for
    /// (reject or tempfail); code and enhanced status must both agree with it.
    pub fn new(
        class: ReplyClass,
        code: u16,
        status: &str,
        text: &str,
    ) -> Result<Reply, ReplyError> {
        let digit = class.digit();
        if !(200..600).contains(&code) || !code.to_string().starts_with(digit) {
            return Err(ReplyError::Code { class, code });
        }
        let parts: Vec<&str> = status.split('.').collect();
        let well_formed = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if !well_formed {
            return Err(ReplyError::MalformedStatus {
                class,
                status: status.to_string(),
            });
        }
        if !status.starts_with(digit) {
            return Err(ReplyError::StatusMismatch {
                class,
                code,
                status: status.to_string(),
            });
        }
        if text.contains(['\r', '\n', '\0']) {
            return Err(ReplyError::LineBreak);
        }
        Ok(Reply {
            code,
            status: status.to_string(),
            text: text.to_string(),
        })
    }

    /// The reply for a reject when the configuration names none.
    pub(crate) fn default_reject() -> Reply {
        Reply::fixed(550, "5.7.1", "Message rejected by policy")
    }

    /// The reply for a tempfail when the configuration names none.
    pub(crate) fn default_tempfail() -> Reply {
        Reply::fixed(451, "4.7.1", "Temporary failure, try again later")
    }

    /// A reply built in code from constants known to be valid.
    pub(crate) fn fixed(code: u16, status: &str, text: &str) -> Reply {
        Reply {
            code,
            status: status.to_string(),
            text: text.to_string(),
        }
    }

    /// The same reply with a different text, stripped of CR, LF and NUL since the
    /// text may come from a check's reason.
    pub(crate) fn with_text(&self, text: &str) -> Reply {
        Reply {
            text: crate::edits::sanitize_value(text),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_and_status_must_agree() {
        assert!(Reply::new(ReplyClass::Permanent, 550, "5.1.1", "no such user").is_ok());
        assert!(Reply::new(ReplyClass::Temporary, 451, "4.7.1", "later").is_ok());
        let e = Reply::new(ReplyClass::Permanent, 550, "4.1.1", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match"), "{e}");
        let e = Reply::new(ReplyClass::Permanent, 450, "5.1.1", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit a reject"), "{e}");
        assert!(Reply::new(ReplyClass::Temporary, 550, "5.1.1", "x").is_err());
        assert!(Reply::new(ReplyClass::Permanent, 550, "5.1", "x").is_err());
        assert!(Reply::new(ReplyClass::Permanent, 550, "5.1.1", "a\r\nb").is_err());
        assert!(Reply::new(ReplyClass::Permanent, 999, "5.1.1", "x").is_err());
    }

    #[test]
    fn error_texts() {
        let text = |class, code, status: &str, text: &str| {
            Reply::new(class, code, status, text)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            text(ReplyClass::Temporary, 550, "4.1.1", "x"),
            "reply code 550 does not fit a tempfail: use 4xx (for example 450)"
        );
        assert_eq!(
            text(ReplyClass::Permanent, 550, "5.1", "x"),
            "enhanced status \"5.1\" is not of the form 5.X.Y (RFC 3463)"
        );
        assert_eq!(
            text(ReplyClass::Permanent, 550, "4.1.1", "x"),
            "enhanced status \"4.1.1\" does not match reply code 550: use 5.x.x"
        );
        assert_eq!(
            text(ReplyClass::Permanent, 550, "5.1.1", "a\nb"),
            "reply text must not contain CR, LF or NUL"
        );
    }
}
