//! The `remove_header` modifier: deletes every header called `name`
//! (required, compared case-insensitively) or, with `pattern` (a regex on the
//! unfolded value), only the instances whose value matches.

use super::add_header::check_header_name;
use super::{EditError, Effects, MessageContext, Modifier, ModifierBuildContext};
use crate::edits::EditList;
use regex::Regex;
use serde::Deserialize;
use std::sync::Arc;

/// `[modifiers.NAME]` with `kind = "remove_header"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveHeaderOptions {
    name: String,
    pattern: Option<String>,
}

/// The `remove_header` modifier.
pub struct RemoveHeaderModifier {
    name: String,
    pattern: Option<Regex>,
}

impl RemoveHeaderModifier {
    /// Build it from its options; `None` after reporting what is wrong.
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let RemoveHeaderOptions { name, pattern } =
            ctx.options.required("name", "\"X-Spam-Flag\"").parse()?;
        // Both values are checked before returning, so all mistakes in the
        // block are reported in one pass. No pattern: remove them all.
        let name_ok = check_header_name(ctx, &name);
        let pattern = match pattern {
            None => Some(None),
            Some(p) => ctx.options.compile_regex("pattern", &p).map(Some),
        };
        let pattern = pattern.filter(|_| name_ok)?;
        Some(Arc::new(RemoveHeaderModifier { name, pattern }))
    }
}

impl Modifier for RemoveHeaderModifier {
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
        // delete_headers_where emits the highest index first, so each delete
        // leaves the indexes of the ones still to come valid.
        edits.delete_headers_where(&self.name, &ctx.message.headers, |value| {
            self.pattern
                .as_ref()
                .is_none_or(|re| re.is_match(&crate::message::unfold(value)))
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::rewrite_sender::test_support::{build, has_error};
    use super::*;
    use crate::address::Address;
    use crate::edits::Edit;
    use crate::message::{ConnectionFacts, Envelope, Header, Message};
    use crate::tables::TableSet;

    fn modifier(src: &str) -> Arc<dyn Modifier> {
        let (m, errors) = build(src, &TableSet::new(), RemoveHeaderModifier::build);
        assert!(errors.is_empty(), "{errors:?}");
        m.unwrap()
    }

    fn message() -> Message {
        let h = |name: &str, value: &str| Header::new(name, value);
        Message {
            headers: vec![
                h("Received", "from a"),
                h("X-Spam-Flag", "YES"),
                h("Subject", "hi"),
                h("x-spam-flag", "NO"),
                h("X-SPAM-FLAG", "YES,\r\n\tvery"),
                h("X-Other", "YES"),
            ],
            ..Message::default()
        }
    }

    /// (name, index) of every delete, in the order emitted.
    fn deletes(m: &Arc<dyn Modifier>) -> Vec<(String, u32)> {
        let conn = ConnectionFacts::default();
        let env = Envelope {
            rewritten_sender: None,
            sender: Address::Null,
            mail_args: vec![],
            recipients: vec![],
        };
        let msg = message();
        let ctx = MessageContext {
            connection: &conn,
            envelope: &env,
            message: &msg,
            queue_id: None,
            pipeline: "p",
            auth_results: None,
        };
        let mut edits = EditList::new();
        m.edit_message(&ctx, &mut edits).unwrap();
        edits
            .into_vec()
            .into_iter()
            .map(|e| match e {
                Edit::DeleteHeader { name, index } => (name, index),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn removes_all_instances_highest_index_first() {
        let m = modifier("name = 'x-spam-flag'");
        assert_eq!(
            m.effects(),
            Effects {
                headers: true,
                ..Effects::default()
            }
        );
        assert_eq!(
            deletes(&m),
            [
                ("X-SPAM-FLAG".to_string(), 3),
                ("x-spam-flag".to_string(), 2),
                ("X-Spam-Flag".to_string(), 1)
            ]
        );
        assert!(deletes(&modifier("name = 'X-Absent'")).is_empty());
    }

    #[test]
    fn pattern_selects_instances_on_unfolded_value() {
        let m = modifier("name = 'X-Spam-Flag'\npattern = '^YES'");
        assert_eq!(
            deletes(&m),
            [
                ("X-SPAM-FLAG".to_string(), 3),
                ("X-Spam-Flag".to_string(), 1)
            ]
        );
        // The folded value reads "YES,\tvery" once unfolded.
        let m = modifier("name = 'X-Spam-Flag'\npattern = '^YES,\\tvery$'");
        assert_eq!(deletes(&m), [("X-SPAM-FLAG".to_string(), 3)]);
        let m = modifier("name = 'X-Spam-Flag'\npattern = 'maybe'");
        assert!(deletes(&m).is_empty());
    }

    #[test]
    fn option_errors() {
        let errors_of = |src: &str| {
            let (m, errors) = build(src, &TableSet::new(), RemoveHeaderModifier::build);
            assert!(m.is_none(), "{src}");
            errors
        };
        assert!(has_error(&errors_of("pattern = 'x'"), "needs `name`"));
        assert!(has_error(
            &errors_of("name = 'Bad Name'"),
            "must be a header name"
        ));
        assert!(has_error(
            &errors_of("name = 'X'\npattern = '('"),
            "invalid regex"
        ));
        assert!(has_error(
            &errors_of("name = 'X'\npattern = 1"),
            "must be a string"
        ));
    }
}
