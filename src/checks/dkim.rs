//! The `dkim` check: verifies every DKIM-Signature of the message (RFC 6376)
//! with mail-auth through the shared resolver.
//!
//! Options:
//! - `min_rsa_bits` (integer, default 1024): an RSA key shorter than this
//!   does not count; a signature that verifies with one is reported as
//!   `fail` with the reason "weak key" (RFC 8301 §3.2 requires at least 1024
//!   bits). Ed25519 keys are always long enough.
//! - `allow_l_tag` (bool, default false): a signature with a body length
//!   limit (`l=`) that verifies is reported as `neutral`, because anyone can
//!   append content after the signed part (RFC 6376 §8.2). With `true` it is
//!   a `pass` like any other.
//!
//! The result is `pass` when any signature passes; otherwise `fail` when any
//! fails; otherwise `temperror`, `permerror`, `neutral` in that order; `none`
//! without a signature. Each signature adds `dkim=<result> header.d=<d>
//! header.s=<s> header.b=<first 8 characters of b=>` to Authentication-Results
//! (RFC 8601 §2.7.1, RFC 6008). A body hash mismatch (the body was altered)
//! is a `fail`; an expired or malformed signature is `neutral`; a key that is
//! not published is `permerror`; a DNS failure is `temperror`.
//!
//! When the body was longer than the pipeline's `max_body_size` only part of
//! it was kept, so nothing can be verified: the result is `temperror`
//! ("body larger than max_body_size; cannot verify").
//!
//! Each header is verified as the MTA passed it (LEADING_SPACE negotiated):
//! its exact bytes after the colon, folds made CRLF, so "simple" header
//! canonicalization (RFC 6376 §3.4.1) sees `Subject:x` and 8-bit values as
//! the signer did. Without LEADING_SPACE (Postfix before 2.9) the MTA drops
//! the white space after the colon and one space is assumed.
//!
//! mail-auth 0.13 parses the signatures, fetches and judges the keys and
//! checks expiry and `i=`; the canonicalization is ours
//! (`crate::dkim_canon`). The library's body canonicalization is wrong for
//! white-space-only lines at the end of a relaxed body (§3.4.4), for `l=`
//! (§3.5: octets of the canonical body; `l=0` signs no body) and for a CR
//! not followed by LF, so each signature is checked against our body hash
//! of its own `l=`; its relaxed header canonicalization takes form feed for
//! white space, so when it reaches the signature itself the header hash is
//! recomputed here and the signature checked against that. An `l=` larger
//! than the canonicalized body is a `fail` (§3.5 "MUST NOT be larger";
//! OpenDKIM agrees; dkimpy passes it, and mail-auth's own signer writes
//! such an `l=`: the raw body length).
//!
//! At most `MAX_SIGNATURES` (5) signatures are verified, top down; the
//! rest are reported once as not checked (`dkim=neutral reason=...`) and
//! count for nothing. Signatures that agree on canonicalization, hash and
//! `l=` share one body hash, and canonicalization stops at `l=`, so a
//! hostile message costs at most five passes over its body. `l=` is read
//! by us (`dkim_canon::l_tag`): `l=0` is a length limit like any other,
//! and `l=` twice makes the signature a `permerror`.
//!
//! The verification is memoised for the message: the `dmarc` check reuses
//! it (and runs it itself when no `dkim` check is configured). DMARC judges
//! signatures with the defaults above, whatever a `dkim` check's options.

use super::prefetch::{TxtPrefetch, domain_key_name};
use super::spf::pvalue;
use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Early, Status};
use crate::dns::Dns;
use crate::stage::Stage;
use mail_auth::common::crypto::{Algorithm, CryptoError, HashAlgorithm};
use mail_auth::common::verify::{DomainKey, VerifySignature};
use mail_auth::dkim::{Canonicalization, DkimError, Signature};
use mail_auth::{AuthenticatedMessage, DkimOutput, DkimResult, DnsError, Error, Parameters};
use std::sync::Arc;

pub const DEFAULT_MIN_RSA_BITS: usize = 1024;
pub const DEFAULT_ALLOW_L_TAG: bool = false;

/// The reason when the body was cut at `max_body_size`.
pub const TRUNCATED: &str = "body larger than max_body_size; cannot verify";

/// The reason when `l=` claims more body than there is (RFC 6376 §3.5).
pub const L_TOO_LARGE: &str = "l= is larger than the canonicalized body";

