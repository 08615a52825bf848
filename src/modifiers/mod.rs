//! The modifier interface; each kind is a submodule (the list of built-in
//! kinds is `config::registry`). Modifiers run
//! serially, in the order the config lists them (global, then source, then
//! destination), so their combined effect is predictable. Envelope rewrites
//! happen as the envelope arrives (dispatch may depend on them); header edits
//! are collected at end of message into the message's edit list.

use crate::address::Address;
use crate::config::options::Options;
use crate::edits::{EditList, InvalidHeaderName};
use crate::message::{ConnectionFacts, Envelope, Message};
use crate::tables::TableSet;
use std::sync::Arc;

pub mod add_header;
pub mod alias;
pub mod arc_seal;
pub mod dkim_sign;
pub mod remove_header;
pub mod rewrite_rcpt;
pub mod rewrite_sender;
pub mod strip_plus;

/// What a modifier sees at end of message.
pub struct MessageContext<'m> {
    /// What is known of the SMTP client.
    pub connection: &'m ConnectionFacts,
    /// Sender and recipients, as given and as rewritten.
    pub envelope: &'m Envelope,
    /// Headers and body as received.
    pub message: &'m Message,
    /// The MTA's queue id, when it sent one.
    pub queue_id: Option<&'m str>,
    /// The name of the pipeline the message is in.
    pub pipeline: &'m str,
    /// The Authentication-Results this hop adds, if it adds one.
    pub auth_results: Option<&'m crate::auth_results::AuthResults>,
}

/// Which parts of a message a modifier can change; used to negotiate milter
/// actions and to compare branches for `split_transactions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// It may change the envelope sender.
    pub sender: bool,
    /// It may add or remove recipients.
    pub recipients: bool,
    /// It may add, change or delete headers.
    pub headers: bool,
}

/// Why an envelope rewrite failed. The message then gets the pipeline's
/// error action: a wrong or partial rewrite would misroute mail. Addresses,
/// patterns and table values are kept as given and shown escaped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// A pattern's replacement made something that is not `local@domain`.
    #[error(
        "pattern \"{}\" rewrote \"{}\" to \"{}\", which is not an address with a domain: fix the pattern or the replacement",
        .pattern.escape_debug(), .address.escape_debug(), .result.escape_debug()
    )]
    PatternResult {
        /// The regex that matched, as configured.
        pattern: String,
        /// The address it matched, as the MTA spelled it.
        address: String,
        /// What the replacement made of it.
        result: String,
    },
    /// A rewrite table's entry for the address has no value.
    #[error(
        "table \"{}\" has no address for \"{}\": give the entry a value",
        .table.escape_debug(), .address.escape_debug()
    )]
    EmptyEntry {
        /// The table's name.
        table: String,
        /// The address looked up, as the MTA spelled it.
        address: String,
    },
    /// A table value that is not `local@domain` (or `@domain`).
    #[error(
        "table \"{}\" maps \"{}\" to \"{}\", which is not an address with a domain: fix the table entry",
        .table.escape_debug(), .address.escape_debug(), .value.escape_debug()
    )]
    TableValue {
        /// The table's name.
        table: String,
        /// The address whose entry holds the value, as spelled.
        address: String,
        /// The value as the table holds it.
        value: String,
    },
    /// An alias entry with no targets: dropping the recipient would lose
    /// mail over a typo.
    #[error(
        "table \"{}\" has no addresses for \"{}\": list at least one target",
        .table.escape_debug(), .address.escape_debug()
    )]
    NoAliasTargets {
        /// The alias table's name.
        table: String,
        /// The alias whose entry is empty, as spelled.
        address: String,
    },
    /// An alias expansion past one of its limits; `address` is the
    /// recipient whose expansion failed.
    #[error(
        "alias expansion of \"{}\" exceeds {limit}: check table \"{}\" for long alias chains or oversized lists",
        .address.escape_debug(), .table.escape_debug()
    )]
    AliasLimit {
        /// The recipient being expanded, as the MTA spelled it.
        address: String,
        /// The alias table's name.
        table: String,
        /// Which limit, and its value.
        limit: AliasLimit,
    },
}

/// The limit an alias expansion went past, with its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AliasLimit {
    /// Table lookups for one recipient.
    #[error("{0} table lookups")]
    Lookups(usize),
    /// Alias levels.
    #[error("{0} levels")]
    Depth(usize),
    /// Distinct addresses in the result.
    #[error("{0} addresses")]
    Addresses(usize),
}

/// Why a modifier's header edits failed at end of message. The message then
/// gets the pipeline's error action and no edit at all is sent: a message
/// half edited, or sent on unsigned when it should be signed, is worse.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// A header edit whose name is not a field name.
    #[error(transparent)]
    Header(#[from] InvalidHeaderName),
    /// The body was cut at `max_body_size`; a signature over part of it
    /// would not verify.
    #[error(
        "the body is larger than the pipeline's max_body_size and was not kept whole, so it cannot be signed; raise max_body_size"
    )]
    Truncated,
    /// mail-auth could not read the header block to seal it.
    #[error("the message cannot be parsed for sealing")]
    Unparsable,
    /// This hop's `arc` check could not validate the chain (a temporary
    /// failure), so the seal's `cv=` is unknown.
    #[error(
        "the message's ARC chain could not be validated (temperror), so the seal's cv= is unknown; the client should try again"
    )]
    ArcTemperror,
    /// One DKIM signature could not be made.
    #[error("signing as d={domain} s={selector} failed: {source}")]
    Sign {
        /// The signing domain, `d=`.
        domain: String,
        /// The key's selector, `s=`.
        selector: String,
        /// The signer's error.
        source: dkim_sign::SignError,
    },
    /// The ARC set could not be made.
    #[error("sealing as d={domain} s={selector} failed: {source}")]
    Seal {
        /// The sealing domain, `d=`.
        domain: String,
        /// The key's selector, `s=`.
        selector: String,
        /// mail-auth's error.
        source: mail_auth::Error,
    },

    /// mail-auth's signature gave no header text.
    #[error("mail-auth wrote no DKIM-Signature header")]
    NoSignatureHeader,
    /// mail-auth's ARC set did not give its three headers.
    #[error("mail-auth wrote {0} ARC headers instead of 3")]
    ArcHeaderCount(usize),
    /// The failure of a modifier kind registered from outside this crate,
    /// in its own words.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// One modifier: what it may change, and the changes themselves.
