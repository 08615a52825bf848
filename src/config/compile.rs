//! Compile a parsed configuration into a [`Policy`]: build every table, check
//! and modifier once, resolve names to indexes, and turn each pipeline's
//! dispatch tree into lookup maps. All meaning-level errors are collected with
//! their line and column; a configuration with any error yields no policy.

use super::error::{ConfigErrors, Diagnostics, did_you_mean};
use super::options::{Options, RawOptions};
use super::raw::{Named, RawBlock, RawConfig, RawDns, RawPipeline, RawReply, RawServer};
use super::registry::Registry;
use crate::address::{Address, normalize_domain};
use crate::checks::action::Action;
use crate::checks::{CheckBuildContext, Status};
use crate::edits::valid_header_name;
use crate::modifiers::ModifierBuildContext;
use crate::policy::*;
use crate::reply::{Reply, ReplyClass};
use crate::server_config::{ListenAddress, ListenerSettings, LogFormat, ServerSettings};
use crate::stage::Stage;
use crate::tables::{Table, TableSet, normalize_key};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// Whether a `log_level` filter means what it says. tracing takes a bare
/// word that is not a level as a target name at the most verbose level and
/// silences everything else, so `"inf"` would turn all logging off: every
/// directive must be a level or `target=level`.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()));
    let directives: Vec<&str> = filter.split(',').map(str::trim).collect();
    if directives.iter().all(|d| d.is_empty()) {
        return Err("it is empty".to_string());
    }
    for d in directives.into_iter().filter(|d| !d.is_empty()) {
        match d.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() && is_level(level) => {}
            Some(_) => return Err(format!("\"{}\" is not target=level", d.escape_debug())),
            None if is_level(d) => {}
            None => return Err(format!("\"{}\" is not a level", d.escape_debug())),
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Why each default is what it is:
pub mod defaults {
    use std::time::Duration;

    /// A check's own timeout. Well under Postfix's 30 s per milter command, so
    /// a slow check becomes temperror before the MTA gives up on us.
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
    /// The header that carries the quarantine reason, because Postfix 3.7
    /// drops the reason a milter gives with QUARANTINE.
    pub const QUARANTINE_HEADER: &str = "X-Quarantine-Reason";
    pub const QUARANTINE_REASON: &str = "quarantined by policy";
    /// Body bytes kept per message for body checks; the same as Postfix's
    /// default `message_size_limit` (10240000), rounded to 10 MiB.
    pub const MAX_BODY_SIZE: u64 = 10 << 20;
    /// Header fields kept per message. Legitimate mail carries tens, a
    /// long-travelled list message a few hundred; Postfix stops counting
    /// Received: at 50 (`hopcount_limit`). A client sending more is
    /// flooding, and each field costs memory until end of message.
    pub const MAX_HEADERS: usize = 1000;
    /// Header bytes kept per message (names and values). Postfix cuts one
    /// header at `header_size_limit` (102400 bytes); ten such headers is
    /// far past real mail. With `max_connections` messages at once this
    /// bounds what headers can hold: 100 connections, 100 MiB.
    pub const MAX_HEADER_BYTES: u64 = 1 << 20;
    /// The longest a stage waits for checks: below Postfix's 30 s
    /// `milter_command_timeout`, so the MTA hears from us before it gives up.
    pub const STAGE_DEADLINE: Duration = Duration::from_secs(20);

    /// Our name in Authentication-Results: this host's name, as RFC 8601
    /// §2.5 suggests; "localhost" if the system has none.
    pub fn authserv_id() -> String {
        let name = gethostname::gethostname().to_string_lossy().into_owned();
        if name.is_empty() || !name.is_ascii() {
            "localhost".to_string()
        } else {
            name.to_ascii_lowercase()
        }
    }
}

/// Compile configuration text. `file` names the source in messages; relative
/// table paths resolve against its directory.
pub fn compile_str(file: &Path, source: &str, registry: &Registry) -> Result<Policy, ConfigErrors> {
    let mut diag = Diagnostics::new(file, source);
    let mut raw: RawConfig = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            let (message, hint) = explain_toml_error(e.message());
            diag.push(e.span(), message, hint);
            return Err(diag.into_errors());
        }
    };
    // Absolute, so a daemon that changes directory still finds its tables
    // and programs (a bare `-c milter-config.toml` has an empty parent).
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let base_dir = absolute.parent().unwrap_or(Path::new(".")).to_path_buf();

    let mut tables = TableSet::new();
    for (name, block) in in_file_order(std::mem::take(&mut raw.tables)) {
        let what = format!("table \"{}\"", name.get_ref());
        let mut options = Options::new(what, block.span(), block.into_inner(), &mut diag);
        let table = Table::build(name.get_ref(), &mut options, &base_dir);
        options.finish();
        // A table that failed keeps an empty stand-in, so the blocks that
        // name it do not report a second, misleading "unknown table".
        let t = table.unwrap_or_else(|| Table::inline(name.get_ref(), HashMap::new()));
        tables.insert(name.into_inner(), Arc::new(t));
    }

    let dns_settings = dns_settings(raw.dns.take(), registry, &mut diag);
    let mut compiler = Compiler {
        dns: crate::dns::DnsProvider::new(dns_settings),
        base_dir,
        diag,
        registry,
        tables,
        checks: Vec::new(),
        check_ids: HashMap::new(),
        modifiers: Vec::new(),
        modifier_ids: HashMap::new(),
        broken: std::collections::HashSet::new(),
        branches: Vec::new(),
        pipeline_modifiers: Vec::new(),
    };
    for (name, block) in in_file_order(std::mem::take(&mut raw.checks)) {
        compiler.check(name, block);
    }
    for (name, block) in in_file_order(std::mem::take(&mut raw.modifiers)) {
        compiler.modifier(name, block);
    }
    let mut pipelines = Vec::new();
    let pipeline_blocks = in_file_order(std::mem::take(&mut raw.pipelines));
    if pipeline_blocks.is_empty() {
        compiler.diag.push(
            None,
            "no pipeline defined".to_string(),
            Some("add a [pipelines.NAME] block; see milter-config.toml".to_string()),
        );
    }
    let pipeline_names: Vec<String> = pipeline_blocks
        .iter()
        .map(|(n, _)| n.get_ref().clone())
        .collect();
    for (name, block) in pipeline_blocks {
        if let Some(p) = compiler.pipeline(name, block) {
            pipelines.push(p);
        }
    }
    let server = compiler.server(raw.server.take(), &pipeline_names);
    // Which pipeline serves a {daemon_name} must not depend on file order.
    let mut claimed: HashMap<&str, &str> = HashMap::new();
    for p in &pipelines {
        for d in &p.settings.daemon_names {
            if let Some(first) = claimed.insert(d, &p.name) {
                compiler.diag.push(
                    None,
                    format!(
                        "daemon name \"{d}\" selects both pipeline \"{first}\" and pipeline \"{}\"",
                        p.name
                    ),
                    Some("list each {daemon_name} in one pipeline's `daemon_names`".to_string()),
                );
            }
        }
    }

    let Compiler {
        diag,
        tables,
        checks,
        modifiers,
        dns,
        ..
    } = compiler;
    if diag.has_errors() {
        return Err(diag.into_errors());
    }
    Ok(Policy {
        server,
        file: file.to_path_buf(),
        checks,
        modifiers,
        tables,
        pipelines,
        resolver: dns.settings_in_use(),
    })
}

