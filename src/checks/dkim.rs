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
//! The verification (crate::auth::dkim) is a fact of the message's
//! evidence: the `dmarc` check reuses it (and has it made when no `dkim`
//! check is configured). DMARC judges
//! signatures with the defaults above, whatever a `dkim` check's options.

use super::{BoxFuture, Check, CheckBuildContext, CheckInput, CheckResult, Early, Status};
use crate::auth::dkim::{DkimFacts, MAX_SIGNATURES, SignatureFacts, TRUNCATED};
use crate::auth_results::{Property, ResInfo};
use crate::dns::Dns;
use crate::stage::Stage;
use mail_auth::common::crypto::CryptoError;
use mail_auth::dkim::DkimError;
use mail_auth::{DkimResult, DnsError, Error};
use serde::Deserialize;
use std::sync::Arc;

/// The default of `min_rsa_bits`: RFC 8301 §3.2's minimum RSA key length.
pub const DEFAULT_MIN_RSA_BITS: usize = 1024;
/// The default of `allow_l_tag`: a signature that covers only part of the
/// body (`l=`) is not a pass.
pub const DEFAULT_ALLOW_L_TAG: bool = false;

/// How local policy judges signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judge {
    /// The `min_rsa_bits` option: a signature that verifies with a shorter
    /// RSA key is a `fail` ("weak key").
    pub min_rsa_bits: usize,
    /// The `allow_l_tag` option: whether a verified signature with a body
    /// length limit is a `pass` rather than `neutral`.
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

/// Local policy's verdict on one signature.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The signature's result, as reported for it in Authentication-Results.
    pub status: Status,
    /// Why, in a few words ("signature verified", "body hash mismatch (body
    /// altered)"); the check's reason when this signature decides.
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
fn fragment(f: &SignatureFacts, v: &Verdict) -> ResInfo {
    let r = ResInfo::new("dkim", v.status);
    match &f.signature {
        Some(sig) => {
            let r = r
                .with_property(Property::new("header", "d", sig.d.as_str()))
                .with_property(Property::new("header", "s", sig.s.as_str()));
            let b = b_prefix(&sig.b);
            if b.is_empty() {
                r
            } else {
                r.with_property(Property::new("header", "b", b))
            }
        }
        None => r.with_reason(v.reason.as_str()),
    }
}

fn who(f: &SignatureFacts) -> String {
    match &f.signature {
        Some(sig) => format!("{} (s={})", sig.d, sig.s),
        None => "a malformed signature".into(),
    }
}

/// The overall result from every signature's verdict.
pub fn summarise(memo: &DkimFacts, j: Judge) -> CheckResult {
    if memo.signatures.is_empty() {
        let mut r = CheckResult::with_reason(Status::None, "no DKIM signature");
        r.auth_results = Some(vec![ResInfo::new("dkim", Status::None)]);
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
    let mut fragments: Vec<ResInfo> = memo
        .signatures
        .iter()
        .zip(&verdicts)
        .map(|(f, v)| fragment(f, v))
        .collect();
    if memo.unchecked > 0 {
        fragments.push(
            ResInfo::new("dkim", Status::Neutral).with_reason(unchecked_reason(memo.unchecked)),
        );
    }
    r.auth_results = Some(fragments);
    r
}

/// `[checks.NAME]` with `kind = "dkim"`; the defaults are [`Judge`]'s.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DkimOptions {
    min_rsa_bits: Option<i64>,
    allow_l_tag: Option<bool>,
}

/// Why signatures past the first `MAX_SIGNATURES` carry no verdict.
fn unchecked_reason(unchecked: usize) -> String {
    format!("{unchecked} more signatures not checked (at most {MAX_SIGNATURES} are)")
}

/// The `dkim` check: verifies the message's DKIM signatures (RFC 6376) and
/// judges each by local policy.
pub struct DkimCheck {
    dns: Arc<Dns>,
    judge: Judge,
}

impl DkimCheck {
    /// Build it from its options and the shared resolver; `None` after
    /// reporting what is wrong, a broken resolver configuration included.
    pub fn build(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Arc<dyn Check>> {
        let judge = Self::judge(ctx);
        // The resolver's own error is named even when an option is wrong.
        let dns = ctx.resolver()?;
        Some(Arc::new(DkimCheck { dns, judge: judge? }))
    }

    /// The local policy the options ask for.
    fn judge(ctx: &mut CheckBuildContext<'_, '_, '_>) -> Option<Judge> {
        let DkimOptions {
            min_rsa_bits,
            allow_l_tag,
        } = ctx.options.parse()?;
        let mut judge = Judge::default();
        if let Some(bits) = min_rsa_bits {
            // The bounds the option has always had (the default, 1024, is
            // RFC 8301 §3.2's minimum).
            match usize::try_from(bits) {
                Ok(b) if (512..=16384).contains(&b) => judge.min_rsa_bits = b,
                _ => {
                    ctx.options.invalid(
                        "min_rsa_bits",
                        format_args!("must be between 512 and 16384, found {bits}"),
                    );
                    return None;
                }
            }
        }
        if let Some(allow) = allow_l_tag {
            judge.allow_l_tag = allow;
        }
        Some(judge)
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
            early.evidence.keys().dkim_key(&self.dns, name, value);
        }
    }

    fn run(self: Arc<Self>, input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
        Box::pin(async move {
            if input.message.is_none() {
                return CheckResult::temperror("no message to verify");
            }
            let message = input.message.as_deref();
            let facts = input.evidence.dkim(&self.dns, message).await;
            summarise(&facts, self.judge)
        })
    }
}

#[cfg(test)]
mod tests;
