//! The `arc` check: validates the message's ARC chain (RFC 8617) with
//! mail-auth through the shared resolver and reports it as `arc=<result>` in
//! Authentication-Results. It has no options of its own.
//!
//! Results: `pass` (a complete chain whose newest AMS and every seal
//! verify), `fail` (a broken, malformed or unverifiable chain, including a
//! body altered after the newest seal and a seal key that is not
//! published; and, as RFC 8617 §4.2.1 and §5.2 say, a set sealed with
//! `cv=fail` upstream, a first set whose cv= is not `none`, instances that
//! are not 1 to N once each, and more than 50 sets: tests/it/arc_rfc8617.rs), `none` (no ARC headers), `temperror` (a DNS failure while
//! fetching a key: the chain could be fine). Act on them with the usual
//! `on_<result>` keys; by default a `fail` rejects, so an administrator who
//! only wants the report sets `on_fail = "ignore"`.
//!
//! The outcome is memoised for the message, together with the domain of the
//! newest ARC-Seal, so the `dmarc` check can override a DMARC failure when
//! the chain passes and was sealed by a trusted forwarder
//! (`trusted_arc_sealers`), without validating the chain a second time.

use super::prefetch::{TxtPrefetch, domain_key_name};
use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Early, Status};
use crate::dkim_canon::MAX_ARC_SETS;
use crate::dns::Dns;
use crate::stage::Stage;
use mail_auth::{AuthenticatedMessage, DkimResult, DnsError, Error, Parameters};
use std::sync::Arc;

/// What ARC validation found, owned so it can be memoised.
#[derive(Clone, Debug, PartialEq)]
pub struct ArcFacts {
    pub status: Status,
    pub reason: String,
    /// How many ARC sets the message carries.
    pub sets: usize,
    /// `d=` of the newest ARC-Seal (the highest `i=`), lowercased.
    pub sealer: Option<String>,
}

/// The memoised ARC validation of a message.
pub struct ArcMemo(pub ArcFacts);

/// mail-auth's chain result in the check vocabulary. ARC itself only knows
/// none, pass and fail (RFC 8617 §4.4); a DNS failure is kept apart so that
/// it cannot be mistaken for a broken chain.
pub fn status_of(result: &DkimResult) -> Status {
    match result {
        DkimResult::Pass => Status::Pass,
        DkimResult::None => Status::None,
        DkimResult::TempError(_) => Status::Temperror,
        DkimResult::Fail(_) | DkimResult::Neutral(_) | DkimResult::PermError(_) => Status::Fail,
    }
}

fn describe(result: &DkimResult) -> Option<String> {
    match result {
        DkimResult::Pass | DkimResult::None => None,
        DkimResult::Fail(e)
        | DkimResult::Neutral(e)
        | DkimResult::PermError(e)
        | DkimResult::TempError(e) => Some(match e {
            Error::Dns(DnsError::RecordNotFound(_)) => "no key published for a seal".into(),
            Error::Dns(DnsError::Resolver(_)) => "DNS failure fetching a key".into(),
            other => other.to_string(),
        }),
    }
}

fn facts_from(result: &DkimResult, sets: usize, sealer: Option<String>) -> ArcFacts {
    let status = status_of(result);
    let reason = match (status, describe(result)) {
        (Status::None, _) => "no ARC chain".to_string(),
        (Status::Pass, _) => match &sealer {
            Some(d) => format!("ARC pass, {sets} set(s), newest seal by {d}"),
            None => format!("ARC pass, {sets} set(s)"),
        },
        (s, Some(why)) => format!("ARC {s}: {why}"),
        (s, None) => format!("ARC {s}"),
    };
    ArcFacts {
        status,
        reason,
        sets,
        sealer,
    }
}

async fn validate(dns: &Dns, input: &CheckInput) -> ArcFacts {
    // No ARC header at all (most mail): no chain, and no need to rebuild
    // the message bytes to find that out.
    let has_arc_header = input.message.as_ref().is_some_and(|m| {
        m.headers.iter().any(|h| {
            [
                "ARC-Seal",
                "ARC-Message-Signature",
                "ARC-Authentication-Results",
            ]
            .iter()
            .any(|n| h.name().eq_ignore_ascii_case(n))
        })
    });
    if !has_arc_header {
        return facts_from(&DkimResult::None, 0, None);
    }
    let Some(message) = input.message.as_ref() else {
        return facts_from(&DkimResult::None, 0, None);
    };
    // mail-auth reads the header block alone: it would hash the body once
    // for every canonicalization, hash and l= any signature names.
    let head = crate::message::header_block(&message.headers);
    let Some(mut parsed) = AuthenticatedMessage::parse_with_opts(&head, None, false) else {
        return facts_from(&DkimResult::None, 0, None);
    };
    // The AMS body hashes are DKIM's (RFC 8617 §4.1.2): ours, not mail-auth
    // 0.13's (crate::dkim_canon says why).
    crate::dkim_canon::replace_ams_body_hashes(&mut parsed, &message.body.contiguous());
    let sealer = parsed
        .as_headers
        .iter()
        .max_by_key(|h| h.header.i)
        .map(|h| h.header.d.to_ascii_lowercase());
    let sets = parsed.as_headers.len();
    if sets > 0 && input.message.as_ref().is_some_and(|m| m.body_truncated) {
        return ArcFacts {
            status: Status::Temperror,
            reason: super::dkim::TRUNCATED.to_string(),
            sets,
            sealer,
        };
    }
    let store = TxtPrefetch::of(&input.memo);
    // The keys of every set, as the headers named them.
    let keys: Vec<String> = parsed
        .as_headers
        .iter()
        .map(|h| domain_key_name(&h.header.s, &h.header.d))
        .chain(
            parsed
                .ams_headers
                .iter()
                .map(|h| domain_key_name(&h.header.s, &h.header.d)),
        )
        .collect();
    // More sets than a chain may have fail before any key is needed
    // (mail-auth checks the count first): a forged message with a
    // thousand ARC headers is not a thousand lookups.
    if parsed.as_headers.len() <= MAX_ARC_SETS && parsed.ams_headers.len() <= MAX_ARC_SETS {
        store.settled(dns, &keys).await;
    }
    let output = dns
        .authenticator()
        .verify_arc(Parameters::new(&parsed).with_txt_cache(&*store))
        .await;
    facts_from(output.result(), sets, sealer)
}

