//! The `add_header` modifier: adds the header `name` (required) with the
//! template `value` (required), at `position` "bottom" (default) or "top".
//! Placeholders, filled in at end of message, absent values reading "unknown":
//! {sender} {recipients} {client_ip} {client_name} {helo} {queue_id}
//! {pipeline} {auth_user} {daemon_name}; `{{` and `}}` are literal braces.

use super::{EditError, Effects, MessageContext, Modifier, ModifierBuildContext};
use crate::edits::{EditList, valid_header_name};
use serde::Deserialize;
use std::sync::Arc;

/// What an absent value reads as, so the header always has the same shape.
const UNKNOWN: &str = "unknown";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Sender,
    Recipients,
    ClientIp,
    ClientName,
    Helo,
    QueueId,
    Pipeline,
    AuthUser,
    DaemonName,
}

impl Field {
    const ALL: [(&'static str, Field); 9] = [
        ("sender", Field::Sender),
        ("recipients", Field::Recipients),
        ("client_ip", Field::ClientIp),
        ("client_name", Field::ClientName),
        ("helo", Field::Helo),
        ("queue_id", Field::QueueId),
        ("pipeline", Field::Pipeline),
        ("auth_user", Field::AuthUser),
        ("daemon_name", Field::DaemonName),
    ];

    /// Every placeholder, as written in a template: `{sender}, {recipients}, ...`.
    fn placeholders() -> String {
        let known: Vec<String> = Field::ALL.iter().map(|(n, _)| format!("{{{n}}}")).collect();
        known.join(", ")
    }

    fn from_name(name: &str) -> Option<Field> {
        Field::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    fn value(self, ctx: &MessageContext<'_>) -> Option<String> {
        let conn = ctx.connection;
        let env = ctx.envelope;
        match self {
            // Display gives `<>` for the null sender, which is a real value.
            Field::Sender => Some(env.sender.to_string()),
            Field::Recipients => Some(
                env.recipients
                    .iter()
                    .map(|r| r.original())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Field::ClientIp => conn.client_ip.map(|ip| ip.to_string()),
            Field::ClientName => conn.client_name.clone(),
            Field::Helo => conn.helo.clone(),
            Field::QueueId => ctx.queue_id.map(str::to_string),
            Field::Pipeline => Some(ctx.pipeline.to_string()),
            Field::AuthUser => conn.auth.as_ref().map(|a| a.user.clone()),
            Field::DaemonName => conn.daemon_name.clone(),
        }
        // An empty macro from the MTA says as little as a missing one.
        .filter(|v| !v.is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
}

/// Why a `value` template is refused; the text follows "`value` in
/// MODIFIER".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum TemplateError {
    #[error("must be a single line: the MTA folds long headers itself")]
    Multiline,
    #[error("has a \"}}\" without \"{{\": write }}}} for a literal brace")]
    UnopenedBrace,
    #[error("has a \"{{\" without \"}}\": write {{{{ for a literal brace")]
    UnclosedBrace,
    #[error(
        "has an unknown placeholder \"{{{}}}\": use one of {}, or {{{{ and }}}} for literal braces",
        .name.escape_debug(), Field::placeholders()
    )]
    UnknownPlaceholder { name: String },
}

/// Split a template into literal text and placeholders once, at build time,
/// so a typo in a placeholder is a config error and not a surprise in mail.
fn parse_template(template: &str) -> Result<Vec<Part>, TemplateError> {
    if template.contains(['\r', '\n', '\0']) {
        // The MTA folds long headers itself; a line break written here would
        // only be flattened by sanitising, so say so instead.
        return Err(TemplateError::Multiline);
    }
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        literal.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            literal.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(TemplateError::UnopenedBrace);
        }
        let Some(end) = tail.find('}') else {
            return Err(TemplateError::UnclosedBrace);
        };
        let name = &tail[1..end];
        let Some(field) = Field::from_name(name) else {
            return Err(TemplateError::UnknownPlaceholder {
                name: name.to_string(),
            });
        };
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(Part::Field(field));
        rest = &tail[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Position {
    Top,
    #[default]
    Bottom,
}

/// `[modifiers.NAME]` with `kind = "add_header"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddHeaderOptions {
    name: String,
    value: String,
    #[serde(default)]
    position: Position,
}

/// The `add_header` modifier.
pub struct AddHeaderModifier {
    name: String,
    template: Vec<Part>,
    position: Position,
}

impl AddHeaderModifier {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let AddHeaderOptions {
            name,
            value,
            position,
        } = ctx
            .options
            .required("name", "\"X-Scanned-By\"")
            .required("value", "\"dispatch-milter on {daemon_name}\"")
            .parse()?;
        // Both values are checked before returning, so all mistakes in the
        // block are reported in one pass.
        let name_ok = check_header_name(ctx, &name);
        let template = match parse_template(&value) {
            Ok(parts) => Some(parts),
            Err(e) => {
                ctx.options.invalid("value", e);
                None
            }
        };
        let template = template.filter(|_| name_ok)?;
        Some(Arc::new(AddHeaderModifier {
            name,
            template,
            position,
        }))
    }

    fn render(&self, ctx: &MessageContext<'_>) -> String {
        let mut out = String::new();
        for part in &self.template {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(f) => out.push_str(f.value(ctx).as_deref().unwrap_or(UNKNOWN)),
            }
        }
        out
    }
}

