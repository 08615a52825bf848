//! One structured line per message: queue id, client, pipeline, sender, each
//! recipient with its outcome, each check with result, action and time, and
//! the verdict. Text or JSON depending on the subscriber the daemon set up.

use crate::engine::{MessageOutcome, MessageReport, StageReply};
use std::fmt::Write as _;
use std::time::Instant;

/// `alice@example.org=accept nobody@example.org=reject(550)`.
pub(crate) fn recipients_field(report: &MessageReport) -> String {
    let mut out = String::new();
    for r in &report.recipients {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{}={}", r.address, r.outcome);
        if let Some(reply) = &r.reply {
            let _ = write!(out, "({})", reply.code);
        }
    }
    out
}

/// `spf=pass/ignore/1.2ms dnsbl=fail/reject/20.0ms`.
pub(crate) fn checks_field(report: &MessageReport) -> String {
    let mut out = String::new();
    for c in &report.checks {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(
            out,
            "{}={}/{}/{:.1}ms",
            c.name, c.result, c.action, c.elapsed_ms
        );
    }
    out
}

pub(crate) fn log_message(
    client: &str,
    verdict: &str,
    outcome: &MessageOutcome,
    dry_run_overrode: bool,
    connected: Instant,
) {
    let report = &outcome.report;
    let reply = outcome
        .decision
        .reply()
        .map(|r| r.to_string())
        .unwrap_or_default();
    tracing::info!(
        target: "dispatch_milter::message",
        queue_id = report.queue_id.as_deref().unwrap_or("-"),
        client,
        pipeline = %report.pipeline,
        source = %report.source,
        sender = %report.sender,
        recipients = %recipients_field(report),
        checks = %checks_field(report),
        score = report.score,
        verdict,
        reason = outcome.policy_decision.reason().unwrap_or(""),
        reply = %reply,
        dry_run = dry_run_overrode,
        connection_age_ms = connected.elapsed().as_millis() as u64,
        "message"
    );
}

/// The line for a message that ended before end of message: refused at MAIL
/// or for every recipient (verdict reject or tempfail), or abandoned by the
/// client (verdict aborted).
pub(crate) fn log_ended(client: &str, verdict: &str, report: &MessageReport, connected: Instant) {
    let reply = match &report.mail_reply {
        Some(StageReply::Reject(r) | StageReply::Tempfail(r)) => r.to_string(),
        _ => String::new(),
    };
    tracing::info!(
        target: "dispatch_milter::message",
        queue_id = report.queue_id.as_deref().unwrap_or("-"),
        client,
        pipeline = %report.pipeline,
        source = %report.source,
        sender = %report.sender,
        recipients = %recipients_field(report),
        checks = %checks_field(report),
        score = report.score,
        verdict,
        reason = "",
        reply = %reply,
        dry_run = false,
        connection_age_ms = connected.elapsed().as_millis() as u64,
        "message"
    );
}

/// Text log fields as `key=value`, with every value that is not a plain
/// word quoted and escaped: a sender, a HELO name or a header value can hold
/// spaces, quotes or line breaks, and none of them may split a log line or
/// forge a field. The message itself comes first, unquoted, with control
/// characters escaped.
pub(crate) struct KeyValueFields;

impl<'w> tracing_subscriber::field::MakeVisitor<tracing_subscriber::fmt::format::Writer<'w>>
    for KeyValueFields
{
    type Visitor = KeyValueVisitor<'w>;

    fn make_visitor(&self, target: tracing_subscriber::fmt::format::Writer<'w>) -> Self::Visitor {
        KeyValueVisitor {
            writer: target,
            first: true,
            result: Ok(()),
        }
    }
}

pub(crate) struct KeyValueVisitor<'w> {
    writer: tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl KeyValueVisitor<'_> {
    fn write(&mut self, name: &str, value: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.writer, "{sep}{}", escape_controls(value))
        } else {
            write!(self.writer, "{sep}{name}={}", quote_value(value))
        };
    }
}

impl tracing::field::Visit for KeyValueVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.write(field.name(), value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.write(field.name(), &format!("{value:?}"));
    }
}

impl tracing_subscriber::field::VisitOutput<std::fmt::Result> for KeyValueVisitor<'_> {
    fn finish(self) -> std::fmt::Result {
        self.result
    }
}

impl tracing_subscriber::field::VisitFmt for KeyValueVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        &mut self.writer
    }
}

/// A value as it stands in a `key=value` line: as it is when it is a plain
/// word of printable characters, else in double quotes with `"`, `\` and
/// control characters escaped.
pub(crate) fn quote_value(value: &str) -> std::borrow::Cow<'_, str> {
    let plain = !value.is_empty()
        && !value.chars().any(|c| {
            c.is_whitespace() || c.is_control() || is_deceptive(c) || matches!(c, '"' | '\\' | '=')
        });
    if plain {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_deceptive(c) => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out.push('"');
    out.into()
}

/// Characters that change how a line reads without being control
/// characters: bidi overrides and isolates, line and paragraph separators.
fn is_deceptive(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// Text with control characters (CR, LF, ESC, ...) written as escapes.
fn escape_controls(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.chars().any(|c| c.is_control() || is_deceptive(c)) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if c.is_control() || is_deceptive(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn values_are_quoted_when_they_are_not_plain_words() {
        assert_eq!(quote_value("accept"), "accept");
        assert_eq!(quote_value("a@example.org"), "a@example.org");
        assert_eq!(quote_value(""), "\"\"");
        assert_eq!(quote_value("two words"), "\"two words\"");
        assert_eq!(quote_value("x=1"), "\"x=1\"");
        assert_eq!(quote_value("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
        assert_eq!(quote_value("a\r\nb"), "\"a\\r\\nb\"");
        assert_eq!(quote_value("\u{1b}[31m"), "\"\\u{1b}[31m\"");
        assert_eq!(quote_value("a\u{202e}b"), "\"a\\u{202e}b\"");
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_client_cannot_forge_a_log_line() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(KeyValueFields)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let helo = "evil.example\r\n2026-12-04T00:00:00Z INFO message verdict=accept";
            let reason = "header \"Subject\" matched";
            tracing::info!(helo, reason, client = %"mx [192.0.2.1]", verdict = "reject", "message\nforged");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.ends_with(
                "message\\nforged helo=\"evil.example\\r\\n2026-12-04T00:00:00Z INFO message verdict=accept\" reason=\"header \\\"Subject\\\" matched\" client=\"mx [192.0.2.1]\" verdict=reject\n"
            ),
            "{text}"
        );
    }
}
