//! The modifier interface; each kind is a submodule (the list of built-in
//! kinds is `config::registry`). Modifiers run
//! serially, in the order the config lists them (global, then source, then
//! destination), so their combined effect is predictable. Envelope rewrites
//! happen as the envelope arrives (dispatch may depend on them); header edits
//! are collected at end of message into the message's edit list.

use crate::address::Address;
use crate::config::options::Options;
use crate::edits::EditList;
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
    pub connection: &'m ConnectionFacts,
    pub envelope: &'m Envelope,
    pub message: &'m Message,
    pub queue_id: Option<&'m str>,
    pub pipeline: &'m str,
}

/// Which parts of a message a modifier can change; used to negotiate milter
/// actions and to compare branches for `split_transactions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub sender: bool,
    pub recipients: bool,
    pub headers: bool,
}

pub trait Modifier: Send + Sync + 'static {
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
    fn rewrite_sender(&self, _sender: &Address) -> Result<Option<Address>, String> {
        Ok(None)
    }

    /// The addresses that replace this recipient (one or several), or `None`
    /// to leave it as it is.
    fn rewrite_recipient(&self, _recipient: &Address) -> Result<Option<Vec<Address>>, String> {
        Ok(None)
    }

    /// Header edits at end of message.
    fn edit_message(&self, _ctx: &MessageContext<'_>, _edits: &mut EditList) -> Result<(), String> {
        Ok(())
    }
}

pub struct ModifierBuildContext<'o, 'd, 'a> {
    pub name: &'o str,
    /// Kind-specific keys only; `kind` is taken before.
    pub options: &'o mut Options<'d, 'a>,
    pub tables: &'o TableSet,
    /// The configuration file's directory: relative paths (key files)
    /// resolve against it.
    pub base_dir: &'o std::path::Path,
}

pub type ModifierBuilder =
    Arc<dyn Fn(&mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> + Send + Sync>;
