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

/// The whole compiled configuration that a connection runs under: replaced as one
/// piece on reload, so a connection keeps the policy it started with.
pub struct Policy {
    /// The configuration file this policy was compiled from.
    pub file: PathBuf,
    /// The `[server]` settings: listeners, limits, logging.
    pub server: crate::server_config::ServerSettings,
    /// Every `[checks.NAME]` block, in config order; a `CheckId` indexes this.
    pub checks: Vec<CheckInstance>,
    /// Every `[modifiers.NAME]` block, in config order; a `ModifierId` indexes this.
    pub modifiers: Vec<ModifierInstance>,
    /// The `[tables.NAME]` that checks, modifiers and dispatch look up.
    pub tables: TableSet,
    /// The pipelines in config order; the first is the default.
    pub pipelines: Vec<Pipeline>,
    /// The resolver's settings, when a check uses DNS.
    pub resolver: Option<crate::dns::DnsSettings>,
}

impl Policy {
    /// The pipeline called `name`, if the config has one.
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// The position of the pipeline called `name` in `pipelines`, if it exists.
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

impl Policy {
    /// What the stages before end of message are used for by the pipelines
    /// a listener can run: the one `named`, or every pipeline when the
    /// pipeline is chosen per connection by `{daemon_name}` (which happens at
    /// CONNECT, after the milter negotiation that this answer feeds).
    pub fn stage_use(&self, named: Option<&str>) -> StageUse {
        self.pipelines
            .iter()
            .filter(|p| named.is_none_or(|name| name == p.name))
            .fold(StageUse::default(), |acc, p| acc.union(p.stage_use))
    }
}

/// A `[checks.NAME]` block, compiled: the check itself and what each of its results does.
pub struct CheckInstance {
    /// Shared with every report and task of the check: cloned per message.
    pub name: Arc<str>,
    /// The check's kind as written in `kind`, such as `"spf"`.
    pub kind: Arc<str>,
    /// The compiled check that the engine runs.
    pub check: Arc<dyn Check>,
    /// How long the check may run before it counts as `temperror`.
    pub timeout: Duration,
    /// Indexed by `Status` position in `Status::ALL`.
    pub actions: [Action; 7],
    /// The reply sent when the check's action is `reject`.
    pub reject_reply: Reply,
    /// The reply sent when the check's action is `tempfail`.
    pub tempfail_reply: Reply,
    /// The earliest stage at which the check's inputs exist and it can start.
    pub inputs: Stage,
    /// The stage at which its result can refuse mail, never earlier than `inputs`.
    pub decides: Stage,
}

impl CheckInstance {
    /// Whether some result of the check refuses mail: an action `reject`,
    /// `tempfail`, or `error_action` (which is one or the other). Scores and
    /// quarantine wait for end of message.
    pub fn can_refuse(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, Action::Reject | Action::Tempfail | Action::Error))
    }

    pub(crate) fn action_for(&self, status: Status) -> Action {
        let idx = Status::ALL.iter().position(|s| *s == status).unwrap_or(0);
        self.actions[idx]
    }
}

/// A `[modifiers.NAME]` block, compiled.
pub struct ModifierInstance {
    /// The block's NAME, as pipelines list it and logs show it.
    pub name: String,
    /// The modifier's kind as written in `kind`, such as `"dkim_sign"`.
    pub kind: String,
    /// The compiled modifier that the engine runs at end of message.
    pub modifier: Arc<dyn Modifier>,
}

/// What the pipeline does when something inside fails (a modifier error, a
/// check whose action is `error_action`).
#[derive(Clone, Debug, PartialEq)]
pub enum ErrorAction {
    /// Answer with this 4xx reply, so the client retries.
    Tempfail(Reply),
    /// Refuse with this 5xx reply.
    Reject(Reply),
}

