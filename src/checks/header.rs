//! The `header` check: matches a regex against one named header (or against
//! every header as "Name: value"), or tests that a header is present.
//!
//! Options: `header` (header name; absent means every header), `pattern`
//! (regex, tested against the unfolded value), `match_result` (status on a
//! match, default "fail"), `missing` (status when the named header is absent,
//! default "none"; needs `header`), `reason` (text for a match or a missing
//! header). Without `pattern` only presence is tested and `header` is
//! required. When nothing matches the result is pass. `header` compares
//! case-insensitively; patterns are case-sensitive unless they use `(?i)`.

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::edits::valid_header_name;
use crate::stage::Stage;
use regex::Regex;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::sync::Arc;

/// `[checks.NAME]` with `kind = "header"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderOptions {
    header: Option<String>,
    pattern: Option<String>,
    match_result: Option<StatusName>,
    missing: Option<StatusName>,
    reason: Option<String>,
}

/// The `header` check: a regex against one header or all, or a test that a
/// header is present.
pub struct HeaderCheck {
    /// `None` means every header, matched as "Name: value".
    header: Option<String>,
    pattern: Option<Regex>,
    match_result: Status,
    missing: Status,
    reason: Option<String>,
}

/// Parse a status name as written in the configuration.
pub fn parse_status(s: &str) -> Option<Status> {
    Status::ALL.into_iter().find(|st| st.as_str() == s)
}

/// A status written by its name, "fail" or "softfail": the names of
/// [`Status`], which lives with Authentication-Results and knows no serde.
struct StatusName(Status);

impl<'de> Deserialize<'de> for StatusName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let names: Vec<String> = Status::ALL.iter().map(|s| format!("\"{s}\"")).collect();
                write!(f, "one of {}", names.join(", "))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusName, E> {
                parse_status(v)
                    .map(StatusName)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

impl HeaderCheck {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let options: HeaderOptions = ctx.options.parse()?;
        let what = ctx.options.what().to_string();
        let mut ok = true;

        if let Some(h) = &options.header
            && !valid_header_name(h)
        {
            ctx.options.invalid(
                "header",
                format!("must be a header name such as \"Subject\", without a colon or spaces, found {h:?}"),
            );
            ok = false;
        }

        let pattern = match &options.pattern {
            Some(p) => {
                let re = ctx.options.compile_regex("pattern", p);
                ok &= re.is_some();
                re
            }
            None => None,
        };

        if let Some(r) = &options.reason
            && (r.trim().is_empty() || r.contains(|c: char| c.is_control()))
        {
            // The reason may go into an SMTP reply, which is one line.
            ctx.options
                .invalid("reason", "must be non-empty text on one line");
            ok = false;
        }

        if options.pattern.is_none() && options.header.is_none() {
            let span = ctx.options.span();
            ctx.options.error(
                span,
                format!("{what} needs `header`, `pattern` or both: `header` alone tests that the header is present"),
            );
            ok = false;
        }
        if options.match_result.is_some() && options.pattern.is_none() {
            ctx.options.invalid(
                "match_result",
                "needs `pattern`; to act on the mere presence of the header, use pattern = \"\"",
            );
            ok = false;
        }
        if options.missing.is_some() && options.header.is_none() {
            ctx.options.invalid(
                "missing",
                "needs `header`: name the header whose absence it is about",
            );
            ok = false;
        }

        if !ok {
            return None;
        }
        Some(Arc::new(HeaderCheck {
            header: options.header,
            pattern,
            match_result: options.match_result.map_or(Status::Fail, |s| s.0),
            missing: options.missing.map_or(Status::None, |s| s.0),
            reason: options.reason.map(|r| r.trim().to_string()),
        }))
    }

    fn result(&self, status: Status, default_reason: String) -> CheckResult {
        let reason = self.reason.clone().unwrap_or(default_reason);
        CheckResult::with_reason(status, reason)
    }

    fn decide(&self, input: &CheckInput) -> CheckResult {
        let Some(message) = &input.message else {
            return CheckResult::permerror("the message headers are not available");
        };
        match &self.header {
            Some(name) => {
                let mut seen = false;
                for value in message.header_values(name) {
                    seen = true;
                    if let Some(re) = &self.pattern
                        && re.is_match(&crate::message::unfold(value))
                    {
                        return self.result(self.match_result, format!("header {name:?} matched"));
                    }
                }
                if !seen {
                    return self.result(self.missing, format!("header {name:?} missing"));
                }
                CheckResult::pass()
            }
            None => {
                let Some(re) = &self.pattern else {
                    // The builder refuses this combination.
                    return CheckResult::permerror("header check without header or pattern");
                };
                for h in &message.headers {
                    let line = format!("{}: {}", h.name(), crate::message::unfold(h.value()));
                    if re.is_match(&line) {
                        // Debug quoting keeps a name sent by the client on one line.
                        return self
                            .result(self.match_result, format!("header {:?} matched", h.name()));
                    }
                }
                CheckResult::pass()
            }
        }
    }
}

