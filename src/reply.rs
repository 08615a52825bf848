//! SMTP replies sent back through the MTA: a three-digit code, an RFC 3463
//! enhanced status code and text, validated together once at load time so a
//! 5xx never travels with a 4.x.x (Postfix and Sendmail refuse such pairs).

use serde::Serialize;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reply {
    pub code: u16,
    pub status: String,
    pub text: String,
}

/// Whether a reply refuses for good or asks the client to try again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyClass {
    Permanent,
    Temporary,
}

impl ReplyClass {
    fn digit(self) -> char {
        match self {
            ReplyClass::Permanent => '5',
            ReplyClass::Temporary => '4',
        }
    }
}

impl Reply {
    /// Build and validate a reply. `class` is what the reply is used for
    /// (reject or tempfail); code and enhanced status must both agree with it.
    pub fn new(class: ReplyClass, code: u16, status: &str, text: &str) -> Result<Reply, String> {
        let digit = class.digit();
        let what = match class {
            ReplyClass::Permanent => "reject",
            ReplyClass::Temporary => "tempfail",
        };
        if !(200..600).contains(&code) || !code.to_string().starts_with(digit) {
            return Err(format!(
                "reply code {code} does not fit a {what}: use {digit}xx (for example {digit}50)"
            ));
        }
        let parts: Vec<&str> = status.split('.').collect();
        let well_formed = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if !well_formed {
            return Err(format!(
                "enhanced status \"{status}\" is not of the form {digit}.X.Y (RFC 3463)"
            ));
        }
        if !status.starts_with(digit) {
            return Err(format!(
                "enhanced status \"{status}\" does not match reply code {code}: use {digit}.x.x"
            ));
        }
        if text.contains(['\r', '\n', '\0']) {
            return Err("reply text must not contain CR, LF or NUL".to_string());
        }
        Ok(Reply {
            code,
            status: status.to_string(),
            text: text.to_string(),
        })
    }

    pub fn default_reject() -> Reply {
        Reply::fixed(550, "5.7.1", "Message rejected by policy")
    }

    pub fn default_tempfail() -> Reply {
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

    pub fn class(&self) -> ReplyClass {
        if self.code >= 500 {
            ReplyClass::Permanent
        } else {
            ReplyClass::Temporary
        }
    }

    /// The same reply with a different text, stripped of CR, LF and NUL since the
    /// text may come from a check's reason.
    pub fn with_text(&self, text: &str) -> Reply {
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
        let e = Reply::new(ReplyClass::Permanent, 550, "4.1.1", "x").unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let e = Reply::new(ReplyClass::Permanent, 450, "5.1.1", "x").unwrap_err();
        assert!(e.contains("does not fit a reject"), "{e}");
        assert!(Reply::new(ReplyClass::Temporary, 550, "5.1.1", "x").is_err());
        assert!(Reply::new(ReplyClass::Permanent, 550, "5.1", "x").is_err());
        assert!(Reply::new(ReplyClass::Permanent, 550, "5.1.1", "a\r\nb").is_err());
        assert!(Reply::new(ReplyClass::Permanent, 999, "5.1.1", "x").is_err());
    }
}