/// What verification found for one signature, owned so it can be memoised.
#[derive(Clone, Debug)]
pub struct SignatureFacts {
    /// `None` for a DKIM-Signature that could not be parsed.
    pub signature: Option<Signature>,
    /// mail-auth's verdict, before local policy (key size, `l=`).
    pub result: DkimResult,
    /// The RSA modulus size, when the key was fetched and is RSA.
    pub key_bits: Option<usize>,
    /// The signature's `l=` as we read it (RFC 6376 §3.5): `Some(0)`
    /// signs no body at all (mail-auth's `Signature::l` says 0 for that
    /// and for no `l=` alike).
    pub body_length: Option<u64>,
}

impl SignatureFacts {
    /// A signature judged before any key was fetched (its tags alone
    /// decide it).
    fn without_key(sig: Signature, result: DkimResult, body_length: Option<u64>) -> Self {
        SignatureFacts {
            signature: Some(sig),
            result,
            key_bits: None,
            body_length,
        }
    }
}

/// The memoised DKIM verification of a message.
#[derive(Clone, Debug, Default)]
pub struct DkimMemo {
    pub signatures: Vec<SignatureFacts>,
    /// The body was cut at `max_body_size`: nothing was verified.
    pub truncated: bool,
    /// Signatures past the first `MAX_SIGNATURES`, not looked at.
    pub unchecked: usize,
}

/// How local policy judges signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judge {
    pub min_rsa_bits: usize,
    pub allow_l_tag: bool,
}

impl Default for Judge {
    fn default() -> Self {
        Judge {
            min_rsa_bits: DEFAULT_MIN_RSA_BITS,
            allow_l_tag: DEFAULT_ALLOW_L_TAG,
        }
    }
}

/// What a body hash depends on: canonicalization, hash and `l=`.
type BodyHashKey = (Canonicalization, HashAlgorithm, Option<u64>);

/// Most DKIM-Signature headers verified per message, top down (the
/// newest first). Each costs a key lookup, a public-key operation and, for
/// a new canonicalization, hash or `l=`, a pass over the body: a message
/// with a thousand signatures must not cost a thousand of each. Real mail
/// has one to three (author, ESP, mailing list); OpenDKIM verifies 3 by
/// default.
pub const MAX_SIGNATURES: usize = 5;

