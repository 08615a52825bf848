//! The configuration file as written: serde structures that refuse unknown
//! keys and keep spans, so every later error can name a line and column.
//! Check, modifier and table blocks stay free-form maps here; their keys are
//! read by each kind's builder through [`Options`](super::options::Options).

use super::options::RawOptions;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

pub(crate) type Named<T> = BTreeMap<Spanned<String>, Spanned<T>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub checks: Named<RawOptions>,
    #[serde(default)]
    pub modifiers: Named<RawOptions>,
    #[serde(default)]
    pub tables: Named<RawOptions>,
    #[serde(default)]
    pub pipelines: Named<RawPipeline>,
    pub server: Option<Spanned<RawServer>>,
    pub dns: Option<Spanned<RawDns>>,
}

/// `[dns]`: the resolver every DNS check shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    pub nameservers: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout: Option<Spanned<String>>,
    pub attempts: Option<Spanned<i64>>,
    pub cache_size: Option<Spanned<i64>>,
}

/// `[server]`: how the daemon listens and runs. Changes here need a restart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    #[serde(default)]
    pub listen: Vec<Spanned<RawListener>>,
    pub max_connections: Option<Spanned<i64>>,
    pub worker_threads: Option<Spanned<i64>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub connection_timeout: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
    pub log_level: Option<Spanned<String>>,
    pub metrics_listen: Option<Spanned<String>>,
}

/// `[[server.listen]]`: one socket the MTA connects to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub address: Spanned<String>,
    pub pipeline: Option<Spanned<String>>,
    pub socket_mode: Option<Spanned<String>>,
    pub socket_owner: Option<Spanned<String>>,
    pub socket_group: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = r#"a table like { code = 550, status = "5.7.1", text = "..." }"#
)]
pub(crate) struct RawReply {
    pub code: Option<u16>,
    pub status: Option<String>,
    pub text: Option<String>,
}

/// One pipeline: its settings plus the top level of its dispatch tree.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPipeline {
    pub quarantine_score: Option<Spanned<f64>>,
    pub reject_score: Option<Spanned<f64>>,
    pub error_action: Option<Spanned<String>>,
    pub error_reply: Option<Spanned<RawReply>>,
    pub dry_run: Option<bool>,
    pub split_transactions: Option<bool>,
    pub quarantine_header: Option<Spanned<String>>,
    pub max_body_size: Option<Spanned<toml::Value>>,
    pub oversize_action: Option<Spanned<String>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<toml::Value>>,
    pub header_limit_action: Option<Spanned<String>>,
    pub deadline: Option<Spanned<String>>,
    pub refuse_at_eom: Option<bool>,
    pub authserv_id: Option<Spanned<String>>,
    pub auth_results: Option<bool>,

    // The top level of the dispatch tree. These repeat `RawBlock`'s fields
    // because serde's `flatten` cannot be combined with `deny_unknown_fields`
    // or with spans.
    #[serde(rename = "match")]
    pub matches: Option<Spanned<Vec<Spanned<String>>>>,
    pub table: Option<Spanned<String>>,
    pub networks: Option<Spanned<Vec<Spanned<String>>>>,
    pub auth_users: Option<Spanned<Vec<Spanned<String>>>>,
    pub daemon_names: Option<Spanned<Vec<Spanned<String>>>>,
    pub checks: Option<Spanned<Vec<Spanned<String>>>>,
    pub modify: Option<Spanned<Vec<Spanned<String>>>>,
    pub action: Option<Spanned<String>>,
    pub reply: Option<Spanned<RawReply>>,
    pub reason: Option<Spanned<String>>,
    pub redirect: Option<Spanned<String>>,
    pub copy: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub source: Vec<Spanned<RawBlock>>,
    #[serde(default)]
    pub destination: Vec<Spanned<RawBlock>>,
    pub default: Option<Box<Spanned<RawBlock>>>,
}

impl RawPipeline {
    /// Split off the dispatch tree's top level as a block of its own.
    pub(crate) fn take_tree(&mut self) -> RawBlock {
        RawBlock {
            matches: self.matches.take(),
            table: self.table.take(),
            networks: self.networks.take(),
            auth_users: self.auth_users.take(),
            daemon_names: self.daemon_names.take(),
            checks: self.checks.take(),
            modify: self.modify.take(),
            action: self.action.take(),
            reply: self.reply.take(),
            reason: self.reason.take(),
            redirect: self.redirect.take(),
            copy: self.copy.take(),
            source: std::mem::take(&mut self.source),
            destination: std::mem::take(&mut self.destination),
            default: self.default.take(),
        }
    }
}

/// A dispatch block: `source`, `destination`, `default`, or a pipeline's top
/// level. Which keys make sense depends on where the block stands; the
/// compiler checks that.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBlock {
    /// Senders or recipients: `user@example.org`, `example.org`, `<>`, `postmaster`.
    #[serde(rename = "match")]
    pub matches: Option<Spanned<Vec<Spanned<String>>>>,
    /// Match by membership in a named table.
    pub table: Option<Spanned<String>>,
    /// `source` only: client networks in CIDR form.
    pub networks: Option<Spanned<Vec<Spanned<String>>>>,
    /// `source` only: SASL user names; `*` is any authenticated user.
    pub auth_users: Option<Spanned<Vec<Spanned<String>>>>,
    /// `source` only: the MTA's `{daemon_name}`.
    pub daemon_names: Option<Spanned<Vec<Spanned<String>>>>,

    pub checks: Option<Spanned<Vec<Spanned<String>>>>,
    pub modify: Option<Spanned<Vec<Spanned<String>>>>,

    pub action: Option<Spanned<String>>,
    pub reply: Option<Spanned<RawReply>>,
    pub reason: Option<Spanned<String>>,
    pub redirect: Option<Spanned<String>>,
    pub copy: Option<Spanned<Vec<Spanned<String>>>>,

    #[serde(default)]
    pub source: Vec<Spanned<RawBlock>>,
    #[serde(default)]
    pub destination: Vec<Spanned<RawBlock>>,
    pub default: Option<Box<Spanned<RawBlock>>>,
}

impl RawBlock {
    pub(crate) fn has_dispatch(&self) -> bool {
        !self.source.is_empty() || !self.destination.is_empty() || self.default.is_some()
    }

    /// The span of the first outcome key, if the block has one.
    pub(crate) fn outcome_span(&self) -> Option<std::ops::Range<usize>> {
        self.action
            .as_ref()
            .map(Spanned::span)
            .or_else(|| self.reply.as_ref().map(Spanned::span))
            .or_else(|| self.reason.as_ref().map(Spanned::span))
            .or_else(|| self.redirect.as_ref().map(Spanned::span))
            .or_else(|| self.copy.as_ref().map(Spanned::span))
    }

    pub(crate) fn selector_span(&self) -> Option<std::ops::Range<usize>> {
        self.matches
            .as_ref()
            .map(Spanned::span)
            .or_else(|| self.table.as_ref().map(Spanned::span))
            .or_else(|| self.networks.as_ref().map(Spanned::span))
            .or_else(|| self.auth_users.as_ref().map(Spanned::span))
            .or_else(|| self.daemon_names.as_ref().map(Spanned::span))
    }
}
