//! The check and modifier kinds the configuration can name: the built-in
//! ones (this is the only module that knows every kind), and those a test
//! adds. `checks` and `modifiers` know nothing of it, so they depend on no
//! registry of their own kinds.

use crate::checks::{
    CheckBuilder, arc, authorize_sender, command, dkim, dmarc, dnsbl, header, iprev, require_auth,
    require_mx, require_tls, size, spf,
};
use crate::modifiers::{
    ModifierBuilder, add_header, alias, arc_seal, dkim_sign, remove_header, rewrite_rcpt,
    rewrite_sender, strip_plus,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The check and modifier kinds the compiler knows. Tests add their own.
#[derive(Clone)]
pub struct Registry {
    pub(super) checks: BTreeMap<String, CheckBuilder>,
    pub(super) modifiers: BTreeMap<String, ModifierBuilder>,
    /// `--nameserver`: replaces `[dns] nameservers` (tests and
    /// administrators point the daemon at a resolver of their choice).
    pub(super) nameservers: Option<Vec<std::net::SocketAddr>>,
}

impl Registry {
    /// Every built-in check and modifier kind, under the name `kind` takes in the config.
    pub fn builtin() -> Registry {
        Registry {
            checks: builtin_checks()
                .into_iter()
                .map(|(k, b)| (k.to_string(), b))
                .collect(),
            modifiers: builtin_modifiers()
                .into_iter()
                .map(|(k, b)| (k.to_string(), b))
                .collect(),
            nameservers: None,
        }
    }

    /// Use these name servers whatever `[dns]` says.
    pub fn set_nameservers(&mut self, servers: Vec<std::net::SocketAddr>) {
        self.nameservers = Some(servers);
    }

    /// Make `kind = "<kind>"` build checks with `builder`, replacing a built-in of that name.
    pub fn add_check(&mut self, kind: &str, builder: CheckBuilder) {
        self.checks.insert(kind.to_string(), builder);
    }

    /// Make `kind = "<kind>"` build modifiers with `builder`, replacing a built-in of that name.
    pub fn add_modifier(&mut self, kind: &str, builder: ModifierBuilder) {
        self.modifiers.insert(kind.to_string(), builder);
    }
}

/// The built-in check kinds, by `kind` name.
fn builtin_checks() -> Vec<(&'static str, CheckBuilder)> {
    vec![
        ("require_tls", Arc::new(require_tls::RequireTlsCheck::build)),
        (
            "require_auth",
            Arc::new(require_auth::RequireAuthCheck::build),
        ),
        (
            "authorize_sender",
            Arc::new(authorize_sender::AuthorizeSenderCheck::build),
        ),
        ("header", Arc::new(header::HeaderCheck::build)),
        ("size", Arc::new(size::SizeCheck::build)),
        ("command", Arc::new(command::CommandCheck::build)),
        ("dnsbl", Arc::new(dnsbl::DnsblCheck::build)),
        ("iprev", Arc::new(iprev::IprevCheck::build)),
        ("require_mx", Arc::new(require_mx::RequireMxCheck::build)),
        ("spf", Arc::new(spf::SpfCheck::build)),
        ("dkim", Arc::new(dkim::DkimCheck::build)),
        ("dmarc", Arc::new(dmarc::DmarcCheck::build)),
        ("arc", Arc::new(arc::ArcCheck::build)),
    ]
}

/// The built-in modifier kinds, by `kind` name.
fn builtin_modifiers() -> Vec<(&'static str, ModifierBuilder)> {
    vec![
        (
            "rewrite_sender",
            Arc::new(rewrite_sender::RewriteSenderModifier::build),
        ),
        (
            "rewrite_rcpt",
            Arc::new(rewrite_rcpt::RewriteRcptModifier::build),
        ),
        ("alias", Arc::new(alias::AliasModifier::build)),
        ("strip_plus", Arc::new(strip_plus::StripPlusModifier::build)),
        ("add_header", Arc::new(add_header::AddHeaderModifier::build)),
        (
            "remove_header",
            Arc::new(remove_header::RemoveHeaderModifier::build),
        ),
        ("dkim_sign", Arc::new(dkim_sign::DkimSignModifier::build)),
        ("arc_seal", Arc::new(arc_seal::ArcSealModifier::build)),
    ]
}
