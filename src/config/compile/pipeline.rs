//! One pipeline: its settings, the checks and modifiers it names, and the
//! milter actions its edits will need.

use super::tree::{Level, SourceLevel};
use super::*;

impl Compiler<'_, '_> {
    pub(super) fn pipeline(
        &mut self,
        name: Spanned<String>,
        block: Spanned<RawPipeline>,
    ) -> Option<Pipeline> {
        let mut raw = block.into_inner();
        let settings = self.pipeline_settings(&raw);
        // At a pipeline's top level `daemon_names` selects the pipeline, not a source.
        raw.daemon_names = None;
        let tree = raw.take_tree();
        let pipeline_name = name.into_inner();

        if let Some(span) = tree.selector_span() {
            self.diag.error_hint(
                span,
                "selectors are not allowed at a pipeline's top level",
                "put `match`, `table`, `networks` or `auth_users` in a [[...source]] or [[...destination]] block (`daemon_names` here names the {daemon_name} values that select this pipeline)",
            );
        }
        let global_checks = self.resolve_checks(&tree.checks);
        let global_modifiers = self.resolve_modifiers(&tree.modify);

        let RawBlock {
            source,
            destination,
            default,
            action,
            reply,
            reason,
            redirect,
            copy,
            ..
        } = tree;
        let has_dispatch = !source.is_empty() || !destination.is_empty() || default.is_some();
        let top_outcome = RawBlock {
            action,
            reply,
            reason,
            redirect,
            copy,
            ..RawBlock::default()
        };
        if has_dispatch && let Some(span) = top_outcome.outcome_span() {
            self.diag.error_hint(
                span,
                "an outcome at a pipeline's top level next to source, destination or default blocks",
                "move it into [pipelines.NAME.default]",
            );
        }

        // Source blocks.
        let mut level = Level::default();
        let mut sources = SourceLevel {
            by_auth_user: HashMap::new(),
            any_auth_user: None,
            by_network: Vec::new(),
            by_daemon_name: HashMap::new(),
            by_address: HashMap::new(),
            by_domain: HashMap::new(),
            tables: Vec::new(),
        };
        for block in source {
            self.source_block(block, &global_checks, &mut level, &mut sources);
        }

        // The default source: top-level destinations and default together, or
        // the default block, or the top level's own outcome.
        let default_source_block = if !destination.is_empty() {
            if let Some(d) = &default
                && d.get_ref().has_dispatch()
            {
                self.diag.error_hint(
                    d.span(),
                    "destination blocks at the top level and dispatch blocks inside default",
                    "keep the default source's destinations in one place: either at the top level or inside default",
                );
            }
            RawBlock {
                destination,
                default,
                ..RawBlock::default()
            }
        } else if let Some(d) = default {
            let d = d.into_inner();
            if let Some(span) = d.selector_span() {
                self.diag.error(
                    span,
                    "a default block matches everything; remove the selector",
                );
            }
            d
        } else {
            top_outcome
        };
        if let Some(s) = default_source_block.source.first() {
            self.diag.error(
                s.span(),
                "a source block inside default is not allowed; source blocks belong at the pipeline's top level",
            );
        }
        let default_node = self.source_level(&default_source_block, "default", &global_checks);

        let mut by_network = sources.by_network;
        by_network.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        let branches = std::mem::take(&mut self.branches);
        let mut all_checks: Vec<CheckId> = branches
            .iter()
            .flat_map(|b| b.checks.iter().copied())
            .collect();
        all_checks.sort_unstable();
        all_checks.dedup();
        let all_modifiers = std::mem::take(&mut self.pipeline_modifiers);
        let needs_body = all_checks
            .iter()
            .any(|&id| self.checks[id].check.needs_body())
            || all_modifiers
                .iter()
                .any(|&id| self.modifiers[id].modifier.needs_body());
        let settings = settings?;
        let edit_kinds = self.edit_kinds(&settings, &branches, &all_checks, &all_modifiers);
        let mut pipeline = Pipeline {
            edit_kinds,
            stage_use: StageUse::default(),
            needs_body,
            all_checks,
            name: pipeline_name,
            settings,
            checks: global_checks,
            modifiers: global_modifiers,
            sources: SourceDispatch {
                by_auth_user: sources.by_auth_user,
                any_auth_user: sources.any_auth_user,
                by_network,
                by_daemon_name: sources.by_daemon_name,
                by_sender: Dispatch {
                    by_address: sources.by_address,
                    by_domain: sources.by_domain,
                    tables: sources.tables,
                    default: default_node,
                },
            },
            branches,
        };
        pipeline.stage_use = pipeline.compute_stage_use(&self.checks, !all_modifiers.is_empty());
        Some(pipeline)
    }