/// The ARC validation of this message, computed once, whichever of `arc`
/// and `dmarc` asks first.
pub async fn facts(dns: &Dns, input: &CheckInput) -> Option<Arc<ArcMemo>> {
    input
        .memo
        .get_or_init(|| async { ArcMemo(validate(dns, input).await) })
        .await
}

/// The check result for validated facts.
pub fn result(f: &ArcFacts) -> CheckResult {
    let mut r = CheckResult::with_reason(f.status, f.reason.clone());
    r.auth_results = Some(format!("arc={}", f.status));
    r
}

pub struct ArcCheck {
    dns: Arc<Dns>,
}

impl ArcCheck {
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        match ctx.dns.get() {
            Ok(dns) => Some(Arc::new(ArcCheck { dns })),
            Err(e) => {
                let span = ctx.options.span();
                ctx.options.error(span, e);
                None
            }
        }
    }
}

impl Check for ArcCheck {
    fn auth_method(&self) -> Option<&'static str> {
        Some("arc")
    }

    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn needs_body(&self) -> bool {
        true
    }

    /// Fetch the keys of each ARC set as its headers arrive.
    fn prefetch(&self, early: &Early<'_>) {
        if let Some((name, value)) = early.header {
            super::prefetch::arc_keys(early.memo, &self.dns, name, value);
        }
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move {
            if input.message.is_none() {
                return CheckResult::temperror("no message to validate");
            }
            match facts(&self.dns, &input).await {
                Some(memo) => result(&memo.0),
                None => CheckResult::temperror("internal error: ARC memo"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::require_tls::tests::{build_err, input, run, try_build};
    use crate::message::{Header, Message};
    use crate::tables::TableSet;
    use mail_auth::arc::ArcError;
    use mail_auth::common::crypto::CryptoError;

    #[test]
    fn chain_results_map_to_none_pass_fail() {
        assert_eq!(status_of(&DkimResult::Pass), Status::Pass);
        assert_eq!(status_of(&DkimResult::None), Status::None);
        for r in [
            DkimResult::Fail(Error::Arc(ArcError::BrokenChain)),
            DkimResult::Neutral(Error::Arc(ArcError::FailedBodyHashMatch)),
            DkimResult::PermError(Error::Dns(DnsError::RecordNotFound(
                mail_auth::hickory_resolver::proto::op::ResponseCode::NXDomain,
            ))),
            DkimResult::Fail(Error::Crypto(CryptoError::FailedVerification)),
        ] {
            assert_eq!(status_of(&r), Status::Fail, "{r:?}");
        }
        assert_eq!(
            status_of(&DkimResult::TempError(Error::Dns(DnsError::Resolver(
                "timeout".into()
            )))),
            Status::Temperror
        );
    }

    #[test]
    fn results_name_the_sealer_and_the_problem() {
        let f = facts_from(&DkimResult::Pass, 2, Some("list.example".into()));
        let r = result(&f);
        assert_eq!(r.status, Status::Pass);
        assert_eq!(
            r.reason.as_deref(),
            Some("ARC pass, 2 set(s), newest seal by list.example")
        );
        assert_eq!(r.auth_results.as_deref(), Some("arc=pass"));
        let f = facts_from(&DkimResult::Fail(Error::Arc(ArcError::InvalidCV)), 1, None);
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.reason.starts_with("ARC fail: Invalid 'cv='"),
            "{}",
            f.reason
        );
        let f = facts_from(&DkimResult::None, 0, None);
        assert_eq!(result(&f).auth_results.as_deref(), Some("arc=none"));
        assert_eq!(f.reason, "no ARC chain");
    }

    #[test]
    fn there_are_no_options() {
        let e = build_err(ArcCheck::build, "trusted = [\"x\"]");
        assert!(e.contains("unknown key `trusted`"), "{e}");
        let check =
            try_build(ArcCheck::build, "", &TableSet::new()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(check.inputs(), Stage::Eom);
        assert!(check.needs_body());
    }

    #[tokio::test]
    async fn a_message_without_arc_headers_is_none() {
        let check: Arc<dyn Check> = Arc::new(ArcCheck {
            dns: crate::dns::unreachable_for_tests(),
        });
        let mut i = input(Stage::Eom);
        i.message = Some(Arc::new(Message {
            headers: vec![Header::new("From", "a@example.org")],
            body: b"hi\r\n".as_slice().into(),
            body_truncated: false,
            size: 0,
        }));
        let r = run(&check, i).await;
        assert_eq!(r.status, Status::None);
        assert_eq!(r.auth_results.as_deref(), Some("arc=none"));
    }
}
