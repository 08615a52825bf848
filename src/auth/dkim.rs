//! DKIM verification (RFC 6376) of a message's signatures: mail-auth
//! parses them, fetches and judges the keys and checks expiry and `i=`;
//! the canonicalization is ours (`crate::dkim_canon` says why). What local
//! policy makes of the facts (key size, `l=`) is the `dkim` check's
//! business (crate::checks::dkim); DMARC reads the same facts from the
//! message's [`Evidence`](super::Evidence).

use super::keys::{KeyStore, domain_key_name};
use crate::dns::Dns;
use crate::message::Message;
use mail_auth::common::crypto::{Algorithm, CryptoError, HashAlgorithm};
use mail_auth::common::verify::{DomainKey, VerifySignature};
use mail_auth::dkim::{Canonicalization, Signature};
use mail_auth::{AuthenticatedMessage, DkimOutput, DkimResult, Error, Parameters};

/// The reason when the body was cut at `max_body_size`.
pub const TRUNCATED: &str = "body larger than max_body_size; cannot verify";

/// The reason when `l=` claims more body than there is (RFC 6376 §3.5).
pub const L_TOO_LARGE: &str = "l= is larger than the canonicalized body";

/// What verification found for one signature, owned so it can be shared.
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
    pub(crate) fn without_key(
        sig: Signature,
        result: DkimResult,
        body_length: Option<u64>,
    ) -> Self {
        SignatureFacts {
            signature: Some(sig),
            result,
            key_bits: None,
            body_length,
        }
    }
}

/// The DKIM verification of a message: a fact of its evidence.
#[derive(Clone, Debug, Default)]
pub struct DkimFacts {
    /// Each signature looked at, with its result: malformed ones first, then the
    /// others in header order.
    pub signatures: Vec<SignatureFacts>,
    /// The body was cut at `max_body_size`: nothing was verified.
    pub truncated: bool,
    /// Signatures past the first `MAX_SIGNATURES`, not looked at.
    pub unchecked: usize,
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
pub(crate) async fn verify(dns: &Dns, store: &KeyStore, message: Option<&Message>) -> DkimFacts {
    let Some(message) = message else {
        return DkimFacts::default();
    };
    // Most mail is unsigned: nothing to verify, no need to rebuild the
    // message bytes (a copy of the whole body) to find that out.
    if !message
        .headers
        .iter()
        .any(|h| h.name().eq_ignore_ascii_case("DKIM-Signature"))
    {
        return DkimFacts {
            truncated: message.body_truncated,
            ..DkimFacts::default()
        };
    }
    if message.body_truncated {
        // Nothing can be verified: list the signatures from the header
        // block alone, without copying the (max_body_size) body.
        let head = crate::message::header_block(&message.headers);
        let Some(parsed) = AuthenticatedMessage::parse_with_opts(&head, None, false) else {
            return DkimFacts {
                truncated: true,
                ..DkimFacts::default()
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
        return DkimFacts {
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
        return DkimFacts::default();
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
            .verify_dkim(Parameters::new(&parsed).with_txt_cache(store))
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
                    check_header_hash(dns, store, sig, &fields, signature_field)
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
                    rsa_key_bits(dns, store, sig).await
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
    DkimFacts {
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
    store: &KeyStore,
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
async fn rsa_key_bits(dns: &Dns, store: &KeyStore, sig: &Signature) -> Option<usize> {
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