/// The settings of one `[pipelines.NAME]` block, with defaults filled in.
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    /// At end of message, a total score at or above this quarantines the message.
    pub quarantine_score: Option<f64>,
    /// At end of message, a total score at or above this rejects the message.
    pub reject_score: Option<f64>,
    /// What internal failures (timeouts, panics, modifier errors) do, with the reply.
    pub error_action: ErrorAction,
    /// Decide and log, keep header edits, but refuse and reroute nothing.
    pub dry_run: bool,
    /// Answer `452 4.5.3` to a recipient whose branch differs from the first accepted one.
    pub split_transactions: bool,
    /// The header added to a quarantined message with the reason, since Postfix drops
    /// the reason a milter gives with a quarantine.
    pub quarantine_header: String,
    /// The body bytes kept for checks that read the body.
    pub max_body_size: u64,
    /// What happens to a body larger than `max_body_size`.
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
    /// 452 4.3.1, so the client can try again later.
    Tempfail,
    /// 552 5.3.4 (RFC 3463: message too big for system).
    Reject,
}

/// The bound on the headers kept per message, and what a message past it
/// gets: a refusal, never an accept with headers or checks skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Header fields kept per message.
    pub count: usize,
    /// Names and values, as received.
    pub bytes: u64,
    /// What a message past either limit gets.
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

/// A `[pipelines.NAME]` block, compiled: its settings and its dispatch tree.
pub struct Pipeline {
    /// The name that listeners and `test --pipeline` use to select it.
    pub name: String,
    /// Its settings, with defaults filled in.
    pub settings: PipelineSettings,
    /// The pipeline's global checks, which every branch runs first.
    pub checks: Vec<CheckId>,
    /// The pipeline's global modifiers, which run before source and destination ones.
    pub modifiers: Vec<ModifierId>,
    /// The top of the dispatch tree: which source block a message belongs to.
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
    /// Where before end of message this pipeline can refuse, and whether it
    /// reads HELO: what the daemon negotiates from.
    pub stage_use: StageUse,
}

impl Pipeline {
    /// Work out [`StageUse`] from the compiled tree. `checks` is the
    /// policy's check list, `has_modifiers` whether any block of the
    /// pipeline names a modifier.
    ///
    /// A stage refuses when a check is first awaited there and one of its
    /// results refuses, or (RCPT) when a branch's action refuses or
    /// `split_transactions` answers. The engine awaits at each stage what
    /// decides by then: connect and HELO the global checks, MAIL the
    /// source's (global ones included), RCPT the branch's (global, source
    /// and destination). A check already awaited at an earlier stage made
    /// its decision there; if it was still running at that stage's deadline
    /// its later refusal is not lost where the stage has no reply: the
    /// daemon answers it at the next stage that replies (end of message
    /// always does).
    ///
    /// Refusals that are no policy decision (an address that cannot be
    /// read, a modifier or table failure) can happen at any stage and do
    /// not count here: where the stage has no reply they too are answered
    /// at the next one that replies.
    pub(crate) fn compute_stage_use(
        &self,
        checks: &[CheckInstance],
        has_modifiers: bool,
    ) -> StageUse {
        let settings = &self.settings;
        let awaited = |ids: &[CheckId], by: Stage| -> Vec<CheckId> {
            ids.iter()
                .copied()
                .filter(|&id| checks[id].decides <= by)
                .collect()
        };
        // Some check in `now` that was not awaited before can refuse.
        let refuses = |now: &[CheckId], before: &[CheckId]| {
            now.iter()
                .any(|id| !before.contains(id) && checks[*id].can_refuse())
        };
        let at_connect = awaited(&self.checks, Stage::Connect);
        let at_helo = awaited(&self.checks, Stage::Helo);
        let mut use_ = StageUse {
            reads_helo: !self.all_checks.is_empty() || has_modifiers,
            ..StageUse::default()
        };
        // Dry run answers CONTINUE at every stage and keeps what it would
        // have refused for end of message (a split recipient included).
        if settings.dry_run {
            return use_;
        }
        use_.refuses_at_connect = refuses(&at_connect, &[]);
        use_.refuses_at_helo = refuses(&at_helo, &at_connect);
        use_.refuses_at_rcpt = settings.split_transactions;
        for node in self.sources.nodes() {
            let at_mail = awaited(&node.checks, Stage::Mail);
            use_.refuses_at_mail |= refuses(&at_mail, &at_helo);
            // `refuse_at_eom` answers CONTINUE to every recipient and keeps
            // the refusal for end of message.
            if settings.refuse_at_eom {
                continue;
            }
            for branch in node.destinations.entries() {
                let at_rcpt = awaited(&branch.checks, Stage::Rcpt);
                use_.refuses_at_rcpt |=
                    matches!(branch.outcome, Outcome::Reject(_) | Outcome::Tempfail(_))
                        || refuses(&at_rcpt, &at_mail);
            }
        }
        use_
    }
}

