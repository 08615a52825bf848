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
use crate::config::options::Options;
use crate::stage::Stage;
use regex::Regex;
use std::sync::Arc;

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

/// Read an optional status option. `Err` means it was present but invalid
/// (and the error is already reported).
fn status_option(options: &mut Options<'_, '_>, key: &'static str) -> Result<Option<Status>, ()> {
    let Some(raw) = options.value(key) else {
        return Ok(None);
    };
    if let Some(status) = raw.get_ref().as_str().and_then(parse_status) {
        return Ok(Some(status));
    }
    let allowed = Status::ALL
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let found = match raw.get_ref().as_str() {
        Some(s) => format!("\"{s}\""),
        None => format!("a {}", raw.get_ref().type_str()),
    };
    let msg = format!(
        "`{key}` in {} must be one of {allowed}, found {found}",
        options.what()
    );
    options.error(raw.span(), msg);
    Err(())
}

/// A field name is printable ASCII without a colon (RFC 5322 §3.6.8).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

impl HeaderCheck {
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let what = ctx.options.what().to_string();
        let mut ok = true;

        let header_present = ctx.options.value("header").is_some();
        let header = ctx.options.string("header");
        ok &= !header_present || header.is_some();
        if let Some(h) = &header
            && !valid_header_name(h.get_ref())
        {
            ctx.options.error(
                h.span(),
                format!(
                    "`header` in {what} must be a header name such as \"Subject\", without a colon or spaces, found {:?}",
                    h.get_ref()
                ),
            );
            ok = false;
        }

        let pattern_present = ctx.options.value("pattern").is_some();
        let pattern = ctx.options.regex("pattern");
        ok &= !pattern_present || pattern.is_some();

        let match_raw = ctx.options.value("match_result");
        let match_result = status_option(ctx.options, "match_result");
        let missing_raw = ctx.options.value("missing");
        let missing = status_option(ctx.options, "missing");
        ok &= match_result.is_ok() && missing.is_ok();

        let reason_present = ctx.options.value("reason").is_some();
        let reason = ctx.options.string("reason");
        ok &= !reason_present || reason.is_some();
        if let Some(r) = &reason
            && (r.get_ref().trim().is_empty() || r.get_ref().contains(|c: char| c.is_control()))
        {
            // The reason may go into an SMTP reply, which is one line.
            ctx.options.error(
                r.span(),
                format!("`reason` in {what} must be non-empty text on one line"),
            );
            ok = false;
        }

        if !pattern_present && !header_present {
            let span = ctx.options.span();
            ctx.options.error(
                span,
                format!("{what} needs `header`, `pattern` or both: `header` alone tests that the header is present"),
            );
            ok = false;
        }
        if let Some(raw) = &match_raw
            && !pattern_present
        {
            ctx.options.error(
                raw.span(),
                format!("`match_result` in {what} needs `pattern`; to act on the mere presence of the header, use pattern = \"\""),
            );
            ok = false;
        }
        if let Some(raw) = &missing_raw
            && !header_present
        {
            ctx.options.error(
                raw.span(),
                format!(
                    "`missing` in {what} needs `header`: name the header whose absence it is about"
                ),
            );
            ok = false;
        }

        if !ok {
            return None;
        }
        Some(Arc::new(HeaderCheck {
            header: header.map(|h| h.into_inner()),
            pattern,
            match_result: match_result.ok().flatten().unwrap_or(Status::Fail),
            missing: missing.ok().flatten().unwrap_or(Status::None),
            reason: reason.map(|r| r.into_inner().trim().to_string()),
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
        let e = build_err(
            HeaderCheck::build,
            "header = \"X\"\nmissing = \"fail\"\nreason = \"a\\r\\nb\"",
        );
        assert!(e.contains("`reason`"), "{e}");
    }
}
