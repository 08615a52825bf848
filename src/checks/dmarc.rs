//! The `dmarc` check: does the From: domain's DMARC policy (RFC 9989, which
//! obsoletes RFC 7489 and RFC 9091) accept the message, given SPF and DKIM
//! results that align with that domain?
//!
//! The evaluation is ours, not mail-auth's (0.13 cannot be upgraded here,
//! and its `verify_dmarc` gets several cases wrong, see `evaluate`): the
//! record parser is [`record`], discovery, the Organizational Domain,
//! alignment and the choice of `p`, `sp` or `np` are [`evaluate`], pure
//! functions over a lookup trait, and [`lookups`] answers them per message
//! through the shared resolver.
//!
//! The Author Domain (RFC 9989 §5.3.1) comes from the one From header. Its
//! addresses must all have one domain (a U-label is taken as its A-label);
//! no From header, several, an address without a domain or addresses of
//! several domains are `permerror` (DMARC cannot be evaluated). SPF (the
//! MAIL FROM identity, or HELO for `<>`) and DKIM are taken from what the
//! `spf` and `dkim` checks of the same message computed, or computed here
//! when those checks are not configured; a DKIM signature counts as a pass
//! under the `dkim` defaults (an RSA key of fewer than 1024 bits or an `l=`
//! tag does not).
//!
//! Discovery and the Organizational Domain follow the DNS tree walk of RFC
//! 9989 §4.10, at most eight queries per walk, each name asked once per
//! message. No public suffix list is used. Where the two disagree, the walk
//! decides: a name a suffix list calls public (say `github.io`) that
//! publishes a record without `psd=y` is the Organizational Domain of the
//! names below it, so its signature aligns with them; a subdomain whose
//! record says `psd=n` is its own Organizational Domain, so its parent's
//! signature does not align with it (a list would say the opposite in both
//! cases). RFC 9989 replaced the list with the walk (§4.10) because lists
//! differ between receivers; publishers now state the boundary themselves
//! with `psd`.
//!
//! Records (§4.7, §4.8): the first tag must be `v=DMARC1` (case-sensitive);
//! unknown tags are ignored and a bad value takes the tag's default. Several
//! DMARC records at one name count as none, and the walk goes on (§4.10
//! steps 2 and 6; RFC 7489 stopped there instead). A record without `p=` is
//! `p=none`. An invalid `p=`, `sp=` or `np=` (§4.10.1, RFC 7489 §6.6.3)
//! makes the record `p=none` throughout when its `rua=` holds a valid URI;
//! without one the record is unusable and no DMARC processing applies: the
//! result is `none`, and Authentication-Results says `dmarc=permerror
//! (unusable policy record)` (the RFC 9989 §9.2 name for a malformed
//! record). `sp` applies to existing subdomains of the policy domain, `np`
//! to non-existent ones: NXDOMAIN to A, AAAA or MX (§3.2.13), asked only
//! when a failing message's `sp` and `np` differ.
//!
//! Results: `pass`, `none` (no policy record applies, or it is unusable),
//! `temperror` (a lookup the result depends on did not complete, §5.3.6:
//! a policy record, a walk needed for relaxed alignment, the existence of
//! the author domain when `np` matters, or an identifier whose own result
//! was temporary and would align), `permerror` (the From header), and for
//! a message that fails DMARC a status chosen by `policy`:
//! - `policy = "published"` (default): the policy that applies after `sp`
//!   and `np`, `t=y` and a legacy `pct`, becomes the status: reject gives
//!   `fail`, quarantine gives `softfail`, none gives `neutral`. The
//!   actions then come from the usual keys: `on_fail` (default "reject"),
//!   `on_softfail` (default "quarantine" for this check) and `on_neutral`
//!   (default "ignore").
//! - `policy = "local"`: every DMARC failure is `fail`, whatever the domain
//!   publishes; `on_fail` says what to do.
//!
//! `t=y` (§4.7) applies the next milder policy (reject becomes quarantine,
//! quarantine becomes none). `pct` is gone from RFC 9989 (historic in its
//! §9.3; Appendix A.6 makes `t=y` and `t=n` the heirs of `pct=0` and
//! `pct=100`), but records still carry it, written for RFC 7489 receivers:
//! - `honour_pct` (bool, default true): a record without a valid `t=` and
//!   with a `pct=` below 100 has its policy applied to that share of failing
//!   messages, drawn at random, and the next milder one to the others (RFC
//!   7489 §6.6.4); `pct=0` is thus exactly `t=y`. A valid `t=` wins over
//!   `pct`. `false` ignores `pct` as a pure RFC 9989 receiver does.
//! - `trusted_arc_sealers` (list of domains, default none): when DMARC fails
//!   but the message's ARC chain passes and its newest seal is from one of
//!   these domains (a mailing list or forwarder you trust to have checked
//!   the original), the result is `pass` with the reason "DMARC fail
//!   overridden by trusted ARC sealer <domain>" (RFC 8617 §7.2). The ARC
//!   validation is shared with the `arc` check.
//!
//! Authentication-Results (RFC 8601) carries the result, a comment naming
//! the policy and what became of the message, and `header.from`:
//! `dmarc=pass (p=reject dis=none) header.from=example.org`,
//! `dmarc=fail (sp=quarantine dis=quarantine) header.from=sub.example.org`,
//! `dmarc=fail (p=reject t=y: quarantine dis=none)` or `(p=reject pct=0:
//! quarantine dis=none)` when test mode or sampling lowered it,
//! `dmarc=none header.from=example.org`. The policy part names the tag that
//! applied and what it asked for; `dis=` (as OpenDMARC writes it) is the
//! disposition the whole policy gave the message, filled in by the engine:
//! `quarantine` when it is put on hold, otherwise `none` (a rejected or
//! discarded message carries no header, and dry run delivers). An override
//! reads `dmarc=fail (overridden by trusted ARC sealer <domain> dis=none)
//! header.from=<domain>`, since DMARC itself did fail; a `permerror` about
//! the From header is `dmarc=permerror` alone. Exemptions for authenticated
//! senders and trusted networks belong in the dispatch tree: list the check
//! only in the branches it applies to.

