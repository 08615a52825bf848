//! ARC chain validation (RFC 8617) with mail-auth through the shared
//! resolver; the AMS body hashes are ours (crate::dkim_canon). The `arc`
//! check reports the facts; DMARC reads them from the message's
//! [`Evidence`](super::Evidence) to honour trusted sealers.

use super::keys::{KeyStore, domain_key_name};
use crate::auth_results::Status;
use crate::dkim_canon::MAX_ARC_SETS;
use crate::dns::Dns;
use crate::message::Message;
use mail_auth::{AuthenticatedMessage, DkimResult, DnsError, Error, Parameters};

/// What ARC validation found, owned so it can be shared.
#[derive(Clone, Debug, PartialEq)]
pub struct ArcFacts {
    /// The chain validation result: `pass`, `fail`, `none`, or an error.
    pub status: Status,
    /// Why the chain got that result, in words for the check's reason.
    pub reason: String,
    /// How many ARC sets the message carries.
    pub sets: usize,
    /// `d=` of the newest ARC-Seal (the highest `i=`), lowercased.
    pub sealer: Option<String>,
}

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

pub(crate) fn facts_from(result: &DkimResult, sets: usize, sealer: Option<String>) -> ArcFacts {
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

pub(crate) async fn validate(dns: &Dns, store: &KeyStore, message: Option<&Message>) -> ArcFacts {
    // No ARC header at all (most mail): no chain, and no need to rebuild
    // the message bytes to find that out.
    let has_arc_header = message.is_some_and(|m| {
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
    let Some(message) = message else {
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
    if sets > 0 && message.body_truncated {
        return ArcFacts {
            status: Status::Temperror,
            reason: super::dkim::TRUNCATED.to_string(),
            sets,
            sealer,
        };
    }
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
        .verify_arc(Parameters::new(&parsed).with_txt_cache(store))
        .await;
    facts_from(output.result(), sets, sealer)
}