/// What a pipeline uses the stages before end of message for, so the daemon
/// asks the MTA not to wait for a reply where a stage never refuses
/// (SMFIP_NR_CONN, NR_HELO, NR_MAIL, NR_RCPT) and not to send a stage at all
/// where nothing reads it (SMFIP_NO_HELO). See [`Pipeline::compute_stage_use`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageUse {
    /// A global check decides at connect and can refuse.
    pub refuses_at_connect: bool,
    /// A global check decides at HELO and can refuse.
    pub refuses_at_helo: bool,
    /// A source's check decides at MAIL FROM and can refuse.
    pub refuses_at_mail: bool,
    /// A branch refuses recipients, a check first awaited at RCPT TO can
    /// refuse, or `split_transactions` answers there.
    pub refuses_at_rcpt: bool,
    /// Some check or modifier exists that may read the HELO name or the
    /// TLS facts that come with it.
    pub reads_helo: bool,
}

impl StageUse {
    pub(crate) fn union(self, o: StageUse) -> StageUse {
        StageUse {
            refuses_at_connect: self.refuses_at_connect || o.refuses_at_connect,
            refuses_at_helo: self.refuses_at_helo || o.refuses_at_helo,
            refuses_at_mail: self.refuses_at_mail || o.refuses_at_mail,
            refuses_at_rcpt: self.refuses_at_rcpt || o.refuses_at_rcpt,
            reads_helo: self.reads_helo || o.reads_helo,
        }
    }

    /// Whether the policy can refuse at `stage` (end of message always can).
    pub fn refuses_at(self, stage: Stage) -> bool {
        match stage {
            Stage::Connect => self.refuses_at_connect,
            Stage::Helo => self.refuses_at_helo,
            Stage::Mail => self.refuses_at_mail,
            Stage::Rcpt => self.refuses_at_rcpt,
            Stage::Eom => true,
        }
    }
}

/// Kinds of end-of-message edit, to ask the MTA for exactly what a policy
/// can use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EditKinds {
    /// Add headers.
    pub add_header: bool,
    /// Change or delete headers.
    pub change_header: bool,
    /// Add recipients.
    pub add_recipient: bool,
    /// Delete recipients.
    pub delete_recipient: bool,
    /// Change the envelope sender.
    pub change_sender: bool,
    /// Quarantine the message.
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
    /// Where it stands in the config, for people: `source example.org`.
    pub label: String,
    /// The source block's own checks.
    pub checks: Vec<CheckId>,
    /// The source block's own modifiers.
    pub modifiers: Vec<ModifierId>,
    /// Which destination branch each recipient of this source takes.
    pub destinations: Dispatch<Arc<Branch>>,
}

