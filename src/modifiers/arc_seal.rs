//! The `arc_seal` modifier: adds this hop's ARC set (RFC 8617):
//! ARC-Authentication-Results, ARC-Message-Signature and ARC-Seal, signed
//! with mail-auth on its `ring` backend, over the message as it will be
//! delivered. List it where mail leaves for places that should trust this
//! hop's verdicts, such as a destination that forwards to external
//! addresses.
//!
//! Options: `domain` (required, the `d=` of both signatures), `selector`
//! (required), `key` (required, a PEM key file loaded and checked like the
//! keys of `dkim_sign`), `headers` (the header names the
//! ARC-Message-Signature covers when present, `From` required; default the
//! same list as `dkim_sign`). Canonicalization is relaxed/relaxed.
//!
//! The ARC-Authentication-Results copies the `Authentication-Results` this
//! hop adds (the pipeline's checks, handed over by the engine as a typed
//! value), or reads `DOMAIN; none` without one. A message that already
//! carries an ARC chain gets `cv=` from this hop's `arc` result in that
//! value: `pass` seals with `cv=pass`; a
//! `temperror` makes the modifier fail (the pipeline's `error_action`, a
//! tempfail by default, so the client retries); any other result, or no
//! `arc` result at all, leaves the message unsealed (logged), because a seal
//! cannot repair a broken chain and must not vouch for one nobody checked.

use super::dkim_sign::{
    self, DEFAULT_HEADERS, KeyCache, LoadedKey, checked, header_names, header_template,
    load_key_option, signing_domain, split_headers,
};
use super::{EditError, Effects, MessageContext, Modifier, ModifierBuildContext};
use crate::auth_results::AuthResults;
use crate::config::options::OneOrMany;
use crate::edits::EditList;
use mail_auth::arc::{ArcSealer, Set};
use mail_auth::common::crypto::HashAlgorithm;
use mail_auth::common::headers::{Header as AuthHeader, HeaderWriter};
use mail_auth::dkim::Canonicalization;
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult};
use serde::Deserialize;
use std::sync::Arc;

/// RFC 8617 allows at most 50 ARC sets (instances 1 to 50).
const MAX_SETS: usize = 50;

/// `[modifiers.NAME]` with `kind = "arc_seal"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArcSealOptions {
    domain: String,
    selector: String,
    key: String,
    headers: Option<OneOrMany>,
}

/// The `arc_seal` modifier: adds this hop's ARC set, signed as its `domain`
/// and `selector`.
pub struct ArcSealModifier {
    name: String,
    domain: String,
    selector: String,
    key: Arc<LoadedKey>,
    headers: Vec<String>,
}

impl ArcSealModifier {
    /// Build it from its options, loading the key; `None` after reporting
    /// what is wrong.
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let ArcSealOptions {
            domain,
            selector,
            key,
            headers,
        } = ctx
            .options
            .required("domain", "\"example.org\"")
            .required("selector", "\"arc2026\"")
            .required("key", "\"keys/arc.pem\"")
            .parse()?;
        // Every value is checked before any early return, so all mistakes
        // in the block are reported in one pass.
        let domain = checked(ctx, "domain", signing_domain(&domain));
        let selector = checked(ctx, "selector", dkim_sign::selector(selector));
        let span = ctx
            .options
            .span_of("key")
            .unwrap_or_else(|| ctx.options.span());
        let key = load_key_option(ctx, span, &key, &mut KeyCache::default());
        let headers = header_names(headers, &DEFAULT_HEADERS, true);
        let headers = checked(ctx, "headers", headers);
        Some(Arc::new(ArcSealModifier {
            name: ctx.name.to_string(),
            domain: domain?,
            selector: selector?,
            key: key?,
            headers: headers?,
        }))
    }
}

/// The first `arc=` result of our Authentication-Results, lowercased.
fn arc_result(auth_results: &AuthResults) -> Option<String> {
    auth_results
        .results
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case("arc"))
        .map(|r| r.result.to_ascii_lowercase())
}