use super::dkim::Judge;
use super::spf::pvalue;
use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Early, Status};
use crate::address::normalize_domain;
use crate::auth::dkim::DkimFacts;
use crate::auth::dmarc::{evaluate, lookups, record};
use crate::auth_results::{Property, ResInfo};
use crate::config::options::OneOrMany;
use crate::dns::Dns;
use crate::message::address_list::{Unreadable, address_list};
use crate::stage::Stage;
use evaluate::{Authenticated, Identifier, Outcome};
use lookups::MessageDns;
use record::Request;
use serde::Deserialize;
use std::sync::Arc;

/// What the `policy` option selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(expecting = "\"published\" or \"local\"")]
pub enum PolicyMode {
    /// `"published"` (the default): a failing message's status follows the
    /// policy the domain publishes (reject: `fail`, quarantine: `softfail`,
    /// none: `neutral`).
    Published,
    /// `"local"`: every DMARC failure is `fail`, whatever the domain
    /// publishes; `on_fail` decides.
    Local,
}

/// `[checks.NAME]` with `kind = "dmarc"`; defaults in the module comment.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DmarcOptions {
    policy: Option<PolicyMode>,
    honour_pct: Option<bool>,
    trusted_arc_sealers: Option<OneOrMany>,
}

/// The `dmarc` check: whether the From: domain's DMARC policy accepts the
/// message, given the SPF and DKIM results aligned with that domain.
pub struct DmarcCheck {
    dns: Arc<Dns>,
    mode: PolicyMode,
    honour_pct: bool,
    /// Normalised domains.
    trusted_arc_sealers: Vec<String>,
}

