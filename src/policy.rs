//! The compiled, immutable policy: check and modifier instances resolved to
//! indexes, and per pipeline a dispatch tree ready for lookups. Built once by
//! the config compiler and shared behind an `Arc`; nothing here is parsed or
//! looked up by name at message time.

use crate::address::Address;
use crate::checks::action::Action;
use crate::checks::{Check, Status};
use crate::modifiers::Modifier;
use crate::reply::Reply;
use crate::stage::Stage;
use crate::tables::{AddressMatch, Table, TableSet};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(crate) type CheckId = usize;
pub(crate) type ModifierId = usize;

pub struct Policy {
    pub file: PathBuf,
    pub server: crate::server_config::ServerSettings,
    pub checks: Vec<CheckInstance>,
    pub modifiers: Vec<ModifierInstance>,
    pub tables: TableSet,
    pub pipelines: Vec<Pipeline>,
    /// The resolver's settings, when a check uses DNS.
    pub resolver: Option<crate::dns::DnsSettings>,
}

impl Policy {
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    pub fn pipeline_index(&self, name: &str) -> Option<usize> {
        self.pipelines.iter().position(|p| p.name == name)
    }

    /// The pipeline whose `daemon_names` lists `daemon_name`, if one does.
    pub(crate) fn pipeline_for_daemon_name(&self, daemon_name: &str) -> Option<usize> {
        self.pipelines
            .iter()
            .position(|p| p.settings.daemon_names.iter().any(|n| n == daemon_name))
    }

    /// The pipeline for a connection, for the daemon and `test` alike: the
    /// one `named` (a listener's `pipeline`, `test --pipeline`), else the
    /// one whose `daemon_names` lists `{daemon_name}`, else the first.
    /// `None` only when the named pipeline does not exist: never another
    /// pipeline in its place.
    pub fn choose_pipeline(&self, named: Option<&str>, daemon_name: Option<&str>) -> Option<usize> {
        match named {
            Some(name) => self.pipeline_index(name),
            None => Some(
                daemon_name
                    .and_then(|d| self.pipeline_for_daemon_name(d))
                    .unwrap_or(0),
            ),
        }
    }
}

pub struct CheckInstance {
    /// Shared with every report and task of the check: cloned per message.
    pub name: Arc<str>,
    pub kind: Arc<str>,
    pub check: Arc<dyn Check>,
    pub timeout: Duration,
    /// Indexed by `Status` position in `Status::ALL`.
    pub actions: [Action; 7],
    pub reject_reply: Reply,
    pub tempfail_reply: Reply,
    pub inputs: Stage,
    pub decides: Stage,
}

impl CheckInstance {
    pub(crate) fn action_for(&self, status: Status) -> Action {
        let idx = Status::ALL.iter().position(|s| *s == status).unwrap_or(0);
        self.actions[idx]
    }
}

pub struct ModifierInstance {
    pub name: String,
    pub kind: String,
    pub modifier: Arc<dyn Modifier>,
}

/// What the pipeline does when something inside fails (a modifier error, a
/// check whose action is `error_action`).
#[derive(Clone, Debug, PartialEq)]
pub enum ErrorAction {
    Tempfail(Reply),
    Reject(Reply),
}

#[derive(Clone, Debug)]
pub struct PipelineSettings {
    pub quarantine_score: Option<f64>,
    pub reject_score: Option<f64>,
    pub error_action: ErrorAction,
    pub dry_run: bool,
    pub split_transactions: bool,
    pub quarantine_header: String,
    pub max_body_size: u64,
    pub oversize_action: OversizeAction,
    /// How many header fields, and bytes of them, a message may carry.
    pub header_limits: HeaderLimits,
    /// The longest any one stage waits for checks.
    pub deadline: Duration,
    /// Refuse recipients at end of message instead of at RCPT TO (for
    /// Postfix's `non_smtpd_milters`, where a refused RCPT is an error).
    pub refuse_at_eom: bool,
    /// `{daemon_name}` values that select this pipeline on a listener that
    /// has no pipeline of its own.
    pub daemon_names: Vec<String>,
    /// Our authserv-id for Authentication-Results; `None` adds no such header.
    pub authserv_id: Option<String>,
}

/// What happens when a message body is larger than `max_body_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OversizeAction {
    /// Keep the first `max_body_size` bytes; body checks see that much and
    /// the message is marked truncated.
    Truncate,
    Tempfail,
    Reject,
}

/// The bound on the headers kept per message, and what a message past it
/// gets: a refusal, never an accept with headers or checks skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLimits {
    pub count: usize,
    /// Names and values, as received.
    pub bytes: u64,
    pub action: LimitAction,
}

/// What a message over a hard limit gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitAction {
    /// 552 5.3.4 (RFC 3463: message too big for system).
    Reject,
    /// 452 4.3.1, so a client in error can come back.
    Tempfail,
}

pub struct Pipeline {
    pub name: String,
    pub settings: PipelineSettings,
    pub checks: Vec<CheckId>,
    pub modifiers: Vec<ModifierId>,
    pub sources: SourceDispatch,
    /// Every branch of the tree, indexed by `Branch::id`.
    pub branches: Vec<Arc<Branch>>,
    /// Every check any branch of this pipeline can run, in config order;
    /// those whose inputs exist at connect or HELO start there.
    pub all_checks: Vec<CheckId>,
    /// Whether any check or modifier looks at the body; if none does, the
    /// body is counted but not kept.
    pub needs_body: bool,
    /// The kinds of edit this pipeline can produce.
    pub edit_kinds: EditKinds,
}