/// A leaf of the tree: what happens to a recipient.
pub struct Branch {
    /// The branch's position in `Pipeline::branches`.
    pub id: usize,
    /// Where it stands in the config, for people: `source example.org > destination joe@example.com`.
    pub label: String,
    /// Global, source and destination checks in that order, each once.
    pub checks: Vec<CheckId>,
    /// The destination's own modifiers (global and source ones run earlier).
    pub modifiers: Vec<ModifierId>,
    /// What the recipient gets: accepted, refused, quarantined or discarded.
    pub outcome: Outcome,
    /// The address that replaces the recipient, when the destination has a `redirect`.
    pub redirect: Option<Address>,
    /// The addresses that receive a copy, from the destination's `copy`.
    pub copy: Vec<Address>,
}

/// What a destination does with a recipient, as written in its `action`.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Deliver as the checks decide.
    Accept,
    /// Refuse the recipient with this 5xx reply.
    Reject(Reply),
    /// Refuse the recipient with this 4xx reply, so the client retries.
    Tempfail(Reply),
    /// Accept, and hold the message in the MTA's quarantine with this reason.
    Quarantine(String),
    /// Accept the recipient and drop it at end of message.
    Discard,
}

impl Outcome {
    /// The action's name as written in the config: `"accept"`, `"reject"` and so on.
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
    /// The client's SASL login name, from `auth_users`.
    AuthUser,
    /// The client's address, from `networks`.
    Network,
    /// The MTA's `{daemon_name}`, from `daemon_names`.
    DaemonName,
    /// The full address, from `addresses`.
    Address,
    /// The address's domain, from `domains`.
    Domain,
    /// Membership in a table, from `tables`.
    Table,
    /// No selector matched; the default block applies.
    Default,
}

impl MatchedBy {
    /// The lower-case words used for this in the `test` report and in logs.
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
    /// Full addresses (as normalized keys) and what each selects.
    pub by_address: HashMap<String, T>,
    /// Domains and what each selects.
    pub by_domain: HashMap<String, T>,
    /// Tables and what membership in each selects, in config order.
    pub tables: Vec<(Arc<Table>, T)>,
    /// What applies when nothing else matches.
    pub default: T,
}

impl<T> Dispatch<T> {
    /// Every entry, the default included, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &T> {
        self.by_address
            .values()
            .chain(self.by_domain.values())
            .chain(self.tables.iter().map(|(_, t)| t))
            .chain(std::iter::once(&self.default))
    }

    /// The entry for `address` and how it was chosen, by the precedence above.
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
    /// SASL login names (as normalized keys) and the source each selects.
    pub by_auth_user: HashMap<String, Arc<SourceNode>>,
    /// `auth_users = ["*"]`: any authenticated user.
    pub any_auth_user: Option<Arc<SourceNode>>,
    /// Sorted by prefix length, longest first.
    pub by_network: Vec<(IpNet, Arc<SourceNode>)>,
    /// `{daemon_name}` values and the source each selects.
    pub by_daemon_name: HashMap<String, Arc<SourceNode>>,
    /// The envelope sender's dispatch, when no connection fact matched.
    pub by_sender: Dispatch<Arc<SourceNode>>,
}

/// What the source dispatch looks at.
pub struct SourceFacts<'a> {
    /// The client's SASL login name, if it authenticated.
    pub auth_user: Option<&'a str>,
    /// The client's IP address, if the MTA sent one.
    pub client_ip: Option<IpAddr>,
    /// The MTA's `{daemon_name}` macro, if it sent one.
    pub daemon_name: Option<&'a str>,
    /// The envelope sender (MAIL FROM).
    pub sender: &'a Address,
}

impl SourceDispatch {
    /// Every source block, the default included, in no particular order (a
    /// block selected in several ways may come more than once).
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<SourceNode>> {
        self.by_auth_user
            .values()
            .chain(self.any_auth_user.iter())
            .chain(self.by_network.iter().map(|(_, n)| n))
            .chain(self.by_daemon_name.values())
            .chain(self.by_sender.entries())
    }

    /// The source block for these facts and how it was chosen: auth user, then
    /// network, then daemon name, then the envelope sender.
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
