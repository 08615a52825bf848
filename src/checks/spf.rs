//! The `spf` check: is the client allowed to send for the domain it claims
//! (RFC 7208)? Evaluated by our own evaluator: `spf/record.rs` parses a
//! record (a syntax error anywhere is `permerror`, §4.6), `spf/eval.rs` is
//! check_host() over the shared resolver (`Dns`), its cache and timeouts.
//! mail-auth 0.13's evaluator got 164 of the 230 cases of
//! tests/it/spf_rfc7208.rs right and viaspf 0.6 223 (it panics on a `/0`
//! prefix in debug builds and takes it as `/32` in release), so neither is
//! used; pyspf is the cross-check (221 of 230, its departures listed there).
//!
//! Options:
//! - `identity`: which identity to check.
//!   - `"mail_from"` (default): the MAIL FROM domain; when the sender is `<>`
//!     the HELO identity instead (RFC 7208 §2.4).
//!   - `"helo"`: the HELO/EHLO name only (RFC 7208 §2.3).
//!   - `"both"`: HELO first; a HELO `fail` is final, otherwise the MAIL FROM
//!     result decides. Both results go into Authentication-Results.
//! - `received_spf` (bool, default false): add a `Received-SPF` trace header
//!   (RFC 7208 §9.1) for the result that decided.
//!
//! Results map one to one: pass, fail, softfail, neutral, none, temperror,
//! permerror; the usual `on_<result>` keys choose the actions (by default a
//! `fail` rejects, temperror/permerror take the pipeline's `error_action`,
//! the rest are ignored). Without a client address (a local submission) the
//! result is `none`, and so is an identity that is not a multi-label domain
//! name (§4.3). An IPv4-mapped IPv6 client is evaluated as IPv4.
//!
//! Bounds (§4.6.4, per evaluation): 10 DNS-querying terms and 2 void
//! lookups (else `permerror`), at most 10 MX names per `mx` (else
//! `permerror`), the first 10 PTR names per `ptr` or `%{p}`, 20 seconds in
//! all (else `temperror`); expanded names are cut to 253 octets from the
//! left (§7.3), explanations to 1000 octets before the reason quotes 200.
//! Where the RFC leaves a choice open we take: a target name that cannot
//! be a DNS name matches nothing (§4.8 with §4.3 and §5); a missing PTR
//! answer is not a void lookup (the client's reverse zone is not the domain
//! owner's); a zero part count in a macro (`%{d0}`, §7.3 "MUST be
//! nonzero") is a syntax error; IPv6 nibbles in `%{i}` are lower case
//! (§7.4's example).
//!
//! `Received-SPF` (§9.1): result, a comment naming the receiver, then
//! `receiver`, `client-ip`, `envelope-from`, `helo`, `identity` and
//! `mechanism` (or `problem` for an error), each value a dot-atom or a
//! quoted-string. The receiver is this host's name (`receiver()`).
//!
//! The check starts at MAIL FROM, so its DNS lookups overlap the rest of the
//! dialogue, and is decided at end of message (`decide_at` moves that). Its
//! outcome is memoised for the message, so the `dmarc` check reuses it
//! instead of asking the DNS again (and computes it itself when no `spf`
//! check is configured).

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Status};
use crate::auth::spf::{Checked, SpfOutcome, receiver};
use crate::dns::Dns;
use crate::stage::Stage;
use serde::Deserialize;
use std::sync::Arc;

/// Longest SPF explanation (`exp=`) quoted in a reason.
const MAX_EXPLANATION: usize = 200;

/// What the `identity` option selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(expecting = "\"mail_from\", \"helo\" or \"both\"")]
pub enum Identity {
    /// `"mail_from"` (the default): the MAIL FROM domain, or the HELO name
    /// for the null sender `<>` (RFC 7208 §2.4).
    MailFrom,
    /// `"helo"`: the HELO/EHLO name only (RFC 7208 §2.3).
    Helo,
    /// `"both"`: HELO first, whose `fail` is final; otherwise the MAIL FROM
    /// result decides, and both are reported.
    Both,
}

