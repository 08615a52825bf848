//! The `dmarc` check: does the From: domain's DMARC policy (RFC 7489, as
//! updated by RFC 9989) accept the message, given SPF and DKIM results that
//! align with that domain? Verified with mail-auth through the shared
//! resolver.
//!
//! The author domain comes from the one From header, which must hold
//! exactly one address (RFC 7489 §6.6.1); anything else is `permerror`. SPF
//! (the MAIL FROM identity, or HELO for `<>`) and DKIM are taken from what
//! the `spf` and `dkim` checks of the same message computed, or computed
//! here when those checks are not configured; DKIM signatures are judged
//! with the `dkim` defaults (an RSA key of fewer than 1024 bits or an `l=`
//! tag does not count as a pass).
//!
//! Results: `pass`, `none` (no policy published, or no usable identifier),
//! `temperror`, `permerror`, and for a message that fails DMARC a status
//! chosen by `policy`:
//! - `policy = "published"` (default): the domain's own policy, after `sp`
//!   and `np` for subdomains, `t=y` test mode and `pct` sampling, becomes
//!   the status: `p=reject` gives `fail`, `p=quarantine` gives `softfail`,
//!   `p=none` gives `neutral`. The actions then come from the usual keys:
//!   `on_fail` (default "reject"), `on_softfail` (default "ignore": set
//!   `on_softfail = "quarantine"` to honour quarantine policies) and
//!   `on_neutral` (default "ignore").
//! - `policy = "local"`: every DMARC failure is `fail`, whatever the domain
//!   publishes; `on_fail` says what to do.
//!
//! Other options:
//! - `honour_pct` (bool, default true): a `pct=` below 100 (RFC 7489 §6.3)
//!   applies the policy to that share of failing messages, drawn at random;
//!   the others get the next milder policy (reject to quarantine, quarantine
//!   to none). `false` applies the policy to every failing message.
//! - `trusted_arc_sealers` (list of domains, default none): when DMARC fails
//!   but the message's ARC chain passes and its newest seal is from one of
//!   these domains (a mailing list or forwarder you trust to have checked
//!   the original), the result is `pass` with the reason "DMARC fail
//!   overridden by trusted ARC sealer <domain>" (RFC 8617 §7.2). The ARC
//!   validation is shared with the `arc` check.
//!
//! Authentication-Results gets `dmarc=<result> header.from=<domain>`; an
//! override is recorded as `dmarc=fail (overridden by trusted ARC sealer
//! <domain>) header.from=<domain>`, since DMARC itself did fail. Exemptions
//! for authenticated senders and trusted networks belong in the dispatch
//! tree: list the check only in the branches it applies to.

use super::prefetch::{RecordKind, TxtPrefetch, dmarc_tree};
use super::spf::pvalue;
use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Early, Status};
use crate::address::normalize_domain;
use crate::dns::Dns;
use crate::stage::Stage;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{AuthenticatedMessage, DmarcResult, Parameters};
use std::sync::Arc;

/// What the `policy` option selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyMode {
    Published,
    Local,
}

const POLICY_MODES: [(&str, PolicyMode); 2] = [
    ("published", PolicyMode::Published),
    ("local", PolicyMode::Local),
];

pub struct DmarcCheck {
    dns: Arc<Dns>,
    mode: PolicyMode,
    honour_pct: bool,
    /// Normalised domains.
    trusted_arc_sealers: Vec<String>,
}

/// One step milder, for messages `pct` leaves out (RFC 7489 §6.6.4).
pub fn milder(p: Policy) -> Policy {
    match p {
        Policy::Reject => Policy::Quarantine,
        Policy::Quarantine | Policy::None | Policy::Unspecified => Policy::None,
    }
}

/// The status a failing message gets under the policy that applies.
pub fn status_for(mode: PolicyMode, applied: Policy) -> Status {
    match (mode, applied) {
        (PolicyMode::Local, _) => Status::Fail,
        (PolicyMode::Published, Policy::Reject) => Status::Fail,
        (PolicyMode::Published, Policy::Quarantine) => Status::Softfail,
        (PolicyMode::Published, Policy::None | Policy::Unspecified) => Status::Neutral,
    }
}