/// Verify the message's signatures (the first `MAX_SIGNATURES`).
async fn verify(dns: &Dns, input: &CheckInput) -> DkimMemo {
    let Some(message) = input.message.as_ref() else {
        return DkimMemo::default();
    };
    // Most mail is unsigned: nothing to verify, no need to rebuild the
    // message bytes (a copy of the whole body) to find that out.
    if !message
        .headers
        .iter()
        .any(|h| h.name().eq_ignore_ascii_case("DKIM-Signature"))
    {
        return DkimMemo {
            truncated: message.body_truncated,
            ..DkimMemo::default()
        };
    }
    if message.body_truncated {
        // Nothing can be verified: list the signatures from the header
        // block alone, without copying the (max_body_size) body.
        let head = crate::message::header_block(&message.headers);
        let Some(parsed) = AuthenticatedMessage::parse_with_opts(&head, None, false) else {
            return DkimMemo {
                truncated: true,
                ..DkimMemo::default()
            };
        };
        let mut signatures: Vec<SignatureFacts> = malformed(&parsed);
        signatures.extend(parsed.dkim_headers.iter().take(MAX_SIGNATURES).map(|h| {
            SignatureFacts {
                signature: Some(h.header.clone()),
                result: DkimResult::TempError(Error::Io(TRUNCATED.to_string())),
                key_bits: None,
                body_length: None,
            }
        }));
        return DkimMemo {
            signatures,
            truncated: true,
            unchecked: parsed.dkim_headers.len().saturating_sub(MAX_SIGNATURES),
        };
    }
    // mail-auth reads the header block; the body hashes are ours
    // (crate::dkim_canon says why), so the body is never given to it.
    let head = crate::message::header_block(&message.headers);
    // Not strict: signatures with l= are verified, and local policy decides
    // what they are worth.
    let Some(mut parsed) = AuthenticatedMessage::parse_with_opts(&head, None, false) else {
        return DkimMemo::default();
    };
    let body = message.body.contiguous();
    // Every header as the signatures hash it: name, value with CRLF folds.
    let values: Vec<Vec<u8>> = message
        .headers
        .iter()
        .map(|h| {
            let mut v = Vec::with_capacity(h.raw_value().len() + 2);
            h.write_value_crlf(&mut v);
            v.truncate(v.len() - 2);
            v
        })
        .collect();
    let fields: Vec<(&[u8], &[u8])> = message
        .headers
        .iter()
        .zip(&values)
        .map(|(h, v)| (h.name().as_bytes(), v.as_slice()))
        .collect();
    // Keys asked for when the DKIM-Signature headers arrived answer from
    // the message's store; the others are fetched now.
    let store = TxtPrefetch::of(&input.memo);
    let keys: Vec<String> = parsed
        .dkim_headers
        .iter()
        .take(MAX_SIGNATURES)
        .map(|h| domain_key_name(&h.header.s, &h.header.d))
        .collect();
    store.settled(dns, &keys).await;
    // Signatures that did not parse first, as mail-auth reports them; then
    // each signature on its own, so each is checked against the body hash
    // of its own `l=` (mail-auth keys body hashes by `l` with 0 for both
    // "absent" and "l=0", which sign different things).
    let mut signatures = malformed(&parsed);
    parsed
        .errors
        .retain(|h| !matches!(h.header, Error::Dkim(_)));
    let all = std::mem::take(&mut parsed.dkim_headers);
    let unchecked = all.len().saturating_sub(MAX_SIGNATURES);
    // Body hashes by canonicalization, hash and l=: signatures that agree
    // on all three share one pass over the body.
    let mut hashes: Vec<(BodyHashKey, Vec<u8>)> = Vec::new();
    for header in all.into_iter().take(MAX_SIGNATURES) {
        let sig = header.header.clone();
        let algorithm = HashAlgorithm::from(sig.a);
        let limit = match crate::dkim_canon::l_tag(header.value) {
            Ok(limit) => limit,
            Err(why) => {
                let result = DkimResult::PermError(Error::Io(why.to_string()));
                signatures.push(SignatureFacts::without_key(sig, result, None));
                continue;
            }
        };
        // RFC 6376 §3.5: l= "MUST NOT be larger than the actual number of
        // octets in the canonicalized message body". Such a signature
        // claims body that is not there: it fails (as OpenDKIM has it).
        if let Some(l) = limit
            && l > crate::dkim_canon::canonical_len_up_to(&body, sig.cb, l)
        {
            let result = DkimResult::Fail(Error::Io(L_TOO_LARGE.to_string()));
            signatures.push(SignatureFacts::without_key(sig, result, limit));
            continue;
        }
        let hash_key = (sig.cb, algorithm, limit);
        let hash = match hashes.iter().find(|(k, _)| *k == hash_key) {
            Some((_, hash)) => hash.clone(),
            None => {
                let hash = crate::dkim_canon::body_hash(&body, sig.cb, algorithm, limit);
                hashes.push((hash_key, hash.clone()));
                hash
            }
        };
        let signature_field = (
            header.name,
            header.value.strip_suffix(b"\r\n").unwrap_or(header.value),
        );
        parsed.body_hashes = vec![(sig.cb, algorithm, sig.l, hash)];
        parsed.dkim_headers = vec![header];
        let outputs: Vec<DkimOutput<'_>> = dns
            .authenticator()
            .verify_dkim(Parameters::new(&parsed).with_txt_cache(&*store))
            .await;
        for o in &outputs {
            let signature = o.signature().cloned();
            // mail-auth got as far as the signature itself: the key is
            // fetched and acceptable, the body hash matches. Its header
            // canonicalization is not the RFC's in every case (form feed
            // taken for WSP), so the header hash and the signature check
            // are decided here (a second public-key operation, cheap next
            // to the DNS lookup).
            // (Its Ed25519 check reports a bad signature as a library
            // error, not as FailedVerification: every crypto failure is
            // looked at again.)
            let result = match (&signature, o.result()) {
                (Some(sig), DkimResult::Pass) | (Some(sig), DkimResult::Fail(Error::Crypto(_))) => {
                    // Without the key now, what mail-auth said cannot
                    // stand: its header hash is not the RFC's in every case.
                    check_header_hash(dns, &store, sig, &fields, signature_field)
                        .await
                        .unwrap_or_else(|| {
                            DkimResult::TempError(Error::Io(
                                "the key could not be fetched again".to_string(),
                            ))
                        })
                }
                (_, other) => other.clone(),
            };
            let key_bits = match (&signature, &result) {
                (Some(sig), DkimResult::Pass)
                | (Some(sig), DkimResult::Fail(Error::Crypto(CryptoError::FailedVerification)))
                    if sig.a != Algorithm::Ed25519Sha256 =>
                {
                    rsa_key_bits(dns, &store, sig).await
                }
                _ => None,
            };
            signatures.push(SignatureFacts {
                signature,
                result,
                key_bits,
                body_length: limit,
            });
        }
    }
    DkimMemo {
        signatures,
        truncated: false,
        unchecked,
    }
}