/// `[checks.NAME]` with `kind = "spf"`; defaults in the module comment.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpfOptions {
    identity: Option<Identity>,
    received_spf: Option<bool>,
}

// The `value` and quoted-string writers of Authentication-Results, which
// Received-SPF and reasons use too.
use crate::auth_results::{Property, ResInfo};
pub use crate::auth_results::{pvalue, quoted};

/// An RFC 5322 dot-atom when `s` is one, else a quoted-string.
fn dot_atom_or_quoted(s: &str) -> String {
    const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    let atom = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(c))
    };
    if s.split('.').all(atom) {
        s.to_string()
    } else {
        quoted(s)
    }
}

/// Text safe inside an RFC 5322 comment: parentheses and backslashes are
/// escaped, control characters dropped.
fn comment_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        if matches!(c, '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Printable, bounded text from a sender-controlled string (the `exp=`
/// explanation), so it can go into a reason and an SMTP reply.
fn printable(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| c.is_ascii())
        .take(max)
        .collect();
    clean.trim().to_string()
}

/// The identity property of an Authentication-Results result.
fn property(o: &SpfOutcome) -> Option<Property> {
    match o.checked {
        Checked::Helo if !o.helo.is_empty() => Some(Property::new("smtp", "helo", o.helo.as_str())),
        Checked::MailFrom if !o.domain.is_empty() => {
            Some(Property::new("smtp", "mailfrom", o.domain.as_str()))
        }
        _ => None,
    }
}

/// `spf=pass smtp.mailfrom=example.org`.
pub fn fragment(o: &SpfOutcome) -> ResInfo {
    let r = ResInfo::new("spf", o.status());
    match property(o) {
        Some(p) => r.with_property(p),
        None => r,
    }
}

/// `SPF fail for example.org from 192.0.2.99`, or why nothing was checked.
pub fn reason(o: &SpfOutcome) -> String {
    let status = o.status();
    if let Some(note) = o.note {
        return format!("SPF {status}: {note}");
    }
    let domain = if o.domain.is_empty() {
        "(no domain)"
    } else {
        &o.domain
    };
    let mut r = match o.ip {
        Some(ip) => format!("SPF {status} for {domain} from {ip}"),
        None => format!("SPF {status} for {domain}"),
    };
    if o.result == Status::Fail
        && let Some(exp) = &o.explanation
    {
        let exp = printable(exp, MAX_EXPLANATION);
        if !exp.is_empty() {
            r.push_str(": ");
            r.push_str(&exp);
        }
    }
    r
}

/// The `Received-SPF` value (RFC 7208 §9.1): the result, a comment that
/// says it in words (with the receiver's name first, as in §9.1's
/// example), then `receiver`, `client-ip`, `envelope-from`, `helo`,
/// `identity` and `mechanism` (what matched) or `problem` (what failed).
/// Each value is a dot-atom when it is one and a quoted-string otherwise.
pub fn received_spf(o: &SpfOutcome) -> String {
    received_spf_by(o, receiver())
}