/// Whether the `name` option is a valid header field name, reporting it
/// when not. Also used by `remove_header`.
pub(crate) fn check_header_name(ctx: &mut ModifierBuildContext<'_, '_, '_>, name: &str) -> bool {
    if valid_header_name(name) {
        return true;
    }
    ctx.options.invalid(
        "name",
        format_args!(
            "must be a header name such as \"X-Spam-Flag\" (printable ASCII without spaces or colons), found \"{}\"",
            name.escape_debug()
        ),
    );
    false
}

impl Modifier for AddHeaderModifier {
    fn effects(&self) -> Effects {
        Effects {
            headers: true,
            ..Effects::default()
        }
    }

    fn edit_message(
        &self,
        ctx: &MessageContext<'_>,
        edits: &mut EditList,
    ) -> Result<(), EditError> {
        // EditList strips CR, LF and NUL from the value, so envelope data in
        // a placeholder cannot start a header line of its own.
        let value = self.render(ctx);
        match self.position {
            Position::Bottom => edits.add_header(&self.name, &value)?,
            Position::Top => edits.insert_header(0, &self.name, &value)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::rewrite_sender::test_support::{build, has_error};
    use super::*;
    use crate::address::Address;
    use crate::edits::Edit;
    use crate::message::{AuthInfo, ConnectionFacts, Envelope, Message};
    use crate::tables::TableSet;

    fn modifier(src: &str) -> Arc<dyn Modifier> {
        let (m, errors) = build(src, &TableSet::new(), AddHeaderModifier::build);
        assert!(errors.is_empty(), "{errors:?}");
        m.unwrap()
    }

    fn errors_of(src: &str) -> Vec<String> {
        let (m, errors) = build(src, &TableSet::new(), AddHeaderModifier::build);
        assert!(m.is_none(), "{src}");
        errors
    }

    fn run(
        m: &Arc<dyn Modifier>,
        conn: &ConnectionFacts,
        env: &Envelope,
        queue_id: Option<&str>,
    ) -> Vec<Edit> {
        let message = Message::default();
        let ctx = MessageContext {
            connection: conn,
            envelope: env,
            message: &message,
            queue_id,
            pipeline: "inbound",
            auth_results: None,
        };
        let mut edits = EditList::new();
        m.edit_message(&ctx, &mut edits).unwrap();
        edits.into_vec()
    }

    fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
        Envelope {
            rewritten_sender: None,
            sender: Address::parse(sender).unwrap(),
            mail_args: vec![],
            recipients: rcpts.iter().map(|r| Address::parse(r).unwrap()).collect(),
        }
    }

    #[test]
    fn fills_every_placeholder() {
        let m = modifier(
            "name = 'X-Trace'\nvalue = '{sender} > {recipients} from {client_name} [{client_ip}] helo={helo} id={queue_id} p={pipeline} auth={auth_user} d={daemon_name}'",
        );
        assert_eq!(
            m.effects(),
            Effects {
                headers: true,
                ..Effects::default()
            }
        );
        let conn = ConnectionFacts {
            client_ip: Some("192.0.2.7".parse().unwrap()),
            client_name: Some("mx.example.net".into()),
            daemon_name: Some("smtpd".into()),
            helo: Some("mx.example.net".into()),
            tls: None,
            auth: Some(AuthInfo {
                user: "joe".into(),
                mechanism: None,
            }),
        };
        let env = envelope("<Joe@example.net>", &["<a@example.org>", "<B@example.org>"]);
        assert_eq!(
            run(&m, &conn, &env, Some("4XyZ")),
            [Edit::AddHeader {
                name: "X-Trace".into(),
                value: "Joe@example.net > a@example.org, B@example.org from mx.example.net [192.0.2.7] helo=mx.example.net id=4XyZ p=inbound auth=joe d=smtpd".into(),
            }]
        );
    }

    #[test]
    fn absent_values_read_unknown_and_braces_escape() {
        let m = modifier(
            "name = 'X-Info'\nvalue = '{{{helo}}} {auth_user} {queue_id} {client_ip} {sender} }}'",
        );
        let conn = ConnectionFacts {
            helo: Some(String::new()),
            ..ConnectionFacts::default()
        };
        let edits = run(&m, &conn, &envelope("<>", &[]), None);
        assert_eq!(
            edits,
            [Edit::AddHeader {
                name: "X-Info".into(),
                value: "{unknown} unknown unknown unknown <> }".into(),
            }]
        );
    }

    #[test]
    fn positions() {
        let env = envelope("a@example.org", &["b@example.org"]);
        let conn = ConnectionFacts::default();
        let top = modifier("name = 'X-Top'\nvalue = 'v'\nposition = 'top'");
        assert_eq!(
            run(&top, &conn, &env, None),
            [Edit::InsertHeader {
                index: 0,
                name: "X-Top".into(),
                value: "v".into()
            }]
        );
        let bottom = modifier("name = 'X-Bottom'\nvalue = 'v'\nposition = 'bottom'");
        assert_eq!(
            run(&bottom, &conn, &env, None),
            [Edit::AddHeader {
                name: "X-Bottom".into(),
                value: "v".into()
            }]
        );
        let default = modifier("name = 'X-Bottom'\nvalue = 'v'");
        assert!(matches!(
            run(&default, &conn, &env, None)[..],
            [Edit::AddHeader { .. }]
        ));
    }

    #[test]
    fn client_data_cannot_inject_headers() {
        // An envelope address with a line break does not even parse.
        assert!(Address::parse("<evil@example.org\r\nBcc: victim@example.org>").is_err());
        let m = modifier("name = 'X-Sender'\nvalue = 'from {sender} helo {helo}'");
        let env = envelope("<evil@example.org>", &["<a@example.org>"]);
        let conn = ConnectionFacts {
            helo: Some("x.example\r\nBcc: victim@example.org\nX-Evil: 1".into()),
            ..ConnectionFacts::default()
        };
        let edits = run(&m, &conn, &env, None);
        let [Edit::AddHeader { value, .. }] = &edits[..] else {
            panic!("unexpected {edits:?}");
        };
        assert!(!value.contains(['\r', '\n', '\0']), "{value:?}");
        assert_eq!(
            value,
            "from evil@example.org helo x.example Bcc: victim@example.org X-Evil: 1"
        );
    }

    #[test]
    fn template_errors() {
        assert!(has_error(
            &errors_of("name = 'X'\nvalue = '{nope}'"),
            "unknown placeholder \"{nope}\""
        ));
        assert!(has_error(
            &errors_of("name = 'X'\nvalue = '{Sender}'"),
            "unknown placeholder"
        ));
        assert!(has_error(
            &errors_of("name = 'X'\nvalue = 'a {sender'"),
            "without \"}\""
        ));
        assert!(has_error(
            &errors_of("name = 'X'\nvalue = 'a } b'"),
            "without \"{\""
        ));
        assert!(has_error(
            &errors_of("name = 'X'\nvalue = \"a\\nb\""),
            "single line"
        ));
        assert_eq!(
            parse_template("a{sender}{helo}b").unwrap(),
            [
                Part::Literal("a".into()),
                Part::Field(Field::Sender),
                Part::Field(Field::Helo),
                Part::Literal("b".into())
            ]
        );
    }

    #[test]
    fn option_errors() {
        assert!(has_error(&errors_of("value = 'v'"), "needs `name`"));
        assert!(has_error(&errors_of("name = 'X'"), "needs `value`"));
        assert!(has_error(
            &errors_of("name = 'X Bad'\nvalue = 'v'"),
            "must be a header name"
        ));
        assert!(has_error(
            &errors_of("name = 'X:'\nvalue = 'v'"),
            "must be a header name"
        ));
        assert!(has_error(
            &errors_of("name = 'X'\nvalue = 'v'\nposition = 'middle'"),
            "\"top\" or \"bottom\""
        ));
        // All problems of a block at once: every value of the wrong kind,
        // and once each has the right kind, every value that is still wrong.
        let errors = errors_of("name = 1\nvalue = 2\nposition = 1");
        assert_eq!(errors.len(), 3, "{errors:?}");
        let errors = errors_of("name = ''\nvalue = '{x}'\nposition = 'top'");
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn template_error_texts() {
        let text = |t: &str| parse_template(t).unwrap_err().to_string();
        assert_eq!(
            text("a\nb"),
            "must be a single line: the MTA folds long headers itself"
        );
        assert_eq!(
            text("a}b"),
            "has a \"}\" without \"{\": write }} for a literal brace"
        );
        assert_eq!(
            text("a{b"),
            "has a \"{\" without \"}\": write {{ for a literal brace"
        );
        assert_eq!(
            text("{send\ter}"),
            "has an unknown placeholder \"{send\\ter}\": use one of {sender}, {recipients}, {client_ip}, {client_name}, {helo}, {queue_id}, {pipeline}, {auth_user}, {daemon_name}, or {{ and }} for literal braces"
        );
    }
}