impl Check for HeaderCheck {
    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.decide(&input) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::require_tls::tests::{build_err, build_ok, input, run};
    use crate::message::{Header, Message, unfold};

    fn with_headers(headers: &[(&str, &str)]) -> CheckInput {
        let mut i = input(Stage::Eom);
        i.message = Some(Arc::new(Message {
            headers: headers
                .iter()
                .map(|(n, v)| Header::new(n.to_string(), v.to_string()))
                .collect(),
            ..Message::default()
        }));
        i
    }

    #[test]
    fn unfolding() {
        assert_eq!(unfold("a\r\n b"), "a b");
        assert_eq!(unfold("a\n\tb\r\n  c"), "a\tb  c");
        assert_eq!(unfold("a\r\nb"), "a\r\nb");
        assert_eq!(unfold("plain"), "plain");
    }

    proptest::proptest! {
        /// Folding a value (a line break before white space, LF or CRLF as
        /// the MTA passes it) and unfolding it gives the value back.
        #[test]
        fn unfold_undoes_folding(
            lines in proptest::collection::vec("[a-z:;=()\\r]{0,12}", 1..6),
            folds in proptest::collection::vec(("(\r\n|\n)", "[ \t]{1,2}"), 6),
        ) {
            let (mut folded, mut unfolded) = (lines[0].clone(), lines[0].clone());
            for (line, (brk, ws)) in lines[1..].iter().zip(&folds) {
                folded.push_str(&format!("{brk}{ws}{line}"));
                unfolded.push_str(&format!("{ws}{line}"));
            }
            // A lone CR at the end of a line would join the break that
            // follows it: not something an MTA passes.
            proptest::prop_assume!(!folded.contains("\r\r") && !lines.iter().any(|l| l.ends_with('\r')));
            proptest::prop_assert_eq!(unfold(&folded), unfolded);
        }
    }

    #[test]
    fn status_names() {
        for s in Status::ALL {
            assert_eq!(parse_status(s.as_str()), Some(s));
        }
        assert_eq!(parse_status("reject"), None);
        assert_eq!(parse_status("Fail"), None);
    }