/// The signature checked over the header hash input of RFC 6376 §3.7,
/// canonicalized by `crate::dkim_canon`; `None` when the key cannot be had
/// (mail-auth had it moments ago, from the message's store).
async fn check_header_hash(
    dns: &Dns,
    store: &TxtPrefetch,
    sig: &Signature,
    fields: &[(&[u8], &[u8])],
    signature_field: (&[u8], &[u8]),
) -> Option<DkimResult> {
    let key = dns
        .authenticator()
        .txt_lookup::<DomainKey>(sig.domain_key(), Some(store))
        .await
        .ok()?;
    let input = crate::dkim_canon::header_hash_input(fields, &sig.h, signature_field, sig.ch);
    Some(match key.p.verify_bytes(&input, &sig.b, sig.a) {
        Ok(()) => DkimResult::Pass,
        Err(e) => DkimResult::Fail(e),
    })
}

/// Signatures that did not parse, as mail-auth reports them (neutral).
fn malformed(parsed: &AuthenticatedMessage<'_>) -> Vec<SignatureFacts> {
    parsed
        .errors
        .iter()
        .filter(|h| matches!(h.header, Error::Dkim(_)))
        .map(|h| SignatureFacts {
            signature: None,
            result: DkimResult::Neutral(h.header.clone()),
            key_bits: None,
            body_length: None,
        })
        .collect()
}

/// The size of the signer's RSA key. mail-auth fetched the record moments
/// ago and left it in the message's store.
async fn rsa_key_bits(dns: &Dns, store: &TxtPrefetch, sig: &Signature) -> Option<usize> {
    let key = dns
        .authenticator()
        .txt_lookup::<DomainKey>(sig.domain_key(), Some(store))
        .await
        .ok()?;
    match key.p.public_key_bits() {
        0 | usize::MAX => None,
        bits => Some(bits),
    }
}

/// The DKIM verification of this message, computed once, whichever of
/// `dkim` and `dmarc` asks first.
pub async fn facts(dns: &Dns, input: &CheckInput) -> Option<Arc<DkimMemo>> {
    input
        .memo
        .get_or_init(|| async { verify(dns, input).await })
        .await
}

/// Local policy's verdict on one signature.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub reason: String,
}

