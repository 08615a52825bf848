//! Checks and modifiers: each block built once by its kind's builder,
//! and the names pipelines and dispatch blocks use resolved to indexes.

use super::*;
use crate::config::options::Interval;
use serde::Deserialize;

/// The keys every check has, whatever its kind (`kind` itself is read
/// first, on its own, since it says what the rest may be).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckCommon {
    timeout: Option<Interval>,
    on_pass: Option<String>,
    on_fail: Option<String>,
    on_softfail: Option<String>,
    on_neutral: Option<String>,
    on_none: Option<String>,
    on_temperror: Option<String>,
    on_permerror: Option<String>,
    reply: Option<RawReply>,
    tempfail_reply: Option<RawReply>,
    decide_at: Option<String>,
}

impl CheckCommon {
    /// The `on_*` keys with what each says, in the order of [`Status::ALL`].
    fn actions(&self) -> [(&'static str, Option<String>); 7] {
        Status::ALL.map(|status| match status {
            Status::Pass => ("on_pass", self.on_pass.clone()),
            Status::Fail => ("on_fail", self.on_fail.clone()),
            Status::Softfail => ("on_softfail", self.on_softfail.clone()),
            Status::Neutral => ("on_neutral", self.on_neutral.clone()),
            Status::None => ("on_none", self.on_none.clone()),
            Status::Temperror => ("on_temperror", self.on_temperror.clone()),
            Status::Permerror => ("on_permerror", self.on_permerror.clone()),
        })
    }
}

/// The key that says what a check or modifier block is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kind {
    kind: String,
}