/// The status a failing message gets under the policy that applies.
pub fn status_for(mode: PolicyMode, applied: Request) -> Status {
    match (mode, applied) {
        (PolicyMode::Local, _) => Status::Fail,
        (PolicyMode::Published, Request::Reject) => Status::Fail,
        (PolicyMode::Published, Request::Quarantine) => Status::Softfail,
        (PolicyMode::Published, Request::None) => Status::Neutral,
    }
}

/// A random draw: true for `pct` percent of calls.
fn sampled(pct: u8) -> bool {
    use std::hash::{BuildHasher, Hasher};
    match pct {
        100.. => true,
        0 => false,
        _ => {
            // Each RandomState has fresh keys, so the hash of nothing is a
            // new random number every time.
            let draw = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                % 100;
            draw < u64::from(pct)
        }
    }
}

/// Why the policy applied is milder than the one published, if it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lowered {
    TestMode,
    NotSampled(u8),
}

/// The policy applied to a failing message after `t` and the legacy `pct`
/// (see the module documentation).
fn apply_test_and_pct(
    policy: Request,
    test: Option<bool>,
    pct: Option<u8>,
    honour_pct: bool,
    draw: impl FnOnce(u8) -> bool,
) -> (Request, Option<Lowered>) {
    if policy == Request::None {
        return (policy, None);
    }
    match (test, pct) {
        (Some(true), _) => (policy.milder(), Some(Lowered::TestMode)),
        (Some(false), _) => (policy, None),
        (None, Some(pct)) if honour_pct && !draw(pct) => {
            (policy.milder(), Some(Lowered::NotSampled(pct)))
        }
        (None, _) => (policy, None),
    }
}

fn with_auth(mut r: CheckResult, result: ResInfo) -> CheckResult {
    r.auth_results = Some(vec![result]);
    r
}

/// `with_auth` for a result whose policy comment ends with what became of
/// the message (`dmarc=pass (p=reject dis=none) header.from=...`): the
/// comment is `comment`, to which the engine adds the disposition.
fn with_policy_auth(
    r: CheckResult,
    result: Status,
    comment: &str,
    header_from: Property,
) -> CheckResult {
    let result = ResInfo::new("dmarc", result)
        .with_comment(comment)
        .with_property(header_from);
    let mut r = with_auth(r, result);
    r.auth_disposition = true;
    r
}

/// A domain as DMARC compares it and asks for it: lower-case A-labels, no
/// final dot; `None` for what cannot be a DNS name (an address literal,
/// an empty or over-long label, a name over 253 octets, characters no host
/// name has), so a hostile From: or MAIL FROM turns into "no DMARC", never
/// into a query the resolver refuses (which would read as temperror).
pub fn canonical(domain: &str) -> Option<String> {
    normalize_domain(domain).ok().filter(|d| {
        // `_dmarc.` and the final dot must still fit in 255 octets.
        d.len() <= 253 - "_dmarc.".len()
            && d.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    })
}

/// The DKIM signatures as DMARC sees them: the signing domain `d=` and
/// whether the signature passed, judged as the `dkim` check does by
/// default (a temporary failure stays temporary: it might pass).
fn dkim_identifiers(facts: &DkimFacts) -> Vec<Identifier> {
    facts
        .signatures
        .iter()
        .filter_map(|f| {
            let domain = canonical(&f.signature.as_ref()?.d)?;
            let state = match super::dkim::judge(f, Judge::default()).status {
                Status::Pass => Authenticated::Pass,
                Status::Temperror => Authenticated::Temporary,
                _ => Authenticated::No,
            };
            Some(Identifier { domain, state })
        })
        .collect()
}

/// The SPF-authenticated identifier candidate: the domain SPF evaluated
/// and whether it passed.
fn spf_identifier(domain: &str, status: Status) -> Option<Identifier> {
    let state = match status {
        Status::Pass => Authenticated::Pass,
        Status::Temperror => Authenticated::Temporary,
        _ => Authenticated::No,
    };
    Some(Identifier {
        domain: canonical(domain)?,
        state,
    })
}

