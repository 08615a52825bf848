//! The check interface; each kind is a submodule (the list of built-in kinds
//! is `config::registry`). A check is an async task
//! that looks at what is known at one stage and returns a result from the
//! RFC 8601 vocabulary; the engine maps results to actions from the config.

use crate::auth::Evidence;
pub use crate::auth_results::Status;
use crate::auth_results::{ResInfo, Results};
use crate::config::options::Options;
use crate::message::{ConnectionFacts, Envelope, Message};
use crate::stage::Stage;
use crate::tables::TableSet;
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub mod action;
pub mod arc;
pub mod authorize_sender;
pub mod command;
pub mod dkim;
pub mod dmarc;
pub mod dnsbl;
pub mod header;
pub mod iprev;
pub mod require_auth;
pub mod require_mx;
pub mod require_tls;
pub mod size;
pub mod spf;

/// The future a check's `run` returns: boxed, `Send` and `'static`, so the
/// engine can spawn it on the runtime.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a check sees: a snapshot of everything known when it was started.
#[derive(Clone, Debug)]
pub struct CheckInput {
    /// The stage at which the check was started.
    pub stage: Stage,
    /// Shared with the session (and every check it starts) until a stage
    /// changes it.
    pub connection: Arc<ConnectionFacts>,
    /// Present from MAIL FROM on.
    pub envelope: Option<Envelope>,
    /// Present at end of message.
    pub message: Option<Arc<Message>>,
    /// The MTA's queue id (`i` macro), once known.
    pub queue_id: Option<String>,
    /// What is established about the message (or, for checks that start
    /// at connect or HELO, the connection) by one check for others: DMARC
    /// reuses the SPF and DKIM facts instead of establishing them again.
    pub evidence: Arc<Evidence>,
}

/// What is known before a check's inputs are complete, for
/// [`Check::prefetch`].
pub struct Early<'a> {
    /// The envelope sender as given at MAIL FROM.
    pub sender: &'a crate::address::Address,
    /// The header that just arrived (name, value), or `None` at MAIL FROM
    /// (and at RCPT, for checks that only a recipient's branch lists).
    pub header: Option<(&'a str, &'a str)>,
    /// The message's evidence, where whatever is started is kept.
    pub evidence: &'a Evidence,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckResult {
    /// The outcome; the check's `on_<result>` keys pick the action.
    pub status: Status,
    /// Why, in a few words; may end up in an SMTP reply and in logs.
    pub reason: Option<String>,
    /// A score the check suggests, used by the `score` action without a number.
    pub score: Option<f64>,
    /// The check's results for Authentication-Results (RFC 8601 §2.2),
    /// such as `spf=pass smtp.mailfrom=example.org`; `None` when the check
    /// reports none of its own.
    #[serde(serialize_with = "crate::auth_results::serialize_results")]
    pub auth_results: Option<Vec<ResInfo>>,
    /// Whether the comment of each of `auth_results` ends with the
    /// message's disposition (` dis=none` or ` dis=quarantine`, as
    /// OpenDMARC writes it): only the engine knows what the whole policy
    /// did with the message.
    #[serde(skip)]
    pub auth_disposition: bool,
    /// Headers to add when the message is accepted (`Received-SPF`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add_headers: Vec<(String, String)>,
}

impl CheckResult {
    /// A bare result: no reason, score, Authentication-Results or headers.
    pub fn new(status: Status) -> Self {
        CheckResult {
            status,
            reason: None,
            score: None,
            auth_results: None,
            auth_disposition: false,
            add_headers: Vec::new(),
        }
    }

    /// A result with a reason and nothing else.
    pub fn with_reason(status: Status, reason: impl Into<String>) -> Self {
        CheckResult {
            reason: Some(reason.into()),
            ..CheckResult::new(status)
        }
    }

    /// The results as Authentication-Results writes them (without the
    /// disposition), as tests and logs read them.
    pub fn auth_text(&self) -> Option<String> {
        self.auth_results.as_deref().map(|r| Results(r).to_string())
    }

    /// `pass`, without a reason.
    pub fn pass() -> Self {
        CheckResult::new(Status::Pass)
    }