fn dns_settings(
    raw: Option<Spanned<RawDns>>,
    registry: &Registry,
    diag: &mut Diagnostics,
) -> crate::dns::DnsSettings {
    let mut s = crate::dns::DnsSettings::default();
    if let Some(raw) = raw {
        let raw = raw.into_inner();
        if let Some(list) = raw.nameservers {
            let mut servers = Vec::new();
            for n in list.get_ref() {
                // A bare address means the standard port.
                let parsed = n.get_ref().parse::<std::net::SocketAddr>().or_else(|_| {
                    n.get_ref()
                        .parse::<std::net::IpAddr>()
                        .map(|ip| (ip, 53).into())
                });
                match parsed {
                    Ok(a) => servers.push(a),
                    Err(_) => diag.error_hint(
                        n.span(),
                        format!("invalid name server \"{}\"", n.get_ref()),
                        "write IP or IP:PORT, such as 127.0.0.1 or 127.0.0.1:5353 or [::1]:53",
                    ),
                }
            }
            if servers.is_empty() {
                diag.error(
                    list.span(),
                    "`nameservers` is empty; remove it to use /etc/resolv.conf",
                );
            }
            s.nameservers = Some(servers);
        }
        if let Some(t) = raw.timeout {
            match humantime::parse_duration(t.get_ref()) {
                Ok(d) if !d.is_zero() => s.timeout = d,
                _ => diag.error(
                    t.span(),
                    format!(
                        "`timeout` must be a duration such as \"5s\", found \"{}\"",
                        t.get_ref()
                    ),
                ),
            }
        }
        if let Some(a) = raw.attempts {
            match usize::try_from(*a.get_ref()) {
                Ok(n) if (1..=10).contains(&n) => s.attempts = n,
                _ => diag.error(a.span(), "`attempts` must be between 1 and 10"),
            }
        }
        if let Some(c) = raw.cache_size {
            match u64::try_from(*c.get_ref()) {
                Ok(n) => s.cache_size = n,
                Err(_) => diag.error(c.span(), "`cache_size` must not be negative"),
            }
        }
    }
    if let Some(servers) = &registry.nameservers {
        s.nameservers = Some(servers.clone());
    }
    s
}

/// serde names the expected keys; turn that into a hint.
fn explain_toml_error(message: &str) -> (String, Option<String>) {
    let message = message.trim().to_string();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once("`, expected ")
    {
        let candidates: Vec<&str> = expected
            .split(['`', ',', ' '])
            .filter(|s| !s.is_empty() && *s != "one" && *s != "of" && *s != "or")
            .collect();
        let hint = match did_you_mean(field, candidates.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("known keys here: {}", candidates.join(", ")),
        };
        return (format!("unknown key `{field}`"), Some(hint));
    }
    (message, None)
}