/// `pct=` of a DMARC record, if it has a valid one.
pub fn parse_pct(record: &str) -> Option<u8> {
    record.split(';').find_map(|tag| {
        let (k, v) = tag.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("pct") {
            return None;
        }
        v.trim().parse::<u8>().ok().filter(|p| *p <= 100)
    })
}

fn is_dmarc_record(txt: &str) -> bool {
    let t = txt.trim();
    match t.get(..8) {
        Some(v) if v.eq_ignore_ascii_case("v=DMARC1") => {
            let rest = t[8..].trim_start();
            rest.is_empty() || rest.starts_with(';')
        }
        _ => false,
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

fn with_auth(mut r: CheckResult, fragment: String) -> CheckResult {
    r.auth_results = Some(fragment);
    r
}

impl DmarcCheck {
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let mut ok = true;
        let what = ctx.options.what().to_string();
        let mode = match ctx.options.value("policy") {
            None => PolicyMode::Published,
            Some(raw) => match POLICY_MODES
                .iter()
                .find(|(name, _)| Some(*name) == raw.get_ref().as_str())
            {
                Some(&(_, m)) => m,
                None => {
                    let found = match raw.get_ref().as_str() {
                        Some(s) => format!("\"{s}\""),
                        None => format!("a {}", raw.get_ref().type_str()),
                    };
                    ctx.options.error(
                        raw.span(),
                        format!(
                            "`policy` in {what} must be \"published\" or \"local\", found {found}"
                        ),
                    );
                    ok = false;
                    PolicyMode::Published
                }
            },
        };
        let honour_present = ctx.options.value("honour_pct").is_some();
        let honour_pct = ctx.options.bool("honour_pct");
        ok &= !honour_present || honour_pct.is_some();
        let mut trusted_arc_sealers = Vec::new();
        if ctx.options.value("trusted_arc_sealers").is_some() {
            match ctx.options.string_list("trusted_arc_sealers") {
                Some(list) => {
                    for d in list.get_ref() {
                        match normalize_domain(d) {
                            Ok(n) if !n.starts_with('[') => trusted_arc_sealers.push(n),
                            _ => {
                                ctx.options.error(
                                    list.span(),
                                    format!(
                                        "`trusted_arc_sealers` in {what}: \"{d}\" is not a domain"
                                    ),
                                );
                                ok = false;
                            }
                        }
                    }
                }
                None => ok = false,
            }
        }
        let dns = match ctx.dns.get() {
            Ok(dns) => dns,
            Err(e) => {
                let span = ctx.options.span();
                ctx.options.error(span, e);
                return None;
            }
        };
        ok.then(|| {
            Arc::new(DmarcCheck {
                dns,
                mode,
                honour_pct: honour_pct.unwrap_or(true),
                trusted_arc_sealers,
            }) as Arc<dyn Check>
        })
    }

    /// `pct=` of the record that governs `domain`: the first DMARC record
    /// from the domain up to its parent below the top level (mail-auth no
    /// longer parses `pct`; the shared resolver cache usually answers, and
    /// only failing messages ask). 100 when unknown.
    async fn published_pct(&self, domain: &str) -> u8 {
        let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
        for start in 0..labels.len().saturating_sub(1) {
            let name = format!("_dmarc.{}", labels[start..].join("."));
            if let Ok(records) = self.dns.txt(&name).await
                && let Some(r) = records.iter().find(|r| is_dmarc_record(r))
            {
                return parse_pct(r).unwrap_or(100);
            }
        }
        100
    }

    /// The trusted sealer of a passing ARC chain, if there is one.
    async fn trusted_sealer(&self, input: &CheckInput) -> Option<String> {
        if self.trusted_arc_sealers.is_empty() {
            return None;
        }
        let arc = super::arc::facts(&self.dns, input).await?;
        if arc.0.status != Status::Pass {
            return None;
        }
        let sealer = arc.0.sealer.as_deref()?;
        let sealer = normalize_domain(sealer).unwrap_or_else(|_| sealer.to_ascii_lowercase());
        self.trusted_arc_sealers.contains(&sealer).then_some(sealer)
    }

    async fn evaluate(&self, input: &CheckInput) -> CheckResult {
        let Some(message) = input.message.as_ref() else {
            return CheckResult::temperror("no message to evaluate");
        };
        let permerror =
            |why: String| with_auth(CheckResult::permerror(why), "dmarc=permerror".into());
        let from_headers = message.header_values("From").count();
        if from_headers != 1 {
            return permerror(format!(
                "DMARC needs exactly one From header, found {from_headers}"
            ));
        }
        // mail-auth's DMARC evaluation reads only the From addresses of the
        // parsed message (DKIM, which needs the rest, is verified by
        // `dkim::facts`): parse just the From header, not every header and
        // DKIM-Signature again.
        let from_only: Vec<crate::message::Header> = message
            .headers
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case("From"))
            .cloned()
            .collect();
        let head = crate::message::header_block(&from_only);
        let Some(parsed) = AuthenticatedMessage::parse_with_opts(&head, None, false) else {
            return permerror("the header cannot be parsed".into());
        };
        if parsed.from.len() != 1 {
            return permerror(format!(
                "the From header must hold exactly one address, found {}",
                parsed.from.len()
            ));
        }
        let from_domain = parsed.from[0]
            .rsplit_once('@')
            .map(|(_, d)| d.trim().to_string())
            .unwrap_or_default();
        if from_domain.is_empty() {
            return permerror("the From address has no domain".into());
        }

        // The policy records were most likely asked for when the From
        // header arrived; if not (a From: the prefetch could not read), all
        // levels of the tree are asked for now, at once.
        let store = TxtPrefetch::of(&input.memo);
        let tree = normalize_domain(&from_domain)
            .map(|d| dmarc_tree(&d))
            .unwrap_or_default();
        for name in &tree {
            store.start(&self.dns, name, RecordKind::Dmarc);
        }
        let (spf, dkim, ()) = tokio::join!(
            super::spf::mail_from_outcome(&self.dns, input),
            super::dkim::facts(&self.dns, input),
            store.settled(&self.dns, &tree)
        );
        let (Some(spf), Some(dkim)) = (spf, dkim) else {
            return CheckResult::temperror("internal error: DMARC memo");
        };
        let dkim_outputs = super::dkim::outputs_for_dmarc(&dkim);
        let out = self
            .dns
            .authenticator()
            .verify_dmarc(
                Parameters::new(DmarcParameters::new(
                    &parsed,
                    &dkim_outputs,
                    &spf.0.domain,
                    &spf.0.output,
                ))
                .with_txt_cache(&*store),
            )
            .await;
        let domain = if out.domain().is_empty() {
            from_domain
        } else {
            out.domain().to_string()
        };
        let header_from = format!("header.from={}", pvalue(&domain));
        let fragment = |status: &str| format!("dmarc={status} {header_from}");
        match out.result() {
            DmarcResult::Pass => {
                let how = match (out.dkim_result(), out.spf_result()) {
                    (DmarcResult::Pass, DmarcResult::Pass) => "DKIM and SPF aligned",
                    (DmarcResult::Pass, _) => "DKIM aligned",
                    _ => "SPF aligned",
                };
                with_auth(
                    CheckResult::with_reason(
                        Status::Pass,
                        format!("DMARC pass for {domain} ({how})"),
                    ),
                    fragment("pass"),
                )
            }
            DmarcResult::None => with_auth(
                CheckResult::with_reason(Status::None, format!("no DMARC policy for {domain}")),
                fragment("none"),
            ),
            DmarcResult::TempError(e) => with_auth(
                CheckResult::temperror(format!("DMARC temperror for {domain}: {e}")),
                fragment("temperror"),
            ),
            DmarcResult::PermError(e) => with_auth(
                CheckResult::permerror(format!("DMARC permerror for {domain}: {e}")),
                fragment("permerror"),
            ),
            DmarcResult::Fail(_) => {
                if let Some(sealer) = self.trusted_sealer(input).await {
                    let why = format!("DMARC fail overridden by trusted ARC sealer {sealer}");
                    return with_auth(
                        CheckResult::with_reason(Status::Pass, why),
                        format!(
                            "dmarc=fail (overridden by trusted ARC sealer {sealer}) {header_from}"
                        ),
                    );
                }
                let published = out.policy();
                let mut applied = published;
                let mut note = String::new();
                if self.honour_pct && matches!(published, Policy::Reject | Policy::Quarantine) {
                    let pct = self.published_pct(&domain).await;
                    if !sampled(pct) {
                        applied = milder(published);
                        note = format!(", pct={pct}, not sampled: {applied} applied");
                    }
                }
                let status = status_for(self.mode, applied);
                with_auth(
                    CheckResult::with_reason(
                        status,
                        format!("DMARC fail for {domain} (p={published}{note})"),
                    ),
                    fragment("fail"),
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
    /// policy records of the MAIL FROM domain at MAIL FROM (most often the
    /// From: domain too, which is only known once the headers come; relaxed
    /// SPF alignment needs them otherwise), those of the From: domain when
    /// that header arrives, and the DKIM keys (DMARC verifies the
    /// signatures itself when no `dkim` check runs). The tree walk's levels
    /// are asked for all at once. A DKIM signer that is a subdomain of the
    /// author's organization still has its tree walked at end of message.
    fn prefetch(&self, early: &Early<'_>) {
        let (memo, dns) = (early.memo, &self.dns);
        match early.header {
            None => {
                if let Some(domain) = early.sender.domain() {
                    super::prefetch::dmarc_records(memo, dns, domain);
                }
            }
            Some((name, value)) if name.eq_ignore_ascii_case("From") => {
                // Only a From: with one domain has a policy (RFC 7489 §6.6.1).
                if let [domain] = super::dnsbl::from_header_domains(value).as_slice() {
                    super::prefetch::dmarc_records(memo, dns, domain);
                }
            }
            Some((name, value)) => {
                super::prefetch::dkim_key(memo, dns, name, value);
                if !self.trusted_arc_sealers.is_empty() {
                    super::prefetch::arc_keys(memo, dns, name, value);
                }
            }
        }
    }

    /// The published policy decides by default: p=reject gives fail (the
    /// generic default rejects it) and p=quarantine gives softfail, which
    /// DMARC quarantines unless `on_softfail` says otherwise.
    fn default_action(&self, status: Status) -> Option<crate::policy::Action> {
        (status == Status::Softfail).then_some(crate::policy::Action::Quarantine)
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
        assert_eq!(status_for(p, Policy::Reject), Status::Fail);
        assert_eq!(status_for(p, Policy::Quarantine), Status::Softfail);
        assert_eq!(status_for(p, Policy::None), Status::Neutral);
        assert_eq!(status_for(p, Policy::Unspecified), Status::Neutral);
        for policy in [Policy::Reject, Policy::Quarantine, Policy::None] {
            assert_eq!(status_for(PolicyMode::Local, policy), Status::Fail);
        }
        assert_eq!(milder(Policy::Reject), Policy::Quarantine);
        assert_eq!(milder(Policy::Quarantine), Policy::None);
        assert_eq!(milder(Policy::None), Policy::None);
    }

    #[test]
    fn pct_is_read_from_the_record() {
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=25"), Some(25));
        assert_eq!(parse_pct("v=DMARC1; p=reject; PCT = 0 ;"), Some(0));
        assert_eq!(parse_pct("v=DMARC1; p=reject"), None);
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=250"), None);
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=x"), None);
        assert!(is_dmarc_record("v=DMARC1; p=none"));
        assert!(is_dmarc_record("v=DMARC1"));
        assert!(!is_dmarc_record("v=spf1 -all"));
        assert!(!is_dmarc_record("v=DMARC10; p=none"));
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
        let e = build_err(DmarcCheck::build, "honour_pct = \"no\"");
        assert!(e.contains("honour_pct"), "{e}");
        let e = build_err(DmarcCheck::build, "trusted_arc_sealers = [\"a..b\"]");
        assert!(e.contains("\"a..b\" is not a domain"), "{e}");
        let e = build_err(DmarcCheck::build, "trusted_arc_sealers = 3");
        assert!(e.contains("trusted_arc_sealers"), "{e}");
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
            headers: from
                .iter()
                .map(|v| Header::new("From", v.to_string()))
                .collect(),
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
        assert_eq!(r.auth_results.as_deref(), Some("dmarc=permerror"));
        let r = with_from(&["a@example.org", "b@example.org"]).await;
        assert_eq!(r.status, Status::Permerror);
        let r = with_from(&["a@example.org, b@example.net"]).await;
        assert_eq!(
            r.reason.as_deref(),
            Some("the From header must hold exactly one address, found 2")
        );
        let r = with_from(&["undisclosed"]).await;
        assert_eq!(r.status, Status::Permerror);
    }
}