    /// Which kinds of edit the pipeline can ever produce, so the daemon asks
    /// the MTA for exactly those.
    pub(super) fn edit_kinds(
        &self,
        settings: &PipelineSettings,
        branches: &[Arc<Branch>],
        checks: &[CheckId],
        modifiers: &[ModifierId],
    ) -> EditKinds {
        let mut k = EditKinds::default();
        for &id in modifiers {
            let e = self.modifiers[id].modifier.effects();
            k.add_header |= e.headers;
            k.change_header |= e.headers;
            k.add_recipient |= e.recipients;
            k.delete_recipient |= e.recipients;
            k.change_sender |= e.sender;
        }
        for b in branches {
            k.add_recipient |= b.redirect.is_some() || !b.copy.is_empty();
            k.delete_recipient |= b.redirect.is_some() || b.outcome == Outcome::Discard;
            k.quarantine |= matches!(b.outcome, Outcome::Quarantine(_));
        }
        k.quarantine |= settings.quarantine_score.is_some()
            || checks
                .iter()
                .any(|&id| self.checks[id].actions.contains(&Action::Quarantine));
        // The quarantine reason travels in a header; dry-run reports in one;
        // Authentication-Results is added, and forgeries of it deleted,
        // whenever a check reports a result; copies of the quarantine and
        // dry-run headers that the client sent are deleted.
        let auth_results = settings.authserv_id.is_some();
        k.add_header |= k.quarantine || settings.dry_run || auth_results;
        k.change_header |= k.quarantine || settings.dry_run || auth_results;
        k
    }