fn in_file_order<T>(named: Named<T>) -> Vec<(Spanned<String>, Spanned<T>)> {
    let mut v: Vec<_> = named.into_iter().collect();
    v.sort_by_key(|(name, _)| name.span().start);
    v
}

struct Compiler<'r, 'a> {
    dns: crate::dns::DnsProvider,
    base_dir: std::path::PathBuf,
    diag: Diagnostics<'a>,
    registry: &'r Registry,
    tables: TableSet,
    checks: Vec<CheckInstance>,
    check_ids: HashMap<String, CheckId>,
    modifiers: Vec<ModifierInstance>,
    modifier_ids: HashMap<String, ModifierId>,
    /// Checks and modifiers that are defined but failed to build: their own
    /// errors are reported; naming them elsewhere is not a second error.
    broken: std::collections::HashSet<String>,
    branches: Vec<Arc<Branch>>,
    /// Every modifier the pipeline being compiled names, at any level.
    pipeline_modifiers: Vec<ModifierId>,
}

/// Duplicate detection for one level of the tree.
#[derive(Default)]
struct Level {
    seen: HashMap<String, Range<usize>>,
}

/// A source level under construction.
struct SourceLevel {
    by_auth_user: HashMap<String, Arc<SourceNode>>,
    any_auth_user: Option<Arc<SourceNode>>,
    by_network: Vec<(IpNet, Arc<SourceNode>)>,
    by_daemon_name: HashMap<String, Arc<SourceNode>>,
    by_address: HashMap<String, Arc<SourceNode>>,
    by_domain: HashMap<String, Arc<SourceNode>>,
    tables: Vec<(Arc<Table>, Arc<SourceNode>)>,
}

/// The address side of a block's selectors.
#[derive(Default)]
struct AddressSelectors {
    addresses: Vec<String>,
    domains: Vec<String>,
    table: Option<Arc<Table>>,
}

fn parse_action(s: &str) -> Option<Action> {
    match s.trim() {
        "ignore" => Some(Action::Ignore),
        "reject" => Some(Action::Reject),
        "tempfail" => Some(Action::Tempfail),
        "quarantine" => Some(Action::Quarantine),
        "error_action" => Some(Action::Error),
        "score" => Some(Action::Score(None)),
        other => {
            let n = other.strip_prefix("score")?.trim().parse::<f64>().ok()?;
            n.is_finite().then_some(Action::Score(Some(n)))
        }
    }
}

fn build_reply(spec: &RawReply, class: ReplyClass) -> Result<Reply, String> {
    let default = match class {
        ReplyClass::Permanent => Reply::default_reject(),
        ReplyClass::Temporary => Reply::default_tempfail(),
    };
    let code = spec.code.unwrap_or(default.code);
    let status = match &spec.status {
        Some(s) => s.clone(),
        None => default.status.clone(),
    };
    let text = spec.text.as_deref().unwrap_or(&default.text);
    Reply::new(class, code, &status, text)
}

fn dedup_extend(into: &mut Vec<usize>, more: &[usize]) {
    for id in more {
        if !into.contains(id) {
            into.push(*id);
        }
    }
}

impl Compiler<'_, '_> {
    fn position_text(&self, span: &Range<usize>) -> String {
        let (line, col) = self.diag.position(span.start);
        format!("line {line}, column {col}")
    }