fn received_spf_by(o: &SpfOutcome, receiver: &str) -> String {
    // The <sender> of check_host(): postmaster@<helo> for the HELO
    // identity (§2.3) and for the null sender (§2.4).
    let envelope_from = match o.checked {
        Checked::MailFrom if !o.sender.is_empty() => o.sender.clone(),
        _ if !o.helo.is_empty() => format!("postmaster@{}", o.helo),
        _ => String::new(),
    };
    let who = comment_text(if envelope_from.is_empty() {
        &o.domain
    } else {
        &envelope_from
    });
    let ip = o.ip.map(|ip| ip.to_string()).unwrap_or_default();
    let said = match (o.note, o.result) {
        (Some(note), _) => note.to_string(),
        (None, Status::Pass) => format!("domain of {who} designates {ip} as permitted sender"),
        (None, Status::Fail) => {
            format!("domain of {who} does not designate {ip} as permitted sender")
        }
        (None, Status::Softfail) => {
            format!("domain of transitioning {who} does not designate {ip} as permitted sender")
        }
        (None, Status::Neutral) => {
            format!("{ip} is neither permitted nor denied by domain of {who}")
        }
        (None, Status::None) => {
            format!("domain of {who} does not designate permitted sender hosts")
        }
        (None, Status::Temperror) => format!("error in processing during lookup of {who}"),
        (None, Status::Permerror) => format!("permanent error in processing domain of {who}"),
    };
    let mut pairs = vec![format!("receiver={}", dot_atom_or_quoted(receiver))];
    if let Some(ip) = o.ip {
        pairs.push(format!("client-ip={}", dot_atom_or_quoted(&ip.to_string())));
    }
    pairs.push(format!(
        "envelope-from={}",
        dot_atom_or_quoted(&envelope_from)
    ));
    if !o.helo.is_empty() {
        pairs.push(format!("helo={}", dot_atom_or_quoted(&o.helo)));
    }
    pairs.push(
        match o.checked {
            Checked::Helo => "identity=helo",
            Checked::MailFrom => "identity=mailfrom",
        }
        .to_string(),
    );
    if let Some(m) = &o.mechanism {
        pairs.push(format!("mechanism={}", dot_atom_or_quoted(m)));
    }
    if let Some(p) = o.problem.as_deref().or(o.note) {
        pairs.push(format!("problem={}", dot_atom_or_quoted(p)));
    }
    format!(
        "{} ({}: {}) {};",
        o.status(),
        comment_text(receiver),
        said,
        pairs.join("; ")
    )
}

/// The `spf` check: whether the client may send for the domain it claims
/// (RFC 7208).
pub struct SpfCheck {
    dns: Arc<Dns>,
    identity: Identity,
    received_spf: bool,
}

impl SpfCheck {
    /// Build it from its options and the shared resolver; `None` after
    /// reporting what is wrong, a broken resolver configuration included.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let options = ctx.options.parse::<SpfOptions>();
        // The resolver's own error is named even when an option is wrong.
        let dns = ctx.resolver()?;
        let SpfOptions {
            identity,
            received_spf,
        } = options?;
        Some(Arc::new(SpfCheck {
            dns,
            identity: identity.unwrap_or(Identity::MailFrom),
            received_spf: received_spf.unwrap_or(false),
        }))
    }

    async fn evaluate(&self, input: &CheckInput) -> CheckResult {
        let (evidence, connection) = (&input.evidence, &input.connection);
        let sender = input.envelope.as_ref().map(|e| &e.sender);
        let helo = || evidence.helo_spf(&self.dns, connection);
        let mail_from = || evidence.mail_from_spf(&self.dns, connection, sender);
        // The outcome that decides, and the HELO one looked at before it
        // (with `both`), which Authentication-Results shows too.
        let (helo_before, deciding) = match self.identity {
            Identity::MailFrom => (None, mail_from().await),
            Identity::Helo => (None, helo().await),
            Identity::Both => {
                let helo = helo().await;
                if helo.result == Status::Fail || sender.is_none_or(|s| s.is_null()) {
                    (None, helo)
                } else {
                    (Some(helo), mail_from().await)
                }
            }
        };
        let deciding = &*deciding;
        let mut result = CheckResult::with_reason(deciding.status(), reason(deciding));
        result.auth_results = Some(
            helo_before
                .as_deref()
                .into_iter()
                .chain([deciding])
                .map(fragment)
                .collect(),
        );
        if self.received_spf {
            result
                .add_headers
                .push(("Received-SPF".to_string(), received_spf(deciding)));
        }
        result
    }
}

impl Check for SpfCheck {
    fn auth_method(&self) -> Option<&'static str> {
        Some("spf")
    }

    /// The MAIL FROM identity exists at MAIL FROM.
    fn inputs(&self) -> Stage {
        Stage::Mail
    }

    /// Decided at end of message, so a fail can still be weighed with DMARC
    /// (and the dispatch branch chooses the action); `decide_at` moves it.
    fn decides(&self) -> Stage {
        Stage::Eom
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.evaluate(&input).await })
    }
}

#[cfg(test)]
mod tests;