    /// `fail`, with the reason that may reach the SMTP reply.
    pub fn fail(reason: impl Into<String>) -> Self {
        CheckResult::with_reason(Status::Fail, reason)
    }

    /// `temperror`: something transient (DNS, a program) failed; the reason
    /// says what.
    pub fn temperror(reason: impl Into<String>) -> Self {
        CheckResult::with_reason(Status::Temperror, reason)
    }

    /// `permerror`: what the check needs is permanently broken (a malformed
    /// record); the reason says what.
    pub fn permerror(reason: impl Into<String>) -> Self {
        CheckResult::with_reason(Status::Permerror, reason)
    }
}

/// One configured check kind. Implementations hold their compiled options and
/// are shared by every session, so `run` takes `Arc<Self>` and returns a
/// `'static` future the engine can spawn.
pub trait Check: Send + Sync + 'static {
    /// The earliest stage at which the check's inputs exist. The engine starts
    /// the check then, so I/O overlaps the rest of the SMTP dialogue.
    fn inputs(&self) -> Stage;

    /// The stage whose decision needs the result, by default the input stage.
    /// A check may be awaited later than this (when the dispatch branch that
    /// lists it is only known later), never earlier than `inputs`.
    fn decides(&self) -> Stage {
        self.inputs()
    }

    /// The kind's own default action for a result, where it differs from the
    /// generic one (fail: reject; temperror, permerror: the pipeline's error
    /// action; others: ignore). The `on_<result>` keys still override it.
    fn default_action(&self, _status: Status) -> Option<action::Action> {
        None
    }

    /// The Authentication-Results method the check reports (RFC 8601 §2.7),
    /// if any: when the check ends without a fragment of its own (a timeout,
    /// a panic), the header still says `method=temperror`, so no reader takes
    /// the missing method for a verdict never asked for.
    fn auth_method(&self) -> Option<&'static str> {
        None
    }

    /// Whether the check needs the message body (so the adapter buffers it).
    fn needs_body(&self) -> bool {
        false
    }

    /// Start work whose inputs are already known, before the check itself
    /// can run: called at MAIL FROM and for every header as it arrives, for
    /// the checks that may apply to the message. What is started goes into
    /// the message's evidence, where `run` finds it. It must be
    /// cheap and must not wait; the default starts nothing.
    fn prefetch(&self, _early: &Early<'_>) {}

    /// Run the check. Errors should be returned as `Temperror` or `Permerror`
    /// results; a panic or a timeout is turned into `Temperror` by the engine.
    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult>;
}

/// What a check builder gets: its options (kind-specific keys only; the common
/// keys `kind`, `timeout`, `on_*`, `reply`, `tempfail_reply` are taken before)
/// and the named tables.
pub struct CheckBuildContext<'o, 'd, 'a> {
    /// The check's name, the `NAME` of `[checks.NAME]`.
    pub name: &'o str,
    /// The block's kind-specific keys, read and validated through it; errors
    /// are recorded there with the key's position.
    pub options: &'o mut Options<'d, 'a>,
    /// The `[tables.*]` the configuration defines, for keys that name one.
    pub tables: &'o TableSet,

    /// The configuration file's directory: relative paths resolve against it.
    pub base_dir: &'o std::path::Path,
    /// The shared resolver, built on first use.
    pub dns: &'o crate::dns::DnsProvider,
}

impl CheckBuildContext<'_, '_, '_> {
    /// The shared resolver, or `None` after naming at the block why it
    /// cannot be set up ("check \"spf\": cannot read /etc/resolv.conf: …").
    /// Kinds ask for it even when an option is wrong, so that a broken
    /// resolver configuration is named in the same run.
    pub fn resolver(&mut self) -> Option<Arc<crate::dns::Dns>> {
        match self.dns.get() {
            Ok(dns) => Some(dns),
            Err(e) => {
                let span = self.options.span();
                let what = self.options.what().to_string();
                self.options.error(span, format_args!("{what}: {e}"));
                None
            }
        }
    }
}

/// Builds one check from its options; reports errors through the options and
/// returns `None` when the block is invalid.
pub type CheckBuilder =
    Arc<dyn Fn(&mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> + Send + Sync>;