    #[tokio::test]
    async fn named_header_pattern() {
        let check = build_ok(
            HeaderCheck::build,
            "header = \"subject\"\npattern = \"(?i)viagra\"",
        );
        assert_eq!(check.inputs(), Stage::Eom);
        let r = run(&check, with_headers(&[("Subject", "cheap\r\n VIAGRA now")])).await;
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.reason.as_deref(), Some("header \"subject\" matched"));
        let r = run(&check, with_headers(&[("Subject", "hello")])).await;
        assert_eq!(r, CheckResult::pass());
        // Absent header: `missing` defaults to none.
        let r = run(&check, with_headers(&[("From", "viagra@x")])).await;
        assert_eq!(r.status, Status::None);
    }

    #[tokio::test]
    async fn folding_is_undone_before_matching() {
        let check = build_ok(
            HeaderCheck::build,
            "header = \"X-Tag\"\npattern = \"^one two$\"",
        );
        let r = run(&check, with_headers(&[("X-Tag", "one\n two")])).await;
        assert_eq!(r.status, Status::Fail);
    }

    #[tokio::test]
    async fn every_header_is_matched_as_name_and_value() {
        let check = build_ok(
            HeaderCheck::build,
            "pattern = \"^X-Mailer: .*Spam\"\nmatch_result = \"softfail\"\nreason = \"bulk mailer\"",
        );
        let r = run(
            &check,
            with_headers(&[("Subject", "X-Mailer: Spam"), ("x-mailer", "SpamCannon")]),
        )
        .await;
        // Only the second header starts with the name; the regex is case
        // sensitive, so the lowercase name must not match either.
        assert_eq!(r, CheckResult::pass());
        let r = run(&check, with_headers(&[("X-Mailer", "Spam\r\n\tCannon 2")])).await;
        assert_eq!(r, CheckResult::with_reason(Status::Softfail, "bulk mailer"));
    }

    #[tokio::test]
    async fn presence_test_with_missing_status() {
        let check = build_ok(
            HeaderCheck::build,
            "header = \"Date\"\nmissing = \"fail\"\nreason = \"a Date header is required\"",
        );
        let r = run(&check, with_headers(&[("Subject", "x")])).await;
        assert_eq!(
            r,
            CheckResult::with_reason(Status::Fail, "a Date header is required")
        );
        let r = run(&check, with_headers(&[("DATE", "Mon, 1 Jan 2024")])).await;
        assert_eq!(r, CheckResult::pass());
    }

    #[tokio::test]
    async fn match_result_can_be_any_status() {
        let check = build_ok(
            HeaderCheck::build,
            "header = \"X-Trusted\"\npattern = \"^yes$\"\nmatch_result = \"pass\"\nmissing = \"neutral\"",
        );
        let r = run(&check, with_headers(&[("X-Trusted", "yes")])).await;
        assert_eq!(r.status, Status::Pass);
        let r = run(&check, with_headers(&[])).await;
        assert_eq!(r.status, Status::Neutral);
    }

    #[test]
    fn config_errors() {
        let e = build_err(HeaderCheck::build, "");
        assert!(e.contains("needs `header`"), "{e}");
        let e = build_err(HeaderCheck::build, "pattern = \"x\"\nmissing = \"fail\"");
        assert!(
            e.contains("`missing`") && e.contains("needs `header`"),
            "{e}"
        );
        let e = build_err(
            HeaderCheck::build,
            "header = \"X\"\nmatch_result = \"fail\"",
        );
        assert!(e.contains("needs `pattern`"), "{e}");
        let e = build_err(
            HeaderCheck::build,
            "header = \"X\"\npattern = \"x\"\nmatch_result = \"reject\"",
        );
        assert!(e.contains("\"reject\""), "{e}");
        assert!(e.contains("\"softfail\""), "{e}");
        let e = build_err(HeaderCheck::build, "header = \"X\"\npattern = \"(\"");
        assert!(e.contains("invalid regex"), "{e}");
        let e = build_err(HeaderCheck::build, "header = \"X-Bad:\"");
        assert!(e.contains("`header`"), "{e}");
        // The rule add_header and remove_header use too: no space either.
        let e = build_err(HeaderCheck::build, "header = \"X Bad\"");
        assert!(e.contains("found \"X Bad\""), "{e}");
        let e = build_err(
            HeaderCheck::build,
            "header = \"X\"\nmissing = \"fail\"\nreason = \"a\\r\\nb\"",
        );
        assert!(e.contains("`reason`"), "{e}");
    }
}