    pub(super) fn pipeline_settings(&mut self, raw: &RawPipeline) -> Option<PipelineSettings> {
        let mut ok = true;
        let error_reply_spec = raw.error_reply.as_ref();
        let error_action = match raw
            .error_action
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("tempfail", _)) => {
                let spec = error_reply_spec
                    .map(|s| s.get_ref().clone())
                    .unwrap_or_default();
                match build_reply(&spec, ReplyClass::Temporary) {
                    Ok(r) => ErrorAction::Tempfail(r),
                    Err(e) => {
                        ok = false;
                        let span = error_reply_spec.map(Spanned::span).unwrap_or(0..0);
                        self.diag.error(span, format!("invalid `error_reply`: {e}"));
                        ErrorAction::Tempfail(Reply::default_tempfail())
                    }
                }
            }
            Some(("reject", _)) => {
                let spec = error_reply_spec
                    .map(|s| s.get_ref().clone())
                    .unwrap_or_default();
                match build_reply(&spec, ReplyClass::Permanent) {
                    Ok(r) => ErrorAction::Reject(r),
                    Err(e) => {
                        ok = false;
                        let span = error_reply_spec.map(Spanned::span).unwrap_or(0..0);
                        self.diag.error(span, format!("invalid `error_reply`: {e}"));
                        ErrorAction::Reject(Reply::default_reject())
                    }
                }
            }
            Some((other, span)) => {
                ok = false;
                self.diag.error_hint(
                    span,
                    format!("invalid `error_action` \"{other}\""),
                    "use \"tempfail\" (the default: the client retries, nothing is lost) or \"reject\"",
                );
                ErrorAction::Tempfail(Reply::default_tempfail())
            }
        };
        let score = |v: &Option<Spanned<f64>>, key: &str, diag: &mut Diagnostics| {
            v.as_ref().and_then(|s| {
                let v = *s.get_ref();
                if !v.is_finite() {
                    diag.error(s.span(), format!("`{key}` must be a finite number"));
                    None
                } else if v <= 0.0 {
                    // A message no check scores has 0: a threshold at or
                    // below it would quarantine or reject all such mail.
                    diag.error(
                        s.span(),
                        format!("`{key}` must be above 0, found {v}: a message that no check scores has 0 and would reach it"),
                    );
                    None
                } else {
                    Some(v)
                }
            })
        };
        let quarantine_score = score(&raw.quarantine_score, "quarantine_score", &mut self.diag);
        let reject_score = score(&raw.reject_score, "reject_score", &mut self.diag);
        if let (Some(q), Some(r), Some(span)) = (
            quarantine_score,
            reject_score,
            raw.quarantine_score.as_ref().map(Spanned::span),
        ) && q >= r
        {
            self.diag.error(
                span,
                format!("`quarantine_score` ({q}) must be below `reject_score` ({r})"),
            );
        }
        let quarantine_header = match &raw.quarantine_header {
            Some(h) if !valid_header_name(h.get_ref()) => {
                ok = false;
                self.diag
                    .error(h.span(), format!("invalid header name \"{}\"", h.get_ref()));
                String::new()
            }
            Some(h) => h.get_ref().clone(),
            None => defaults::QUARANTINE_HEADER.to_string(),
        };
        let max_body_size = self
            .size_setting(&raw.max_body_size, "max_body_size", defaults::MAX_BODY_SIZE)
            .unwrap_or_else(|| {
                ok = false;
                0
            });
        let max_header_bytes = match self.size_setting(
            &raw.max_header_bytes,
            "max_header_bytes",
            defaults::MAX_HEADER_BYTES,
        ) {
            Some(0) => {
                ok = false;
                if let Some(v) = &raw.max_header_bytes {
                    self.diag.error(
                        v.span(),
                        "`max_header_bytes` must be at least 1: with 0 every message is refused",
                    );
                }
                0
            }
            Some(n) => n,
            None => {
                ok = false;
                0
            }
        };
        let max_headers = match &raw.max_headers {
            None => defaults::MAX_HEADERS,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n) if n > 0 => n,
                _ => {
                    ok = false;
                    self.diag.error(
                        n.span(),
                        format!(
                            "`max_headers` must be a count of at least 1, found {}",
                            n.get_ref()
                        ),
                    );
                    defaults::MAX_HEADERS
                }
            },
        };
        let header_limit_action = match raw
            .header_limit_action
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("reject", _)) => LimitAction::Reject,
            Some(("tempfail", _)) => LimitAction::Tempfail,
            Some((other, span)) => {
                ok = false;
                self.diag.error(
                    span,
                    format!(
                        "invalid `header_limit_action` \"{other}\": use \"reject\" or \"tempfail\""
                    ),
                );
                LimitAction::Reject
            }
        };
        let oversize_action = match raw
            .oversize_action
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("truncate", _)) => OversizeAction::Truncate,
            Some(("tempfail", _)) => OversizeAction::Tempfail,
            Some(("reject", _)) => OversizeAction::Reject,
            Some((other, span)) => {
                ok = false;
                self.diag.error(
                    span,
                    format!("invalid `oversize_action` \"{other}\": use \"truncate\", \"tempfail\" or \"reject\""),
                );
                OversizeAction::Truncate
            }
        };
        let deadline = match &raw.deadline {
            None => defaults::STAGE_DEADLINE,
            Some(d) => match humantime::parse_duration(d.get_ref()) {
                Ok(v) if !v.is_zero() => v,
                _ => {
                    ok = false;
                    self.diag.error(
                        d.span(),
                        format!("`deadline` must be a duration with units such as \"20s\", found \"{}\"", d.get_ref()),
                    );
                    defaults::STAGE_DEADLINE
                }
            },
        };
        let mut daemon_names = Vec::new();
        for d in raw.daemon_names.iter().flat_map(|l| l.get_ref()) {
            daemon_names.push(d.get_ref().clone());
        }
        let authserv_id = match &raw.authserv_id {
            Some(id) => {
                // An RFC 2045 token, so that it reads back as the
                // authserv-id (RFC 8601 §2.2) and forgeries of it can be
                // recognised.
                let valid = !id.get_ref().is_empty()
                    && id
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b));
                if !valid {
                    ok = false;
                    self.diag.error(
                        id.span(),
                        format!("invalid `authserv_id` \"{}\": use a host name such as mx.example.org (RFC 8601 §2.5), without spaces or ( ) < > @ , ; : \\ \" / [ ] ? =", id.get_ref()),
                    );
                }
                id.get_ref().clone()
            }
            None => defaults::authserv_id(),
        };
        let authserv_id = raw.auth_results.unwrap_or(true).then_some(authserv_id);
        ok.then_some(PipelineSettings {
            authserv_id,
            oversize_action,
            deadline,
            refuse_at_eom: raw.refuse_at_eom.unwrap_or(false),
            daemon_names,
            quarantine_score,
            reject_score,
            error_action,
            dry_run: raw.dry_run.unwrap_or(false),
            split_transactions: raw.split_transactions.unwrap_or(false),
            quarantine_header,
            max_body_size,
            header_limits: HeaderLimits {
                count: max_headers,
                bytes: max_header_bytes,
                action: header_limit_action,
            },
        })
    }

    /// A size setting (bytes, or a string such as "512K"): the default when
    /// absent, `None` (reported) when it is not a size.
    pub(super) fn size_setting(
        &mut self,
        value: &Option<Spanned<toml::Value>>,
        key: &str,
        default: u64,
    ) -> Option<u64> {
        let Some(v) = value else {
            return Some(default);
        };
        let parsed = match v.get_ref() {
            toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
            toml::Value::String(s) => crate::config::options::parse_size(s),
            _ => None,
        };
        if parsed.is_none() {
            self.diag.error(
                v.span(),
                format!("`{key}` must be a size such as 10485760, \"512K\" or \"10M\""),
            );
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use crate::config::compile_str;
    use crate::config::registry::Registry;
    use crate::policy::StageUse;
    use std::path::Path;

    fn stage_use(src: &str) -> StageUse {
        let policy = compile_str(Path::new("t.toml"), src, &Registry::builtin())
            .unwrap_or_else(|e| panic!("{e}"));
        policy.stage_use(None)
    }

    const QUIET: StageUse = StageUse {
        refuses_at_connect: false,
        refuses_at_helo: false,
        refuses_at_mail: false,
        refuses_at_rcpt: false,
        reads_helo: true,
    };

    #[test]
    fn an_empty_pipeline_refuses_nowhere_and_reads_no_helo() {
        let u = stage_use("[pipelines.empty]\nauth_results = false\n");
        assert_eq!(
            u,
            StageUse {
                reads_helo: false,
                ..QUIET
            }
        );
    }

    #[test]
    fn a_check_refuses_at_the_stage_it_is_first_awaited() {
        let src = |decide_at: &str| {
            format!(
                "[checks.tls]\nkind = \"require_tls\"\ndecide_at = \"{decide_at}\"\n\
                 [pipelines.p]\nchecks = [\"tls\"]\n"
            )
        };
        assert_eq!(
            stage_use(&src("helo")),
            StageUse {
                refuses_at_helo: true,
                ..QUIET
            }
        );
        assert_eq!(
            stage_use(&src("mail")),
            StageUse {
                refuses_at_mail: true,
                ..QUIET
            }
        );
        assert_eq!(
            stage_use(&src("rcpt")),
            StageUse {
                refuses_at_rcpt: true,
                ..QUIET
            }
        );
        assert_eq!(stage_use(&src("eom")), QUIET);
    }

    #[test]
    fn a_check_that_only_scores_refuses_nowhere() {
        let u = stage_use(
            "[checks.tls]\nkind = \"require_tls\"\ndecide_at = \"mail\"\n\
             on_fail = \"score 1\"\non_temperror = \"ignore\"\non_permerror = \"score 2\"\n\
             [pipelines.p]\nchecks = [\"tls\"]\n",
        );
        assert_eq!(u, QUIET);
    }

    #[test]
    fn a_source_check_refuses_at_mail_and_a_destination_check_at_rcpt() {
        let u = stage_use(
            "[checks.auth]\nkind = \"require_auth\"\n\
             [pipelines.p]\n[[pipelines.p.source]]\nmatch = [\"example.org\"]\nchecks = [\"auth\"]\n",
        );
        assert_eq!(
            u,
            StageUse {
                refuses_at_mail: true,
                ..QUIET
            }
        );
        let u = stage_use(
            "[checks.auth]\nkind = \"require_auth\"\n\
             [pipelines.p]\n[[pipelines.p.destination]]\nmatch = [\"example.org\"]\nchecks = [\"auth\"]\n",
        );
        assert_eq!(
            u,
            StageUse {
                refuses_at_rcpt: true,
                ..QUIET
            }
        );
    }

    #[test]
    fn a_refusing_branch_refuses_at_rcpt_unless_refusals_wait_for_eom() {
        let tree = "[[pipelines.p.destination]]\nmatch = [\"example.org\"]\n\
                    [pipelines.p.default]\naction = \"reject\"\n";
        let u = stage_use(&format!("[pipelines.p]\n{tree}"));
        assert!(u.refuses_at_rcpt && !u.refuses_at_mail);
        let u = stage_use(&format!("[pipelines.p]\nrefuse_at_eom = true\n{tree}"));
        assert!(!u.refuses_at_rcpt);
        let u = stage_use(&format!("[pipelines.p]\ndry_run = true\n{tree}"));
        assert!(!u.refuses_at_rcpt);
        let u = stage_use("[pipelines.p]\nsplit_transactions = true\n");
        assert!(u.refuses_at_rcpt);
    }

    #[test]
    fn every_pipeline_counts_when_the_pipeline_is_chosen_per_connection() {
        let src = "[checks.auth]\nkind = \"require_auth\"\n\
                   [pipelines.a]\n[pipelines.b]\ndaemon_names = [\"submission\"]\nchecks = [\"auth\"]\n";
        let policy = compile_str(Path::new("t.toml"), src, &Registry::builtin())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(policy.stage_use(None).refuses_at_mail);
        assert!(!policy.stage_use(Some("a")).refuses_at_mail);
        assert!(!policy.stage_use(Some("a")).reads_helo);
        assert!(policy.stage_use(Some("b")).refuses_at_mail);
    }
}