/// Kinds of end-of-message edit, to ask the MTA for exactly what a policy
/// can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EditKinds {
    pub add_header: bool,
    /// Change or delete headers.
    pub change_header: bool,
    pub add_recipient: bool,
    pub delete_recipient: bool,
    pub change_sender: bool,
    pub quarantine: bool,
}

impl EditKinds {
    pub(crate) fn union(self, o: EditKinds) -> EditKinds {
        EditKinds {
            add_header: self.add_header || o.add_header,
            change_header: self.change_header || o.change_header,
            add_recipient: self.add_recipient || o.add_recipient,
            delete_recipient: self.delete_recipient || o.delete_recipient,
            change_sender: self.change_sender || o.change_sender,
            quarantine: self.quarantine || o.quarantine,
        }
    }
}

/// A source block, compiled: what applies to all mail from this source.
pub struct SourceNode {
    pub label: String,
    pub checks: Vec<CheckId>,
    pub modifiers: Vec<ModifierId>,
    pub destinations: Dispatch<Arc<Branch>>,
}

/// A leaf of the tree: what happens to a recipient.
pub struct Branch {
    pub id: usize,
    /// Where it stands in the config, for people: `source example.org > destination joe@example.com`.
    pub label: String,
    /// Global, source and destination checks in that order, each once.
    pub checks: Vec<CheckId>,
    /// The destination's own modifiers (global and source ones run earlier).
    pub modifiers: Vec<ModifierId>,
    pub outcome: Outcome,
    pub redirect: Option<Address>,
    pub copy: Vec<Address>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Accept,
    Reject(Reply),
    Tempfail(Reply),
    Quarantine(String),
    Discard,
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Accept => "accept",
            Outcome::Reject(_) => "reject",
            Outcome::Tempfail(_) => "tempfail",
            Outcome::Quarantine(_) => "quarantine",
            Outcome::Discard => "discard",
        }
    }
}

/// How a block was chosen, for the `test` report and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    AuthUser,
    Network,
    DaemonName,
    Address,
    Domain,
    Table,
    Default,
}

impl MatchedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchedBy::AuthUser => "auth user",
            MatchedBy::Network => "network",
            MatchedBy::DaemonName => "daemon name",
            MatchedBy::Address => "address",
            MatchedBy::Domain => "domain",
            MatchedBy::Table => "table",
            MatchedBy::Default => "default",
        }
    }
}

/// Address-based dispatch of one level. Precedence: full address, then
/// domain, then table membership (address keys before domain keys, then
/// config order), then the default.
pub struct Dispatch<T> {
    pub by_address: HashMap<String, T>,
    pub by_domain: HashMap<String, T>,
    pub tables: Vec<(Arc<Table>, T)>,
    pub default: T,
}

impl<T> Dispatch<T> {
    pub fn select(&self, address: &Address) -> (&T, MatchedBy) {
        if let Some(t) = self.by_address.get(&address.key()) {
            return (t, MatchedBy::Address);
        }
        if let Some(t) = address.domain().and_then(|d| self.by_domain.get(d)) {
            return (t, MatchedBy::Domain);
        }
        let mut best: Option<(AddressMatch, &T)> = None;
        for (table, t) in &self.tables {
            if let Some((how, _)) = table.lookup_address(address)
                && best.as_ref().is_none_or(|(b, _)| how < *b)
            {
                best = Some((how, t));
            }
        }
        match best {
            Some((_, t)) => (t, MatchedBy::Table),
            None => (&self.default, MatchedBy::Default),
        }
    }
}

/// Source dispatch: facts about the connection first (they cannot be forged
/// by the client), then the envelope sender.
pub struct SourceDispatch {
    pub by_auth_user: HashMap<String, Arc<SourceNode>>,
    /// `auth_users = ["*"]`: any authenticated user.
    pub any_auth_user: Option<Arc<SourceNode>>,
    /// Sorted by prefix length, longest first.
    pub by_network: Vec<(IpNet, Arc<SourceNode>)>,
    pub by_daemon_name: HashMap<String, Arc<SourceNode>>,
    pub by_sender: Dispatch<Arc<SourceNode>>,
}

/// What the source dispatch looks at.
pub struct SourceFacts<'a> {
    pub auth_user: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub daemon_name: Option<&'a str>,
    pub sender: &'a Address,
}

impl SourceDispatch {
    pub fn select(&self, facts: &SourceFacts<'_>) -> (&Arc<SourceNode>, MatchedBy) {
        if let Some(user) = facts.auth_user {
            if let Some(n) = self.by_auth_user.get(&crate::tables::normalize_key(user)) {
                return (n, MatchedBy::AuthUser);
            }
            if let Some(n) = &self.any_auth_user {
                return (n, MatchedBy::AuthUser);
            }
        }
        if let Some(ip) = facts.client_ip {
            let ip = crate::ip::canonical(ip);
            if let Some((_, n)) = self.by_network.iter().find(|(net, _)| net.contains(&ip)) {
                return (n, MatchedBy::Network);
            }
        }
        if let Some(n) = facts.daemon_name.and_then(|d| self.by_daemon_name.get(d)) {
            return (n, MatchedBy::DaemonName);
        }
        self.by_sender.select(facts.sender)
    }
}