pub trait Modifier: Send + Sync + 'static {
    /// What the modifier may change, for milter negotiation.
    fn effects(&self) -> Effects;

    /// Whether the modifier needs the message body at end of message.
    fn needs_body(&self) -> bool {
        false
    }

    /// Signers (DKIM, ARC) run after every other modifier of the message,
    /// whatever the config order, so the signature covers the final headers.
    fn runs_last(&self) -> bool {
        false
    }

    /// A new sender, or `None` to leave it as it is.
    fn rewrite_sender(&self, _sender: &Address) -> Result<Option<Address>, RewriteError> {
        Ok(None)
    }

    /// The addresses that replace this recipient (one or several), or `None`
    /// to leave it as it is.
    fn rewrite_recipient(
        &self,
        _recipient: &Address,
    ) -> Result<Option<Vec<Address>>, RewriteError> {
        Ok(None)
    }

    /// Header edits at end of message.
    fn edit_message(
        &self,
        _ctx: &MessageContext<'_>,
        _edits: &mut EditList,
    ) -> Result<(), EditError> {
        Ok(())
    }
}

/// What a modifier's builder gets: its name, options, the tables and where
/// relative paths start.
pub struct ModifierBuildContext<'o, 'd, 'a> {
    /// The modifier's name in `[modifiers.NAME]`.
    pub name: &'o str,
    /// Kind-specific keys only; `kind` is taken before.
    pub options: &'o mut Options<'d, 'a>,
    /// Every table of the configuration.
    pub tables: &'o TableSet,
    /// The configuration file's directory: relative paths (key files)
    /// resolve against it.
    pub base_dir: &'o std::path::Path,
}

/// Builds one kind of modifier from its options; `None` after reporting
/// what is wrong.
pub type ModifierBuilder =
    Arc<dyn Fn(&mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_error_texts() {
        let s = String::from;
        let cases = [
            (
                RewriteError::PatternResult {
                    pattern: s("^(.+)$"),
                    address: s("a\"b@example.org"),
                    result: s("x\ty"),
                },
                "pattern \"^(.+)$\" rewrote \"a\\\"b@example.org\" to \"x\\ty\", which is not an address with a domain: fix the pattern or the replacement",
            ),
            (
                RewriteError::EmptyEntry {
                    table: s("map"),
                    address: s("a@example.org"),
                },
                "table \"map\" has no address for \"a@example.org\": give the entry a value",
            ),
            (
                RewriteError::TableValue {
                    table: s("map"),
                    address: s("a@example.org"),
                    value: s("broken"),
                },
                "table \"map\" maps \"a@example.org\" to \"broken\", which is not an address with a domain: fix the table entry",
            ),
            (
                RewriteError::NoAliasTargets {
                    table: s("aliases"),
                    address: s("d@example.org"),
                },
                "table \"aliases\" has no addresses for \"d@example.org\": list at least one target",
            ),
            (
                RewriteError::AliasLimit {
                    address: s("a@example.org"),
                    table: s("aliases"),
                    limit: AliasLimit::Lookups(10000),
                },
                "alias expansion of \"a@example.org\" exceeds 10000 table lookups: check table \"aliases\" for long alias chains or oversized lists",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
        assert_eq!(AliasLimit::Depth(10).to_string(), "10 levels");
        assert_eq!(AliasLimit::Addresses(1000).to_string(), "1000 addresses");
    }

    /// The texts the log and the error action's reason show, as they read
    /// when the errors were plain strings.
    #[test]
    fn edit_error_texts() {
        let s = String::from;
        let cases = [
            (
                EditError::Header(InvalidHeaderName { name: s("X Bad") }),
                "invalid header name \"X Bad\"",
            ),
            (
                EditError::Truncated,
                "the body is larger than the pipeline's max_body_size and was not kept whole, so it cannot be signed; raise max_body_size",
            ),
            (
                EditError::Unparsable,
                "the message cannot be parsed for sealing",
            ),
            (
                EditError::ArcTemperror,
                "the message's ARC chain could not be validated (temperror), so the seal's cv= is unknown; the client should try again",
            ),
            (
                EditError::Sign {
                    domain: s("example.org"),
                    selector: s("s2026"),
                    source: dkim_sign::SignError::NoHeaders,
                },
                "signing as d=example.org s=s2026 failed: no header to sign",
            ),
            (
                EditError::NoSignatureHeader,
                "mail-auth wrote no DKIM-Signature header",
            ),
            (
                EditError::ArcHeaderCount(2),
                "mail-auth wrote 2 ARC headers instead of 3",
            ),
            (
                EditError::Other("backend unavailable".into()),
                "backend unavailable",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