    fn check(&mut self, name: Spanned<String>, block: Spanned<RawOptions>) {
        let what = format!("check \"{}\"", name.get_ref());
        let span = block.span();
        let registry = self.registry;
        let tables = &self.tables;
        let mut options = Options::new(what, span, block.into_inner(), &mut self.diag);
        let Some(kind) = options.required_string("kind") else {
            // Without a kind every other key would read as unknown: say only
            // what is missing.
            self.broken.insert(name.into_inner());
            return;
        };
        let Some(builder) = registry.checks.get(kind.get_ref()) else {
            let hint =
                match did_you_mean(kind.get_ref(), registry.checks.keys().map(String::as_str)) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => format!(
                        "known kinds: {}",
                        registry
                            .checks
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
            options.diag().error_hint(
                kind.span(),
                format!("unknown check kind \"{}\"", kind.get_ref()),
                hint,
            );
            self.broken.insert(name.into_inner());
            return;
        };
        let timeout = options
            .duration("timeout")
            .unwrap_or(defaults::CHECK_TIMEOUT);
        // What the administrator wrote per result; defaults come once the
        // check is built, since a kind may have its own.
        let mut configured: [Option<Action>; 7] = [None; 7];
        for (i, status) in Status::ALL.iter().enumerate() {
            let key: &'static str = match status {
                Status::Pass => "on_pass",
                Status::Fail => "on_fail",
                Status::Softfail => "on_softfail",
                Status::Neutral => "on_neutral",
                Status::None => "on_none",
                Status::Temperror => "on_temperror",
                Status::Permerror => "on_permerror",
            };
            if let Some(v) = options.string(key) {
                match parse_action(v.get_ref()) {
                    Some(a) => configured[i] = Some(a),
                    None => options.error(
                        v.span(),
                        format!(
                            "invalid action \"{}\" for `{key}`: use \"ignore\", \"reject\", \"tempfail\", \"quarantine\", \"error_action\", \"score\" or \"score N\"",
                            v.get_ref()
                        ),
                    ),
                }
            }
        }
        let reject_reply = reply_option(&mut options, "reply", ReplyClass::Permanent);
        let tempfail_reply = reply_option(&mut options, "tempfail_reply", ReplyClass::Temporary);
        let decide_at = options.string("decide_at");
        let mut ctx = CheckBuildContext {
            name: name.get_ref(),
            options: &mut options,
            tables,
            base_dir: &self.base_dir,
            dns: &self.dns,
        };
        let built = builder(&mut ctx);
        let decides = match (&built, decide_at) {
            (Some(check), Some(stage)) => match Stage::parse(stage.get_ref()) {
                Some(s) if s >= check.inputs() => s,
                Some(_) => {
                    options.error(
                        stage.span(),
                        format!(
                            "`decide_at` \"{}\" comes before the stage this check's inputs exist (\"{}\")",
                            stage.get_ref(),
                            check.inputs()
                        ),
                    );
                    check.decides()
                }
                None => {
                    options.error(
                        stage.span(),
                        format!(
                            "invalid stage \"{}\": use connect, helo, mail, rcpt or eom",
                            stage.get_ref()
                        ),
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
            kind: kind.into_inner().into(),
            inputs: check.inputs(),
            decides,
            check,
            timeout,
            actions,
            reject_reply: reject_reply.unwrap_or_else(Reply::default_reject),
            tempfail_reply: tempfail_reply.unwrap_or_else(Reply::default_tempfail),
        });
    }

    fn modifier(&mut self, name: Spanned<String>, block: Spanned<RawOptions>) {
        let what = format!("modifier \"{}\"", name.get_ref());
        let span = block.span();
        let registry = self.registry;
        let tables = &self.tables;
        let mut options = Options::new(what, span, block.into_inner(), &mut self.diag);
        let Some(kind) = options.required_string("kind") else {
            self.broken.insert(name.into_inner());
            return;
        };
        let Some(builder) = registry.modifiers.get(kind.get_ref()) else {
            let hint = match did_you_mean(
                kind.get_ref(),
                registry.modifiers.keys().map(String::as_str),
            ) {
                Some(s) => format!("did you mean \"{s}\"?"),
                None => format!(
                    "known kinds: {}",
                    registry
                        .modifiers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            options.diag().error_hint(
                kind.span(),
                format!("unknown modifier kind \"{}\"", kind.get_ref()),
                hint,
            );
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
            kind: kind.into_inner(),
            modifier,
        });
    }

    /// Resolve a `checks` or `modify` list to ids: each name defined, once.
    fn resolve_names(
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

    fn resolve_checks(&mut self, list: &Option<Spanned<Vec<Spanned<String>>>>) -> Vec<CheckId> {
        let names = std::mem::take(&mut self.check_ids);
        let ids = self.resolve_names(list, "check", &names);
        self.check_ids = names;
        ids
    }

    fn resolve_modifiers(
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

    fn pipeline(&mut self, name: Spanned<String>, block: Spanned<RawPipeline>) -> Option<Pipeline> {
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
        Some(Pipeline {
            edit_kinds,
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
        })
    }

    fn server(&mut self, raw: Option<Spanned<RawServer>>, pipelines: &[String]) -> ServerSettings {
        let mut settings = ServerSettings::default();
        let Some(raw) = raw else {
            return settings;
        };
        let raw = raw.into_inner();
        if !raw.listen.is_empty() {
            settings.listeners.clear();
        }
        let mut seen: HashMap<String, Range<usize>> = HashMap::new();
        for l in raw.listen {
            let l = l.into_inner();
            let address = match ListenAddress::parse(l.address.get_ref()) {
                Ok(a) => a,
                Err(e) => {
                    self.diag.error(l.address.span(), e);
                    continue;
                }
            };
            // Port 0 asks for any free port: two of them never clash.
            let any_port = matches!(&address, ListenAddress::Inet(a) if a.port() == 0);
            if !any_port && let Some(first) = seen.get(&address.to_string()) {
                let first = self.position_text(first);
                self.diag.error(
                    l.address.span(),
                    format!("\"{address}\" is listed twice (first at {first})"),
                );
                continue;
            }
            seen.insert(address.to_string(), l.address.span());
            if let Some(p) = &l.pipeline
                && !pipelines.contains(p.get_ref())
            {
                let hint = did_you_mean(p.get_ref(), pipelines.iter().map(String::as_str))
                    .map(|s| format!("did you mean \"{s}\"?"))
                    .unwrap_or_else(|| format!("pipelines: {}", pipelines.join(", ")));
                self.diag
                    .error_hint(p.span(), format!("no pipeline \"{}\"", p.get_ref()), hint);
            }
            let is_unix = matches!(address, ListenAddress::Unix(_));
            for (key, v) in [
                ("socket_mode", &l.socket_mode),
                ("socket_owner", &l.socket_owner),
                ("socket_group", &l.socket_group),
            ] {
                if let Some(v) = v
                    && !is_unix
                {
                    self.diag
                        .error(v.span(), format!("`{key}` only applies to unix: sockets"));
                }
            }
            let socket_mode = l.socket_mode.as_ref().and_then(|m| {
                match u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8) {
                    Ok(v) if v <= 0o777 => Some(v),
                    _ => {
                        self.diag.error(m.span(), format!("invalid `socket_mode` \"{}\": write an octal mode such as \"0660\"", m.get_ref()));
                        None
                    }
                }
            });
            settings.listeners.push(ListenerSettings {
                address,
                pipeline: l.pipeline.map(Spanned::into_inner),
                socket_mode,
                socket_owner: l.socket_owner.map(Spanned::into_inner),
                socket_group: l.socket_group.map(Spanned::into_inner),
            });
        }
        if let Some(m) = raw.max_connections {
            // Each connection needs a file descriptor; past a million the
            // number is a typo, and the milter library would refuse it.
            match usize::try_from(*m.get_ref()) {
                Ok(v) if (1..=1_000_000).contains(&v) => settings.max_connections = v,
                _ => self
                    .diag
                    .error(m.span(), "`max_connections` must be between 1 and 1000000"),
            }
        }
        if let Some(w) = raw.worker_threads {
            match usize::try_from(*w.get_ref()) {
                Ok(v) if (1..=1024).contains(&v) => settings.worker_threads = Some(v),
                _ => self.diag.error(
                    w.span(),
                    "`worker_threads` must be between 1 and 1024; leave it out for half the CPUs",
                ),
            }
        }
        if let Some(g) = raw.shutdown_grace {
            match humantime::parse_duration(g.get_ref()) {
                Ok(d) => settings.shutdown_grace = d,
                Err(_) => self.diag.error(
                    g.span(),
                    format!(
                        "`shutdown_grace` must be a duration such as \"30s\", found \"{}\"",
                        g.get_ref()
                    ),
                ),
            }
        }
        if let Some(t) = raw.connection_timeout {
            // Under a second cuts off every MTA that pauses to think; past a
            // day the number is a typo (the MTA's own timeouts end far
            // sooner).
            match humantime::parse_duration(t.get_ref()) {
                Ok(d) if (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(86_400)).contains(&d) => {
                    settings.connection_timeout = d
                }
                _ => self.diag.error(
                    t.span(),
                    format!(
                        "`connection_timeout` must be a duration from \"1s\" to \"1day\", such as \"10min\", found \"{}\"",
                        t.get_ref()
                    ),
                ),
            }
        }
        if let Some(f) = raw.log_format {
            match f.get_ref().as_str() {
                "text" => settings.log_format = LogFormat::Text,
                "json" => settings.log_format = LogFormat::Json,
                other => self.diag.error(
                    f.span(),
                    format!("invalid `log_format` \"{other}\": use \"text\" or \"json\""),
                ),
            }
        }
        if let Some(l) = raw.log_level {
            match check_log_filter(l.get_ref()) {
                Ok(()) => settings.log_level = l.into_inner(),
                Err(why) => self.diag.error_hint(
                    l.span(),
                    format!("invalid `log_level` \"{}\": {why}", l.get_ref().escape_debug()),
                    "use error, warn, info, debug, trace or off, or a filter such as \"info,dispatch_milter::message=warn\"",
                ),
            }
        }
        if let Some(m) = raw.metrics_listen {
            match m.get_ref().parse::<std::net::SocketAddr>() {
                Ok(a) => settings.metrics_listen = Some(a),
                Err(_) => self.diag.error(
                    m.span(),
                    format!(
                        "invalid `metrics_listen` \"{}\": write IP:PORT, such as 127.0.0.1:9357",
                        m.get_ref()
                    ),
                ),
            }
        }
        settings
    }

    /// Which kinds of edit the pipeline can ever produce, so the daemon asks
    /// the MTA for exactly those.
    fn edit_kinds(
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

    fn pipeline_settings(&mut self, raw: &RawPipeline) -> Option<PipelineSettings> {
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
    fn size_setting(
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
            toml::Value::String(s) => super::options::parse_size(s),
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

    /// Record a selector key at a level, reporting a duplicate.
    fn claim(&mut self, level: &mut Level, key: String, shown: &str, span: Range<usize>) -> bool {
        if let Some(first) = level.seen.get(&key) {
            let first = self.position_text(first);
            self.diag.error_hint(
                span,
                format!("{shown} is matched by two blocks at this level"),
                format!("it is first matched at {first}; each address, domain, network, user or table may appear once per level"),
            );
            return false;
        }
        level.seen.insert(key, span);
        true
    }

    fn address_selectors(&mut self, block: &RawBlock, level: &mut Level) -> AddressSelectors {
        let mut sel = AddressSelectors::default();
        for m in block.matches.iter().flat_map(|l| l.get_ref()) {
            let text = m.get_ref().trim();
            let is_address =
                text.contains('@') || text == "<>" || text.eq_ignore_ascii_case("postmaster");
            if is_address {
                match Address::parse_config(text) {
                    Ok(addr) => {
                        let key = addr.key();
                        if self.claim(
                            level,
                            format!("a:{key}"),
                            &format!("address \"{text}\""),
                            m.span(),
                        ) {
                            sel.addresses.push(key);
                        }
                    }
                    Err(e) => self.diag.error_hint(
                        m.span(),
                        e,
                        "write a full address (user@example.org), a domain (example.org), \"<>\" or \"postmaster\"",
                    ),
                }
            } else {
                match normalize_domain(text) {
                    Ok(d) => {
                        if self.claim(level, format!("d:{d}"), &format!("domain \"{text}\""), m.span()) {
                            sel.domains.push(d);
                        }
                    }
                    Err(e) => self.diag.error_hint(
                        m.span(),
                        e.to_string(),
                        "write a domain (example.org), an address (user@example.org), \"<>\" or \"postmaster\"",
                    ),
                }
            }
        }
        if let Some(t) = &block.table {
            match self.tables.get(t.get_ref()).cloned() {
                Some(table) => {
                    if self.claim(
                        level,
                        format!("t:{}", t.get_ref()),
                        &format!("table \"{}\"", t.get_ref()),
                        t.span(),
                    ) {
                        sel.table = Some(table);
                    }
                }
                None => {
                    let hint = did_you_mean(t.get_ref(), self.tables.keys().map(String::as_str))
                        .map(|s| format!("did you mean \"{s}\"?"))
                        .unwrap_or_else(|| "define it in a [tables.NAME] block".to_string());
                    self.diag.error_hint(
                        t.span(),
                        format!("unknown table \"{}\"", t.get_ref()),
                        hint,
                    );
                }
            }
        }
        sel
    }

    fn source_block(
        &mut self,
        block: Spanned<RawBlock>,
        global_checks: &[CheckId],
        level: &mut Level,
        sources: &mut SourceLevel,
    ) {
        let span = block.span();
        let block = block.into_inner();
        if block.selector_span().is_none() {
            self.diag.error_hint(
                span.clone(),
                "a source block needs a selector",
                "add `match`, `table`, `networks`, `auth_users` or `daemon_names`; for everything else use default",
            );
            return;
        }
        let label = describe_selectors(&block, "source");
        let selectors = self.address_selectors(&block, level);
        let mut networks = Vec::new();
        for n in block.networks.iter().flat_map(|l| l.get_ref()) {
            let parsed = n
                .get_ref()
                .parse::<IpNet>()
                .or_else(|_| n.get_ref().parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => {
                    let net = net.trunc();
                    if self.claim(
                        level,
                        format!("n:{net}"),
                        &format!("network \"{}\"", n.get_ref()),
                        n.span(),
                    ) {
                        networks.push(net);
                    }
                }
                Err(_) => self.diag.error_hint(
                    n.span(),
                    format!("invalid network \"{}\"", n.get_ref()),
                    "write an address or a CIDR network such as 192.0.2.0/24 or 2001:db8::/32",
                ),
            }
        }
        let mut users = Vec::new();
        for u in block.auth_users.iter().flat_map(|l| l.get_ref()) {
            let key = normalize_key(u.get_ref());
            if key.is_empty() {
                self.diag.error(u.span(), "empty user name in `auth_users`");
            } else if self.claim(
                level,
                format!("u:{key}"),
                &format!("user \"{}\"", u.get_ref()),
                u.span(),
            ) {
                users.push(key);
            }
        }
        let mut daemons = Vec::new();
        for d in block.daemon_names.iter().flat_map(|l| l.get_ref()) {
            if self.claim(
                level,
                format!("m:{}", d.get_ref()),
                &format!("daemon name \"{}\"", d.get_ref()),
                d.span(),
            ) {
                daemons.push(d.get_ref().clone());
            }
        }
        let node = self.source_level(&block, &label, global_checks);
        for key in selectors.addresses {
            sources.by_address.insert(key, node.clone());
        }
        for d in selectors.domains {
            sources.by_domain.insert(d, node.clone());
        }
        if let Some(t) = selectors.table {
            sources.tables.push((t, node.clone()));
        }
        for net in networks {
            sources.by_network.push((net, node.clone()));
        }
        for u in users {
            if u == "*" {
                sources.any_auth_user = Some(node.clone());
            } else {
                sources.by_auth_user.insert(u, node.clone());
            }
        }
        for d in daemons {
            sources.by_daemon_name.insert(d, node.clone());
        }
    }

    /// A block at source level: it may hold destination blocks and a default;
    /// without them its own outcome is its default destination.
    fn source_level(
        &mut self,
        block: &RawBlock,
        label: &str,
        global_checks: &[CheckId],
    ) -> Arc<SourceNode> {
        for s in &block.source {
            self.diag.error(
                s.span(),
                "a source block cannot contain source blocks; source blocks belong at the pipeline's top level",
            );
        }
        let mut checks = global_checks.to_vec();
        let own = self.resolve_checks(&block.checks);
        dedup_extend(&mut checks, &own);
        let modifiers = self.resolve_modifiers(&block.modify);

        let has_dispatch = !block.destination.is_empty() || block.default.is_some();
        if has_dispatch && let Some(span) = block.outcome_span() {
            self.diag.error_hint(
                span,
                "an outcome next to destination or default blocks",
                "move it into this block's default",
            );
        }
        let mut level = Level::default();
        let mut by_address = HashMap::new();
        let mut by_domain = HashMap::new();
        let mut tables = Vec::new();
        for dest in &block.destination {
            let dest_span = dest.span();
            let dest = dest.get_ref();
            self.reject_nested_dispatch(dest, "a destination block");
            for (field, span) in [
                ("networks", dest.networks.as_ref().map(Spanned::span)),
                ("auth_users", dest.auth_users.as_ref().map(Spanned::span)),
                (
                    "daemon_names",
                    dest.daemon_names.as_ref().map(Spanned::span),
                ),
            ] {
                if let Some(span) = span {
                    self.diag.error(
                        span,
                        format!("`{field}` can only select a source block, not a destination"),
                    );
                }
            }
            if dest.matches.is_none() && dest.table.is_none() {
                self.diag.error_hint(
                    dest_span,
                    "a destination block needs a selector",
                    "add `match` or `table`; for everything else use default",
                );
                continue;
            }
            let sel = self.address_selectors(dest, &mut level);
            let dest_label = describe_selectors(dest, "destination");
            let branch = self.leaf(dest, &format!("{label} > {dest_label}"), &checks);
            for key in sel.addresses {
                by_address.insert(key, branch.clone());
            }
            for d in sel.domains {
                by_domain.insert(d, branch.clone());
            }
            if let Some(t) = sel.table {
                tables.push((t, branch.clone()));
            }
        }
        let default = match &block.default {
            Some(d) => {
                let d_ref = d.get_ref();
                self.reject_nested_dispatch(d_ref, "the default of a destination level");
                if let Some(span) = d_ref.selector_span() {
                    self.diag.error(
                        span,
                        "a default block matches everything; remove the selector",
                    );
                }
                self.leaf(d_ref, &format!("{label} > default"), &checks)
            }
            None if has_dispatch => {
                self.leaf(&RawBlock::default(), &format!("{label} > default"), &checks)
            }
            None => {
                // The block reads as its own default: its outcome is the
                // default destination's; its checks and modifiers stay at
                // source level, which runs them in the same order.
                let outcome_only = RawBlock {
                    action: block.action.clone(),
                    reply: block.reply.clone(),
                    reason: block.reason.clone(),
                    redirect: block.redirect.clone(),
                    copy: block.copy.clone(),
                    ..RawBlock::default()
                };
                self.leaf(&outcome_only, &format!("{label} > default"), &checks)
            }
        };
        Arc::new(SourceNode {
            label: label.to_string(),
            checks,
            modifiers,
            destinations: Dispatch {
                by_address,
                by_domain,
                tables,
                default,
            },
        })
    }

    fn reject_nested_dispatch(&mut self, block: &RawBlock, what: &str) {
        if let Some(s) = block.source.first() {
            self.diag.error_hint(
                s.span(),
                format!("a source block inside {what} is not allowed"),
                "nest destination blocks inside source blocks, not the other way round",
            );
        }
        if let Some(d) = block.destination.first() {
            self.diag.error(
                d.span(),
                format!("destination blocks cannot be nested inside {what}"),
            );
        }
        if let Some(d) = &block.default {
            self.diag.error(
                d.span(),
                format!("a default block cannot be nested inside {what}"),
            );
        }
    }

    /// A leaf: what happens to a recipient.
    fn leaf(&mut self, block: &RawBlock, label: &str, inherited_checks: &[CheckId]) -> Arc<Branch> {
        let mut checks = inherited_checks.to_vec();
        let own = self.resolve_checks(&block.checks);
        dedup_extend(&mut checks, &own);
        let modifiers = self.resolve_modifiers(&block.modify);
        // One message has one sender: a rewrite chosen per recipient cannot
        // apply, and silently doing nothing would surprise.
        for name in block.modify.iter().flat_map(|l| l.get_ref()) {
            let Some(&id) = self.modifier_ids.get(name.get_ref()) else {
                continue;
            };
            if self.modifiers[id].modifier.effects().sender {
                self.diag.error_hint(
                    name.span(),
                    format!(
                        "modifier \"{}\" rewrites the sender, which cannot depend on the recipient",
                        name.get_ref()
                    ),
                    "list it in the pipeline's or a source block's `modify`",
                );
            }
        }
        let action = block.action.as_ref();
        let action_name = action.map_or("accept", |a| a.get_ref().as_str());
        let reply_spec = block
            .reply
            .as_ref()
            .map(|r| r.get_ref().clone())
            .unwrap_or_default();
        let reply_span = block.reply.as_ref().map(Spanned::span);
        let reply_for =
            |class: ReplyClass, diag: &mut Diagnostics| match build_reply(&reply_spec, class) {
                Ok(r) => r,
                Err(e) => {
                    diag.error(
                        reply_span.clone().unwrap_or(0..0),
                        format!("invalid reply: {e}"),
                    );
                    Reply::default_reject()
                }
            };
        let outcome = match action_name {
            "accept" => Outcome::Accept,
            "reject" => Outcome::Reject(reply_for(ReplyClass::Permanent, &mut self.diag)),
            "tempfail" => Outcome::Tempfail(reply_for(ReplyClass::Temporary, &mut self.diag)),
            "quarantine" => Outcome::Quarantine(
                block
                    .reason
                    .as_ref()
                    .map(|r| crate::edits::sanitize_value(r.get_ref()))
                    .unwrap_or_else(|| defaults::QUARANTINE_REASON.to_string()),
            ),
            "discard" => Outcome::Discard,
            other => {
                if let Some(a) = action {
                    self.diag.error(
                        a.span(),
                        format!("invalid action \"{other}\": use \"accept\", \"reject\", \"tempfail\", \"quarantine\" or \"discard\""),
                    );
                }
                Outcome::Accept
            }
        };
        if let Some(span) = reply_span.clone()
            && !matches!(outcome, Outcome::Reject(_) | Outcome::Tempfail(_))
        {
            self.diag.error(
                span,
                "`reply` only goes with action \"reject\" or \"tempfail\"",
            );
        }
        if let Some(r) = &block.reason
            && !matches!(outcome, Outcome::Quarantine(_))
        {
            self.diag
                .error(r.span(), "`reason` only goes with action \"quarantine\"");
        }
        let delivers = matches!(outcome, Outcome::Accept | Outcome::Quarantine(_));
        let redirect = block.redirect.as_ref().and_then(|r| {
            if !delivers {
                self.diag.error(
                    r.span(),
                    format!("`redirect` cannot go with action \"{action_name}\""),
                );
            }
            self.delivery_address(r)
        });
        let copy = block
            .copy
            .iter()
            .flat_map(|l| l.get_ref())
            .filter_map(|c| {
                if !delivers {
                    self.diag.error(
                        c.span(),
                        format!("`copy` cannot go with action \"{action_name}\""),
                    );
                }
                self.delivery_address(c)
            })
            .collect();
        let branch = Arc::new(Branch {
            id: self.branches.len(),
            label: label.to_string(),
            checks,
            modifiers,
            outcome,
            redirect,
            copy,
        });
        self.branches.push(branch.clone());
        branch
    }

    fn delivery_address(&mut self, s: &Spanned<String>) -> Option<Address> {
        match Address::parse_config(s.get_ref()) {
            Ok(a) if a.domain().is_some() => Some(a),
            Ok(_) => {
                self.diag.error(
                    s.span(),
                    format!("\"{}\" needs a domain: write user@example.org", s.get_ref()),
                );
                None
            }
            Err(e) => {
                self.diag.error(s.span(), e);
                None
            }
        }
    }
}

fn reply_option(
    options: &mut Options<'_, '_>,
    key: &'static str,
    class: ReplyClass,
) -> Option<Reply> {
    let v = options.value(key)?;
    let spec: RawReply = match v.get_ref().clone().try_into() {
        Ok(spec) => spec,
        Err(e) => {
            options.error(
                v.span(),
                format!("`{key}` must be a table like {{ code = 550, status = \"5.7.1\", text = \"...\" }}: {}", e.message().trim()),
            );
            return None;
        }
    };
    match build_reply(&spec, class) {
        Ok(r) => Some(r),
        Err(e) => {
            options.error(v.span(), format!("invalid `{key}`: {e}"));
            None
        }
    }
}

fn describe_selectors(block: &RawBlock, what: &str) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &block.matches {
        parts.extend(m.get_ref().iter().map(|s| s.get_ref().clone()));
    }
    if let Some(t) = &block.table {
        parts.push(format!("table:{}", t.get_ref()));
    }
    if let Some(n) = &block.networks {
        parts.extend(n.get_ref().iter().map(|s| s.get_ref().clone()));
    }
    if let Some(u) = &block.auth_users {
        parts.extend(u.get_ref().iter().map(|s| format!("user:{}", s.get_ref())));
    }
    if let Some(d) = &block.daemon_names {
        parts.extend(
            d.get_ref()
                .iter()
                .map(|s| format!("daemon:{}", s.get_ref())),
        );
    }
    let mut shown = parts.iter().take(3).cloned().collect::<Vec<_>>().join(" ");
    if parts.len() > 3 {
        shown.push_str(" ...");
    }
    format!("{what} {shown}")
}

/// Time a duration value for display in `check`'s summary.
pub fn describe_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::check_log_filter;

    #[test]
    fn log_filters_must_name_levels() {
        for good in [
            "info",
            "WARN",
            "off",
            "warn,dispatch_milter::message=info",
            "dispatch_milter=debug",
        ] {
            assert_eq!(check_log_filter(good), Ok(()), "{good}");
        }
        for bad in ["", " , ", "inf", "dispatch_milter", "x=loud", "=info"] {
            assert!(check_log_filter(bad).is_err(), "{bad:?} accepted");
        }
    }
}