/// What to do about the chain a message already carries.
enum Chain<'x> {
    /// Seal with this view of the chain (empty for the first set).
    Seal(ArcOutput<'x>),
    /// Leave the message unsealed, for this reason.
    Skip(String),
}

fn existing_chain<'x>(
    parsed: &'x AuthenticatedMessage<'x>,
    ours: Option<&AuthResults>,
) -> Result<Chain<'x>, EditError> {
    let sets = parsed.as_headers.len();
    if sets == 0
        && parsed.ams_headers.is_empty()
        && parsed.aar_headers.is_empty()
        && !parsed.has_arc_errors
    {
        return Ok(Chain::Seal(ArcOutput::default()));
    }
    let Some(result) = ours.and_then(arc_result) else {
        return Ok(Chain::Skip(
            "the message carries an ARC chain and no `arc` check result: add an `arc` check (with auth_results on) so the chain is validated before sealing".to_string(),
        ));
    };
    match result.as_str() {
        "pass" => {}
        "temperror" => {
            return Err(EditError::ArcTemperror);
        }
        other => {
            return Ok(Chain::Skip(format!(
                "the message carries ARC headers and this hop's `arc` check found the chain {other}; a seal cannot repair it"
            )));
        }
    }
    if sets >= MAX_SETS {
        return Ok(Chain::Skip(format!(
            "the message already carries {MAX_SETS} ARC sets, the most there can be"
        )));
    }
    let triples = || {
        parsed
            .as_headers
            .iter()
            .zip(&parsed.ams_headers)
            .zip(&parsed.aar_headers)
            .map(|((seal, ams), aar)| (seal, ams, aar))
    };
    let consistent = !parsed.has_arc_errors
        && parsed.ams_headers.len() == sets
        && parsed.aar_headers.len() == sets
        && (1u32..).zip(triples()).all(|(i, (seal, ams, aar))| {
            seal.header.i == i && ams.header.i == i && aar.header.i == i
        });
    if !consistent {
        return Ok(Chain::Skip(
            "the ARC sets are not numbered 1 to N, one of each header, although the chain passed"
                .to_string(),
        ));
    }
    let mut output = ArcOutput::default().with_result(DkimResult::Pass);
    for (seal, ams, aar) in triples() {
        output = output.with_set(Set {
            signature: AuthHeader::new(ams.name, ams.value, &ams.header),
            seal: AuthHeader::new(seal.name, seal.value, &seal.header),
            results: AuthHeader::new(aar.name, aar.value, &aar.header),
        });
    }
    Ok(Chain::Seal(output))
}

impl Modifier for ArcSealModifier {
    fn effects(&self) -> Effects {
        Effects {
            headers: true,
            ..Effects::default()
        }
    }

    fn needs_body(&self) -> bool {
        true
    }

    fn runs_last(&self) -> bool {
        true
    }