fn describe(e: &Error) -> String {
    match e {
        Error::Dkim(DkimError::FailedBodyHashMatch) => "body hash mismatch (body altered)".into(),
        Error::Crypto(CryptoError::FailedVerification) => "signature did not verify".into(),
        Error::Dns(DnsError::RecordNotFound(_)) => "no key published".into(),
        Error::Dns(DnsError::Resolver(_)) => "DNS failure fetching the key".into(),
        Error::Io(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The status of one signature under local policy.
pub fn judge(f: &SignatureFacts, judge: Judge) -> Verdict {
    let verdict = |status, reason: String| Verdict { status, reason };
    let weak = f.key_bits.filter(|bits| *bits < judge.min_rsa_bits);
    match &f.result {
        DkimResult::Pass => {
            if let Some(bits) = weak {
                verdict(
                    Status::Fail,
                    format!(
                        "weak key ({bits} bits, at least {} required)",
                        judge.min_rsa_bits
                    ),
                )
            } else if let Some(l) = f.body_length
                && !judge.allow_l_tag
            {
                verdict(
                    Status::Neutral,
                    format!(
                        "l= tag: only the first {l} bytes of the body are signed; content can be appended"
                    ),
                )
            } else {
                verdict(Status::Pass, "signature verified".into())
            }
        }
        // RFC 6376 §6.1.3: a body hash that does not match fails the
        // signature; mail-auth calls it neutral.
        DkimResult::Neutral(e @ Error::Dkim(DkimError::FailedBodyHashMatch)) => {
            verdict(Status::Fail, describe(e))
        }
        DkimResult::Neutral(e) => verdict(Status::Neutral, describe(e)),
        DkimResult::Fail(e) => match weak {
            Some(bits) => verdict(
                Status::Fail,
                format!(
                    "weak key ({bits} bits, at least {} required)",
                    judge.min_rsa_bits
                ),
            ),
            None => verdict(Status::Fail, describe(e)),
        },
        DkimResult::PermError(e) => verdict(Status::Permerror, describe(e)),
        DkimResult::TempError(e) => verdict(Status::Temperror, describe(e)),
        DkimResult::None => verdict(Status::None, "no signature".into()),
    }
}

/// The first 8 characters of the base64 `b=` value (RFC 6008 §4: enough to
/// tell signatures of one domain and selector apart).
fn b_prefix(b: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(8);
    for chunk in b.chunks(3).take(2) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | (u32::from(*byte) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// `dkim=pass header.d=example.org header.s=sel header.b=AbCdEfGh`.
fn fragment(f: &SignatureFacts, v: &Verdict) -> String {
    match &f.signature {
        Some(sig) => {
            let mut s = format!(
                "dkim={} header.d={} header.s={}",
                v.status,
                pvalue(&sig.d),
                pvalue(&sig.s)
            );
            let b = b_prefix(&sig.b);
            if !b.is_empty() {
                s.push_str(" header.b=");
                s.push_str(&pvalue(&b));
            }
            s
        }
        None => format!("dkim={} reason={}", v.status, super::spf::quoted(&v.reason)),
    }
}

fn who(f: &SignatureFacts) -> String {
    match &f.signature {
        Some(sig) => format!("{} (s={})", sig.d, sig.s),
        None => "a malformed signature".into(),
    }
}

/// The overall result from every signature's verdict.
pub fn summarise(memo: &DkimMemo, j: Judge) -> CheckResult {
    if memo.signatures.is_empty() {
        let mut r = CheckResult::with_reason(Status::None, "no DKIM signature");
        r.auth_results = Some("dkim=none".into());
        return r;
    }
    let verdicts: Vec<Verdict> = memo.signatures.iter().map(|f| judge(f, j)).collect();
    let rank = |s: Status| match s {
        Status::Pass => 0,
        Status::Fail => 1,
        Status::Temperror => 2,
        Status::Permerror => 3,
        Status::Neutral | Status::Softfail => 4,
        Status::None => 5,
    };
    let decisive = verdicts
        .iter()
        .enumerate()
        .min_by_key(|(i, v)| (rank(v.status), *i))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let (status, reason) = match (verdicts.get(decisive), memo.signatures.get(decisive)) {
        (Some(v), _) if memo.truncated => (v.status, TRUNCATED.to_string()),
        (Some(v), Some(f)) => {
            let mut reason = format!("DKIM {} for {}", v.status, who(f));
            if v.status != Status::Pass {
                reason.push_str(": ");
                reason.push_str(&v.reason);
            }
            (v.status, reason)
        }
        _ => (Status::None, "no DKIM signature".to_string()),
    };
    let mut r = CheckResult::with_reason(status, reason);
    let mut fragments: Vec<String> = memo
        .signatures
        .iter()
        .zip(&verdicts)
        .map(|(f, v)| fragment(f, v))
        .collect();
    if memo.unchecked > 0 {
        fragments.push(format!(
            "dkim=neutral reason={}",
            super::spf::quoted(&unchecked_reason(memo.unchecked))
        ));
    }
    r.auth_results = Some(fragments.join("; "));
    r
}

/// Why signatures past the first `MAX_SIGNATURES` carry no verdict.
fn unchecked_reason(unchecked: usize) -> String {
    format!("{unchecked} more signatures not checked (at most {MAX_SIGNATURES} are)")
}

pub struct DkimCheck {
    dns: Arc<Dns>,
    judge: Judge,
}

impl DkimCheck {
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let mut ok = true;
        let what = ctx.options.what().to_string();
        let mut judge = Judge::default();
        if let Some(bits) = ctx.options.value("min_rsa_bits") {
            match ctx.options.integer("min_rsa_bits").map(|b| *b.get_ref()) {
                Some(b) if (512..=16384).contains(&b) => judge.min_rsa_bits = b as usize,
                Some(b) => {
                    ctx.options.error(
                        bits.span(),
                        format!(
                            "`min_rsa_bits` in {what} must be between 512 and 16384, found {b}"
                        ),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if ctx.options.value("allow_l_tag").is_some() {
            match ctx.options.bool("allow_l_tag") {
                Some(b) => judge.allow_l_tag = b,
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
        ok.then(|| Arc::new(DkimCheck { dns, judge }) as Arc<dyn Check>)
    }
}

impl Check for DkimCheck {
    fn auth_method(&self) -> Option<&'static str> {
        Some("dkim")
    }

    fn inputs(&self) -> Stage {
        Stage::Eom
    }

    fn needs_body(&self) -> bool {
        true
    }

    /// Fetch each signature's key as its header arrives.
    fn prefetch(&self, early: &Early<'_>) {
        if let Some((name, value)) = early.header {
            super::prefetch::dkim_key(early.memo, &self.dns, name, value);
        }
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move {
            if input.message.is_none() {
                return CheckResult::temperror("no message to verify");
            }
            match facts(&self.dns, &input).await {
                Some(memo) => summarise(&memo, self.judge),
                None => CheckResult::temperror("internal error: DKIM memo"),
            }
        })
    }
}

#[cfg(test)]
mod tests;