/// Why a message has no Author Domain (RFC 9989 §5.3.1).
#[derive(Debug, thiserror::Error)]
enum NoAuthor {
    #[error("DMARC needs exactly one From header, found {0}")]
    FromHeaders(usize),
    #[error("the From header cannot be read: {0}")]
    Unreadable(Unreadable),
    #[error("the From header holds no address")]
    NoAddress,
    #[error("the From address has no domain")]
    NoDomain,
    #[error("the From domain {} is not a DNS name", pvalue(.0))]
    NotADnsName(String),
    #[error("the From header holds addresses of {0} domains")]
    SeveralDomains(usize),
}

/// The Author Domain of a message: its one From header's.
fn author_domain(message: &crate::message::Message) -> Result<String, NoAuthor> {
    let mut from = message.header_values("From");
    match (from.next(), from.count()) {
        (Some(value), 0) => author_domain_of(value),
        (None, _) => Err(NoAuthor::FromHeaders(0)),
        (Some(_), more) => Err(NoAuthor::FromHeaders(more + 1)),
    }
}

/// The Author Domain of one From header value, normalised: every address
/// in it must be readable and all of one domain. The early lookups at the
/// From header and the evaluation at end of message both read it here.
fn author_domain_of(value: &str) -> Result<String, NoAuthor> {
    let mut domains: Vec<String> = Vec::new();
    for mailbox in address_list(value) {
        let raw = match mailbox {
            Ok(mailbox) => mailbox.domain().to_string(),
            Err(Unreadable::NoDomain) => return Err(NoAuthor::NoDomain),
            Err(e) => return Err(NoAuthor::Unreadable(e)),
        };
        let Some(domain) = canonical(&raw) else {
            return Err(NoAuthor::NotADnsName(raw));
        };
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    match domains.as_slice() {
        [] => Err(NoAuthor::NoAddress),
        [one] => Ok(one.clone()),
        more => Err(NoAuthor::SeveralDomains(more.len())),
    }
}

impl DmarcCheck {
    /// Build it from its options and the shared resolver; `None` after
    /// reporting what is wrong, a broken resolver configuration included.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let options = ctx.options.parse::<DmarcOptions>();
        // The resolver's own error is named even when an option is wrong.
        let dns = ctx.resolver()?;
        let DmarcOptions {
            policy,
            honour_pct,
            trusted_arc_sealers,
        } = options?;
        let mut sealers = Vec::new();
        let mut ok = true;
        for d in trusted_arc_sealers.unwrap_or_default().0 {
            match normalize_domain(&d) {
                Ok(n) if !n.starts_with('[') => sealers.push(n),
                _ => {
                    ctx.options.invalid(
                        "trusted_arc_sealers",
                        format_args!("must be domain names, found \"{d}\""),
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| {
            Arc::new(DmarcCheck {
                dns,
                mode: policy.unwrap_or(PolicyMode::Published),
                honour_pct: honour_pct.unwrap_or(true),
                trusted_arc_sealers: sealers,
            }) as Arc<dyn Check>
        })
    }

    /// The trusted sealer of a passing ARC chain, if there is one.
    async fn trusted_sealer(&self, input: &CheckInput) -> Option<String> {
        if self.trusted_arc_sealers.is_empty() {
            return None;
        }
        let arc = input
            .evidence
            .arc(&self.dns, input.message.as_deref())
            .await;
        if arc.status != Status::Pass {
            return None;
        }
        let sealer = arc.sealer.as_deref()?;
        let sealer = normalize_domain(sealer).unwrap_or_else(|_| sealer.to_ascii_lowercase());
        self.trusted_arc_sealers.contains(&sealer).then_some(sealer)
    }

    async fn evaluate(&self, input: &CheckInput) -> CheckResult {
        let Some(message) = input.message.as_ref() else {
            return CheckResult::temperror("no message to evaluate");
        };
        let author = match author_domain(message) {
            Ok(author) => author,
            Err(why) => {
                return with_auth(
                    CheckResult::permerror(why.to_string()),
                    ResInfo::new("dmarc", Status::Permerror),
                );
            }
        };

        // The policy records were most likely asked for when the From
        // header arrived; if not, the walk's names are asked for now, all
        // at once.
        let (evidence, connection) = (&input.evidence, &input.connection);
        let store = evidence.dmarc_records();
        store.prefetch(&self.dns, &author);
        let sender = input.envelope.as_ref().map(|e| &e.sender);
        let (spf, dkim) = tokio::join!(
            evidence.mail_from_spf(&self.dns, connection, sender),
            evidence.dkim(&self.dns, Some(message)),
        );
        let evaluated = evaluate::evaluate(
            &MessageDns {
                store,
                dns: &self.dns,
            },
            &evaluate::Message {
                author: &author,
                spf: spf_identifier(&spf.domain, spf.status()),
                dkim: dkim_identifiers(&dkim),
            },
        )
        .await;
        let header_from = Property::new("header", "from", author.as_str());
        match evaluated {
            Outcome::Pass {
                spf,
                dkim,
                tag,
                policy,
                ..
            } => {
                let how = match (dkim, spf) {
                    (true, true) => "DKIM and SPF aligned",
                    (true, false) => "DKIM aligned",
                    _ => "SPF aligned",
                };
                with_policy_auth(
                    CheckResult::with_reason(
                        Status::Pass,
                        format!("DMARC pass for {author} ({how})"),
                    ),
                    Status::Pass,
                    &format!("{}={policy}", tag.as_str()),
                    header_from,
                )
            }
            Outcome::NoPolicy => with_auth(
                CheckResult::with_reason(Status::None, format!("no DMARC policy for {author}")),
                ResInfo::new("dmarc", Status::None).with_property(header_from),
            ),
            Outcome::Unusable { policy_domain } => with_auth(
                CheckResult::with_reason(
                    Status::None,
                    format!(
                        "the DMARC record of {policy_domain} has an invalid policy and no valid rua: no policy applies to {author}"
                    ),
                ),
                ResInfo::new("dmarc", Status::Permerror)
                    .with_comment("unusable policy record")
                    .with_property(header_from),
            ),
            Outcome::TempError(e) => with_auth(
                CheckResult::temperror(format!("DMARC temperror for {author}: {e}")),
                ResInfo::new("dmarc", Status::Temperror).with_property(header_from),
            ),
            Outcome::Fail {
                tag,
                policy,
                test,
                pct,
                ..
            } => {
                if let Some(sealer) = self.trusted_sealer(input).await {
                    let why = format!("DMARC fail overridden by trusted ARC sealer {sealer}");
                    return with_policy_auth(
                        CheckResult::with_reason(Status::Pass, why),
                        Status::Fail,
                        &format!("overridden by trusted ARC sealer {sealer}"),
                        header_from,
                    );
                }
                let tag = tag.as_str();
                let (applied, lowered) =
                    apply_test_and_pct(policy, test, pct, self.honour_pct, sampled);
                let (note, comment) = match lowered {
                    None => (String::new(), String::new()),
                    Some(Lowered::TestMode) => (
                        format!(", t=y: {applied} applied"),
                        format!(" t=y: {applied}"),
                    ),
                    Some(Lowered::NotSampled(pct)) => (
                        format!(", pct={pct}, not sampled: {applied} applied"),
                        format!(" pct={pct}: {applied}"),
                    ),
                };
                with_policy_auth(
                    CheckResult::with_reason(
                        status_for(self.mode, applied),
                        format!("DMARC fail for {author} ({tag}={policy}{note})"),
                    ),
                    Status::Fail,
                    &format!("{tag}={policy}{comment}"),
                    header_from,
                )
            }
        }
    }
}

impl Check for DmarcCheck {
    fn auth_method(&self) -> Option<&'static str> {
        Some("dmarc")
    }

    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    /// DKIM needs the body.
    fn needs_body(&self) -> bool {
        true
    }

    /// Ask early for the records DMARC will need at end of message: the
    /// tree walk of the MAIL FROM domain at MAIL FROM (most often the From:
    /// domain too, which is only known once the headers come; relaxed SPF
    /// alignment needs it otherwise), that of the From: domain when that
    /// header arrives, and the DKIM keys (DMARC verifies the signatures
    /// itself when no `dkim` check runs). A walk's names are asked for all
    /// at once. A DKIM signer below the author's organization still has its
    /// walk made at end of message.
    fn prefetch(&self, early: &Early<'_>) {
        let (evidence, dns) = (early.evidence, &self.dns);
        match early.header {
            None => {
                if let Some(domain) = early.sender.domain().and_then(canonical) {
                    evidence.dmarc_records().prefetch(dns, &domain);
                }
            }
            Some((name, value)) if name.eq_ignore_ascii_case("From") => {
                // Only a From: with one domain has a policy (RFC 9989 §5.3.1).
                if let Ok(domain) = author_domain_of(value) {
                    evidence.dmarc_records().prefetch(dns, &domain);
                }
            }
            Some((name, value)) => {
                evidence.keys().dkim_key(dns, name, value);
                if !self.trusted_arc_sealers.is_empty() {
                    evidence.keys().arc_keys(dns, name, value);
                }
            }
        }
    }

    /// The published policy decides by default: p=reject gives fail (the
    /// generic default rejects it) and p=quarantine gives softfail, which
    /// DMARC quarantines unless `on_softfail` says otherwise.
    fn default_action(&self, status: Status) -> Option<crate::checks::action::Action> {
        (status == Status::Softfail).then_some(crate::checks::action::Action::Quarantine)
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move { self.evaluate(&input).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::require_tls::tests::{build_err, input, run, try_build};
    use crate::message::{Header, Message};
    use crate::tables::TableSet;

    #[test]
    fn published_policies_choose_the_status() {
        let p = PolicyMode::Published;
        assert_eq!(status_for(p, Request::Reject), Status::Fail);
        assert_eq!(status_for(p, Request::Quarantine), Status::Softfail);
        assert_eq!(status_for(p, Request::None), Status::Neutral);
        for policy in [Request::Reject, Request::Quarantine, Request::None] {
            assert_eq!(status_for(PolicyMode::Local, policy), Status::Fail);
        }
    }

    #[test]
    fn t_and_legacy_pct_lower_the_policy() {
        use Request::{None as N, Quarantine as Q, Reject as R};
        let never = |_| false;
        let always = |_| true;
        // RFC 9989 §4.7: t=y is one step milder, and nothing for none.
        assert_eq!(
            apply_test_and_pct(R, Some(true), None, true, always),
            (Q, Some(Lowered::TestMode))
        );
        assert_eq!(
            apply_test_and_pct(Q, Some(true), None, true, always),
            (N, Some(Lowered::TestMode))
        );
        assert_eq!(
            apply_test_and_pct(N, Some(true), None, true, always),
            (N, None)
        );
        // A valid t= wins over pct.
        assert_eq!(
            apply_test_and_pct(R, Some(false), Some(0), true, never),
            (R, None)
        );
        assert_eq!(
            apply_test_and_pct(R, Some(true), Some(100), true, always),
            (Q, Some(Lowered::TestMode))
        );
        // Legacy pct: sampled, or the next milder policy.
        assert_eq!(
            apply_test_and_pct(R, None, Some(30), true, always),
            (R, None)
        );
        assert_eq!(
            apply_test_and_pct(R, None, Some(30), true, never),
            (Q, Some(Lowered::NotSampled(30)))
        );
        assert_eq!(
            apply_test_and_pct(R, None, Some(0), false, never),
            (R, None)
        );
        assert_eq!(apply_test_and_pct(R, None, None, true, never), (R, None));
    }

    #[test]
    fn sampling_draws_about_pct_percent() {
        assert!(sampled(100));
        assert!(!sampled(0));
        let hits = (0..10_000).filter(|_| sampled(30)).count();
        assert!((2_500..3_500).contains(&hits), "{hits}");
    }

    #[test]
    fn options_are_validated() {
        let e = build_err(DmarcCheck::build, "policy = \"strict\"");
        assert!(
            e.contains("\"published\" or \"local\", found \"strict\""),
            "{e}"
        );
        let e = build_err(DmarcCheck::build, "policy = 1");
        assert_eq!(
            e,
            "`policy` in check \"t\" must be \"published\" or \"local\", found 1"
        );
        let e = build_err(DmarcCheck::build, "honour_pct = \"no\"");
        assert_eq!(
            e,
            "`honour_pct` in check \"t\" must be true or false, found \"no\""
        );
        let e = build_err(DmarcCheck::build, "trusted_arc_sealers = [\"a..b\"]");
        assert_eq!(
            e,
            "`trusted_arc_sealers` in check \"t\" must be domain names, found \"a..b\""
        );
        let e = build_err(DmarcCheck::build, "trusted_arc_sealers = 3");
        assert_eq!(
            e,
            "`trusted_arc_sealers` in check \"t\" must be a string or a list of strings, found 3"
        );
        let e = build_err(DmarcCheck::build, "on_policy_reject = \"reject\"");
        assert!(e.contains("unknown key `on_policy_reject`"), "{e}");
        let check = try_build(
            DmarcCheck::build,
            "policy = \"local\"\nhonour_pct = false\ntrusted_arc_sealers = [\"Lists.Example.ORG.\"]",
            &TableSet::new(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(check.inputs(), Stage::Eom);
        assert!(check.needs_body());
    }

    fn loopback_check() -> Arc<dyn Check> {
        Arc::new(DmarcCheck {
            dns: crate::dns::unreachable_for_tests(),
            mode: PolicyMode::Published,
            honour_pct: true,
            trusted_arc_sealers: vec![],
        })
    }

    async fn with_from(from: &[&str]) -> CheckResult {
        let mut i = input(Stage::Eom);
        i.message = Some(Arc::new(Message {
            headers: from.iter().map(|v| Header::new("From", *v)).collect(),
            body: b"hi\r\n".as_slice().into(),
            body_truncated: false,
            size: 0,
        }));
        run(&loopback_check(), i).await
    }

    #[tokio::test]
    async fn the_author_must_be_one_address_in_one_from_header() {
        let r = with_from(&[]).await;
        assert_eq!(r.status, Status::Permerror);
        assert_eq!(
            r.reason.as_deref(),
            Some("DMARC needs exactly one From header, found 0")
        );
        assert_eq!(r.auth_text().as_deref(), Some("dmarc=permerror"));
        let r = with_from(&["a@example.org", "b@example.org"]).await;
        assert_eq!(r.status, Status::Permerror);
        let r = with_from(&["a@example.org, b@example.net"]).await;
        assert_eq!(
            r.reason.as_deref(),
            Some("the From header holds addresses of 2 domains")
        );
        let r = with_from(&["undisclosed"]).await;
        assert_eq!(r.status, Status::Permerror);
        let r = with_from(&["undisclosed-recipients:;"]).await;
        assert_eq!(
            r.reason.as_deref(),
            Some("the From header holds no address")
        );
        let r = with_from(&["a@[192.0.2.1]"]).await;
        assert_eq!(r.status, Status::Permerror);
        // Nothing that could not be asked for in the DNS.
        let long_label = format!("a@{}.org", "x".repeat(64));
        let r = with_from(&[long_label.as_str()]).await;
        assert_eq!(r.status, Status::Permerror);
        assert!(canonical(&format!("{}.org", "x".repeat(63))).is_some());
        assert!(canonical(&format!("{}.org", ["x"; 124].join("."))).is_none());
        assert_eq!(
            canonical("Bücher.Example.").as_deref(),
            Some("xn--bcher-kva.example")
        );
    }
}