/// A block's `kind` and the builder for it, or `None` after saying that it
/// is missing or unknown. Without a kind every other key would read as
/// unknown, so nothing else of the block is reported.
fn kind_of<'r, B>(
    options: &mut Options<'_, '_>,
    builders: &'r std::collections::BTreeMap<String, B>,
    noun: &str,
) -> Option<(String, &'r B)> {
    let Kind { kind } = options.take()?;
    if let Some(builder) = builders.get(&kind) {
        return Some((kind, builder));
    }
    let hint = match did_you_mean(&kind, builders.keys().map(String::as_str)) {
        Some(s) => format!("did you mean \"{s}\"?"),
        None => format!(
            "known kinds: {}",
            builders.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    let span = options.span_of("kind").unwrap_or_else(|| options.span());
    options
        .diag()
        .error_hint(span, format!("unknown {noun} kind \"{kind}\""), hint);
    None
}

impl Compiler<'_, '_> {
    pub(super) fn check(&mut self, name: Spanned<String>, block: Spanned<RawOptions>) {
        let what = format!("check \"{}\"", name.get_ref());
        let span = block.span();
        let registry = self.registry;
        let tables = &self.tables;
        let mut options = Options::new(what, span, block.into_inner(), &mut self.diag);
        let Some((kind, builder)) = kind_of(&mut options, &registry.checks, "check") else {
            self.broken.insert(name.into_inner());
            return;
        };
        // What the administrator wrote per result; defaults come once the
        // check is built, since a kind may have its own.
        let common: CheckCommon = options.take().unwrap_or_default();
        let timeout = common
            .timeout
            .map_or(defaults::CHECK_TIMEOUT, |Interval(d)| d);
        let mut configured: [Option<Action>; 7] = [None; 7];
        for (i, (key, written)) in common.actions().into_iter().enumerate() {
            let Some(written) = written else { continue };
            match parse_action(&written) {
                Some(a) => configured[i] = Some(a),
                None => options.invalid(
                    key,
                    format_args!(
                        "must be \"ignore\", \"reject\", \"tempfail\", \"quarantine\", \"error_action\", \"score\" or \"score N\", found \"{written}\""
                    ),
                ),
            }
        }
        let reject_reply = reply_option(&mut options, "reply", common.reply, ReplyClass::Permanent);
        let tempfail_reply = reply_option(
            &mut options,
            "tempfail_reply",
            common.tempfail_reply,
            ReplyClass::Temporary,
        );
        let decide_at = common.decide_at;
        let mut ctx = CheckBuildContext {
            name: name.get_ref(),
            options: &mut options,
            tables,
            base_dir: &self.base_dir,
            dns: &self.dns,
        };
        let built = builder(&mut ctx);
        let decides = match (&built, decide_at) {
            (Some(check), Some(stage)) => match Stage::parse(&stage) {
                Some(s) if s >= check.inputs() => s,
                Some(_) => {
                    options.invalid(
                        "decide_at",
                        format_args!(
                            "\"{stage}\" comes before the stage this check's inputs exist (\"{}\")",
                            check.inputs()
                        ),
                    );
                    check.decides()
                }
                None => {
                    options.invalid(
                        "decide_at",
                        format_args!("must be connect, helo, mail, rcpt or eom, found \"{stage}\""),
                    );
                    check.decides()
                }
            },
            (Some(check), None) => check.decides().max(check.inputs()),
            (None, _) => Stage::Eom,
        };
        options.finish();
        let Some(check) = built else {
            self.broken.insert(name.into_inner());
            return;
        };
        let mut actions = [Action::Ignore; 7];
        for (i, status) in Status::ALL.iter().enumerate() {
            actions[i] = configured[i]
                .or_else(|| check.default_action(*status))
                .unwrap_or(match status {
                    Status::Fail => Action::Reject,
                    Status::Temperror | Status::Permerror => Action::Error,
                    _ => Action::Ignore,
                });
        }
        let id = self.checks.len();
        self.check_ids.insert(name.get_ref().clone(), id);
        self.checks.push(CheckInstance {
            name: name.into_inner().into(),
            kind: kind.into(),
            inputs: check.inputs(),
            decides,
            check,
            timeout,
            actions,
            reject_reply: reject_reply.unwrap_or_else(Reply::default_reject),
            tempfail_reply: tempfail_reply.unwrap_or_else(Reply::default_tempfail),
        });
    }

    pub(super) fn modifier(&mut self, name: Spanned<String>, block: Spanned<RawOptions>) {
        let what = format!("modifier \"{}\"", name.get_ref());
        let span = block.span();
        let registry = self.registry;
        let tables = &self.tables;
        let mut options = Options::new(what, span, block.into_inner(), &mut self.diag);
        let Some((kind, builder)) = kind_of(&mut options, &registry.modifiers, "modifier") else {
            self.broken.insert(name.into_inner());
            return;
        };
        let mut ctx = ModifierBuildContext {
            name: name.get_ref(),
            options: &mut options,
            tables,
            base_dir: &self.base_dir,
        };
        let built = builder(&mut ctx);
        options.finish();
        let Some(modifier) = built else {
            self.broken.insert(name.into_inner());
            return;
        };
        let id = self.modifiers.len();
        self.modifier_ids.insert(name.get_ref().clone(), id);
        self.modifiers.push(ModifierInstance {
            name: name.into_inner(),
            kind,
            modifier,
        });
    }

    /// Resolve a `checks` or `modify` list to ids: each name defined, once.
    pub(super) fn resolve_names(
        &mut self,
        list: &Option<Spanned<Vec<Spanned<String>>>>,
        what: &str,
        ids_by_name: &HashMap<String, usize>,
    ) -> Vec<usize> {
        let mut ids = Vec::new();
        for name in list.iter().flat_map(|l| l.get_ref()) {
            match ids_by_name.get(name.get_ref()) {
                Some(id) if ids.contains(id) => self.diag.error(
                    name.span(),
                    format!("{what} \"{}\" is listed twice here", name.get_ref()),
                ),
                Some(id) => ids.push(*id),
                None if self.broken.contains(name.get_ref()) => {}
                None => {
                    let hint = did_you_mean(name.get_ref(), ids_by_name.keys().map(String::as_str))
                        .map(|s| format!("did you mean \"{s}\"?"))
                        .unwrap_or_else(|| {
                            let block = if what == "check" {
                                "checks"
                            } else {
                                "modifiers"
                            };
                            format!("define it in a [{block}.NAME] block")
                        });
                    self.diag.error_hint(
                        name.span(),
                        format!("{what} \"{}\" is not defined", name.get_ref()),
                        hint,
                    );
                }
            }
        }
        ids
    }

    pub(super) fn resolve_checks(
        &mut self,
        list: &Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Vec<CheckId> {
        let names = std::mem::take(&mut self.check_ids);
        let ids = self.resolve_names(list, "check", &names);
        self.check_ids = names;
        ids
    }

    pub(super) fn resolve_modifiers(
        &mut self,
        list: &Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Vec<ModifierId> {
        let names = std::mem::take(&mut self.modifier_ids);
        let ids = self.resolve_names(list, "modifier", &names);
        self.modifier_ids = names;
        for id in &ids {
            if !self.pipeline_modifiers.contains(id) {
                self.pipeline_modifiers.push(*id);
            }
        }
        ids
    }
}
