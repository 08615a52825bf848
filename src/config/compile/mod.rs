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
use crate::reply::{Reply, ReplyClass, ReplyError};
use crate::server_config::{ListenAddress, ListenerSettings, LogFormat, ServerSettings};
use crate::stage::Stage;
use crate::tables::{Table, TableSet, normalize_key};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use toml::Spanned;

mod kinds;
mod pipeline;
mod server;
mod tree;

/// Whether a `log_level` filter means what it says. tracing takes a bare
/// word that is not a level as a target name at the most verbose level and
/// silences everything else, so `"inf"` would turn all logging off: every
/// directive must be a level or `target=level`.
fn check_log_filter(filter: &str) -> Result<(), LogFilterError> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()));
    let directives: Vec<&str> = filter.split(',').map(str::trim).collect();
    if directives.iter().all(|d| d.is_empty()) {
        return Err(LogFilterError::Empty);
    }
    for d in directives.into_iter().filter(|d| !d.is_empty()) {
        match d.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() && is_level(level) => {}
            Some(_) => return Err(LogFilterError::NotTargetLevel(d.to_string())),
            None if is_level(d) => {}
            None => return Err(LogFilterError::NotLevel(d.to_string())),
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)?;
    Ok(())
}

/// Why a `log_level` filter is refused; the text follows "invalid
/// `log_level` \"FILTER\": ".
#[derive(Debug, thiserror::Error)]
enum LogFilterError {
    #[error("it is empty")]
    Empty,
    /// A directive with `=` that is not `target=level`.
    #[error("\"{}\" is not target=level", .0.escape_debug())]
    NotTargetLevel(String),
    /// A bare word that is not a level (tracing would take it as a target).
    #[error("\"{}\" is not a level", .0.escape_debug())]
    NotLevel(String),
    /// Refused by tracing itself.
    #[error(transparent)]
    Filter(#[from] tracing_subscriber::filter::ParseError),
}

/// Why each default is what it is:
pub mod defaults {
    use std::time::Duration;

    /// A check's own timeout. Well under Postfix's 30 s per milter command, so
    /// a slow check becomes temperror before the MTA gives up on us.
    pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
    /// The header that carries the quarantine reason, because Postfix 3.7
    /// drops the reason a milter gives with QUARANTINE.
    pub(crate) const QUARANTINE_HEADER: &str = "X-Quarantine-Reason";
    pub(crate) const QUARANTINE_REASON: &str = "quarantined by policy";
    /// Body bytes kept per message for body checks; the same as Postfix's
    /// default `message_size_limit` (10240000), rounded to 10 MiB.
    pub(crate) const MAX_BODY_SIZE: u64 = 10 << 20;
    /// Header fields kept per message. Legitimate mail carries tens, a
    /// long-travelled list message a few hundred; Postfix stops counting
    /// Received: at 50 (`hopcount_limit`). A client sending more is
    /// flooding, and each field costs memory until end of message.
    pub(crate) const MAX_HEADERS: usize = 1000;
    /// Header bytes kept per message (names and values). Postfix cuts one
    /// header at `header_size_limit` (102400 bytes); ten such headers is
    /// far past real mail. With `max_connections` messages at once this
    /// bounds what headers can hold: 100 connections, 100 MiB.
    pub(crate) const MAX_HEADER_BYTES: u64 = 1 << 20;
    /// The longest a stage waits for checks: below Postfix's 30 s
    /// `milter_command_timeout`, so the MTA hears from us before it gives up.
    pub(crate) const STAGE_DEADLINE: Duration = Duration::from_secs(20);

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

    let dns_settings = server::dns_settings(raw.dns.take(), registry, &mut diag);
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

fn build_reply(spec: &RawReply, class: ReplyClass) -> Result<Reply, ReplyError> {
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
}

/// A check's `reply` or `tempfail_reply`, checked against the class of
/// reply it is for.
fn reply_option(
    options: &mut Options<'_, '_>,
    key: &'static str,
    spec: Option<RawReply>,
    class: ReplyClass,
) -> Option<Reply> {
    match build_reply(&spec?, class) {
        Ok(r) => Some(r),
        Err(e) => {
            let span = options.span_of(key).unwrap_or_else(|| options.span());
            options.error(span, format!("invalid `{key}`: {e}"));
            None
        }
    }
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
            let checked = check_log_filter(good);
            assert!(checked.is_ok(), "{good}: {checked:?}");
        }
        for bad in ["", " , ", "inf", "dispatch_milter", "x=loud", "=info"] {
            assert!(check_log_filter(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn log_filter_error_texts() {
        let text = |f: &str| check_log_filter(f).unwrap_err().to_string();
        assert_eq!(text(" , "), "it is empty");
        assert_eq!(text("x=loud"), "\"x=loud\" is not target=level");
        assert_eq!(text("inf\t"), "\"inf\" is not a level");
        assert_eq!(text("in\u{7}f"), "\"in\\u{7}f\" is not a level");
    }
}