    fn edit_message(
        &self,
        ctx: &MessageContext<'_>,
        edits: &mut EditList,
    ) -> Result<(), EditError> {
        let headers = edits.resulting_headers(&ctx.message.headers);
        // mail-auth reads the header block alone (given the body, it would
        // hash it for every canonicalization, hash and l= any signature of
        // the message names, none of which the seal needs).
        let head = crate::message::header_block(&headers);
        let mut parsed = AuthenticatedMessage::parse_with_opts(&head, None, false)
            .ok_or(EditError::Unparsable)?;
        // mail-auth's sealer takes the AMS body hash (relaxed, sha256, no
        // l=) from the parsed message when it is there and computes its own,
        // wrong for some bodies (crate::dkim_canon says why), when not: it
        // is always there, and ours. The existing chain is judged by the
        // `arc` check, not here.
        let ours_bh = crate::dkim_canon::body_hash(
            &ctx.message.body.contiguous(),
            Canonicalization::Relaxed,
            HashAlgorithm::Sha256,
            None,
        );
        parsed.body_hashes.retain(|(c, h, l, _)| {
            !(*c == Canonicalization::Relaxed && *h == HashAlgorithm::Sha256 && *l == 0)
        });
        parsed
            .body_hashes
            .push((Canonicalization::Relaxed, HashAlgorithm::Sha256, 0, ours_bh));
        let ours = ctx.auth_results;
        let output = match existing_chain(&parsed, ours)? {
            Chain::Seal(output) => output,
            Chain::Skip(why) => {
                tracing::info!(modifier = %self.name, queue_id = ?ctx.queue_id, reason = %why, "message not sealed");
                return Ok(());
            }
        };
        if ctx.message.body_truncated {
            return Err(EditError::Truncated);
        }
        // The seal signs this text in relaxed form as written, so it must
        // already be what relaxed canonicalization makes of the header:
        // single spaces, nothing at the ends.
        let copied = match ours {
            Some(ours) => ours.to_string(),
            None => AuthResults::new(self.domain.as_str(), Vec::new()).to_string(),
        };
        let copied = copied.split_whitespace().collect::<Vec<_>>().join(" ");
        let results = AuthenticationResults::new(&copied);
        let present = |name: &str| headers.iter().any(|h| h.name().eq_ignore_ascii_case(name));
        let template = header_template(&self.headers, &[], present);
        let set = ArcSealer::from_key(self.key.signer())
            .domain(self.domain.as_str())
            .selector(self.selector.as_str())
            .headers(template)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
            .seal(&parsed, &results, &output)
            .map_err(|source| EditError::Seal {
                domain: self.domain.clone(),
                selector: self.selector.clone(),
                source,
            })?;
        let set_headers = split_headers(&set.to_header());
        if set_headers.len() != 3 {
            return Err(EditError::ArcHeaderCount(set_headers.len()));
        }
        // Bottom first, so the set reads ARC-Seal, ARC-Message-Signature,
        // ARC-Authentication-Results from the top.
        for (name, value) in set_headers.iter().rev() {
            edits.insert_header(0, name, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::rewrite_sender::test_support::{build, has_error};
    use super::*;
    use crate::tables::TableSet;

    fn errors_of(src: &str) -> Vec<String> {
        let (m, errors) = build(src, &TableSet::new(), ArcSealModifier::build);
        assert!(m.is_none(), "{src}");
        errors
    }

    #[test]
    fn arc_results_are_read_from_our_header() {
        let arc = |value: &str| arc_result(&crate::auth_results::parse(value).unwrap());
        assert_eq!(
            arc("mx.test; spf=pass smtp.mailfrom=a.test; arc=pass (2 sets)").as_deref(),
            Some("pass")
        );
        assert_eq!(arc("mx.test; ARC=Fail").as_deref(), Some("fail"));
        assert_eq!(arc("mx.test; dkim=pass header.d=a.test"), None);
        // The authserv-id is not a result.
        assert_eq!(arc("arc; none"), None);
    }

    #[test]
    fn option_errors() {
        // serde names the first missing key of a block.
        let errors = errors_of("");
        assert!(has_error(&errors, "needs `domain`"), "{errors:?}");
        let errors = errors_of("domain = 'a.test'");
        assert!(has_error(&errors, "needs `selector`"), "{errors:?}");
        let errors = errors_of("domain = 'a.test'\nselector = 's'");
        assert!(has_error(&errors, "needs `key`"), "{errors:?}");
        let errors = errors_of(
            "domain = 'not a domain'\nselector = 's;1'\nkey = 'nope.pem'\nheaders = ['Subject']",
        );
        assert!(has_error(&errors, "`domain`"), "{errors:?}");
        assert!(has_error(&errors, "`selector`"), "{errors:?}");
        assert!(
            has_error(&errors, "key file \"/nonexistent-config-dir/nope.pem\""),
            "{errors:?}"
        );
        assert!(has_error(&errors, "must include \"From\""), "{errors:?}");
        assert!(has_error(
            &errors_of("domain = 'a.test'\nselector = 's'\nkey = 'k'\nkeys = 1"),
            "unknown key `keys`"
        ));
    }
}
