//! The `dkim_sign` modifier: adds DKIM-Signature headers (RFC 6376), one
//! per key of the signing domain, over the message as it will be delivered
//! (received headers byte for byte). The signature is built here: body hash
//! and relaxed header canonicalization from `crate::dkim_canon` (mail-auth
//! 0.13's body hash is wrong for some bodies), signing and the signature's
//! header text from mail-auth on its `ring` backend. `h=` lists every instance of each signed name, bottom
//! up (RFC 6376 §5.4.2), then each `oversign` name once more. The private key loader
//! that `arc_seal` and `dkim-record` share is `dkim_sign/key.rs`.
//!
//! Options:
//! - `keys` (required): a list of `{ domain, selector, key }` tables. Each
//!   entry signs the mail of its domain with the PEM key file `key` (PKCS#1
//!   or PKCS#8, RSA 2048 to 4096 bits or Ed25519; relative paths start at the
//!   configuration's directory). Several entries of one domain give several
//!   signatures (RSA and Ed25519 side by side); domain and selector together
//!   must be unique.
//! - `sign_domain`: `"from"` (default: the `From:` domain, which DMARC
//!   aligns on) or `"sender"` (the envelope sender's domain, after rewrites).
//! - `subdomains` (default false): when true, a key of `example.org` signs
//!   mail of `a.example.org` (with `d=example.org`, which relaxed DMARC
//!   alignment accepts) unless that subdomain has keys of its own.
//! - `headers`: the header names to sign when present, `From` required;
//!   default [`DEFAULT_HEADERS`].
//! - `oversign` (default `["From"]`): names listed once more in `h=` than
//!   the message holds, so no instance can be added without breaking the
//!   signature; they are signed too.
//! - `expire`: a duration such as `"7d"`; sets `x=` that far after `t=`.
//! - `canonicalization`: `"relaxed/relaxed"` (default) or
//!   `"relaxed/simple"`. Headers are always relaxed: the MTA and the milter
//!   protocol refold header lines, which "simple" would not survive.
//!
//! Keys are read, parsed and checked when the configuration loads: a file
//! that cannot be read, is not a PEM private key, is RSA below 2048 bits
//! (RFC 8301 forbids below 1024; ring signs with 2048 and above) or is
//! readable by every user is a configuration error naming the file; one
//! readable by a group the milter does not run as is a warning.
//!
//! No key for the domain, no signature (logged at info): never one of
//! another domain. A body cut at `max_body_size` cannot be signed: when the
//! message has a key, the modifier fails and the pipeline's `error_action`
//! applies.

mod key;

pub use key::{KeyError, KeyKind, LoadedKey, base64_decode, base64_encode, valid_selector};

use super::{EditError, Effects, MessageContext, Modifier, ModifierBuildContext};
use crate::address::normalize_domain;
use crate::config::options::{Interval, OneOrMany};
use crate::edits::{EditList, valid_header_name};
use crate::message::Header;
use crate::message::address_list::{Unreadable, address_list};
use mail_auth::common::crypto::{self, HashAlgorithm};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, Signature};
use serde::Deserialize;
use serde::de::{self, SeqAccess, Visitor};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// What is signed by default: the headers that carry what a reader sees
/// and how replies thread (RFC 6376 §5.4.1), plus the MIME headers that
/// decide how the body is shown.
pub const DEFAULT_HEADERS: [&str; 13] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
];

/// Keys already loaded while building one modifier, so a file named twice
/// is read and reported once. A failed load is remembered as `None`.
#[derive(Default)]
pub(crate) struct KeyCache(HashMap<PathBuf, Option<Arc<LoadedKey>>>);

/// Load the key file `raw` (relative to the configuration's directory),
/// reporting problems at `span`; warnings go to the log.
pub(crate) fn load_key_option(
    ctx: &mut ModifierBuildContext<'_, '_, '_>,
    span: std::ops::Range<usize>,
    raw: &str,
    cache: &mut KeyCache,
) -> Option<Arc<LoadedKey>> {
    let path = ctx.base_dir.join(raw);
    if let Some(known) = cache.0.get(&path) {
        return known.clone();
    }
    let loaded = match LoadedKey::load(&path) {
        Ok((key, warning)) => {
            if let Some(w) = warning {
                tracing::warn!(file = %path.display(), modifier = ctx.name, "key file \"{}\" {w}", path.display());
            }
            Some(Arc::new(key))
        }
        Err(e) => {
            let msg = format!(
                "key file \"{}\" of {} {e}",
                path.display(),
                ctx.options.what()
            );
            ctx.options.error(span, msg);
            None
        }
    };
    cache.0.insert(path, loaded.clone());
    loaded
}

/// A value of a signer's option that is read well but cannot be used; the
/// text follows "`KEY` in MODIFIER".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ValueProblem {
    #[error("is not a domain: \"{}\"", .0.escape_debug())]
    Domain(String),
    #[error(
        "must be DNS labels of letters, digits, \"-\" and \"_\", found \"{}\"",
        .0.escape_debug()
    )]
    Selector(String),
    #[error("holds \"{}\", which is not a header name", .0.escape_debug())]
    HeaderName(String),
    #[error("must include \"From\": a signature must cover it (RFC 6376 §5.4)")]
    NoFrom,
}

/// A signing domain (`d=`), normalised to A-labels and lowercase.
pub(crate) fn signing_domain(domain: &str) -> Result<String, ValueProblem> {
    normalize_domain(domain).map_err(|_| ValueProblem::Domain(domain.to_string()))
}

/// A selector (`s=`), as written.
pub(crate) fn selector(selector: String) -> Result<String, ValueProblem> {
    if valid_selector(&selector) {
        Ok(selector)
    } else {
        Err(ValueProblem::Selector(selector))
    }
}

/// A list of header names (`default` when absent), checked, without
/// duplicates (compared case-insensitively), with `From` required when
/// `need_from`.
pub(crate) fn header_names(
    list: Option<OneOrMany>,
    default: &[&str],
    need_from: bool,
) -> Result<Vec<String>, ValueProblem> {
    let Some(OneOrMany(list)) = list else {
        return Ok(default.iter().map(|s| s.to_string()).collect());
    };
    let mut names: Vec<String> = Vec::new();
    for name in list {
        if !valid_header_name(&name) {
            return Err(ValueProblem::HeaderName(name));
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    if need_from && !names.iter().any(|n| n.eq_ignore_ascii_case("From")) {
        return Err(ValueProblem::NoFrom);
    }
    Ok(names)
}

/// Report `result`'s problem at `key`: `None` then.
pub(crate) fn checked<T>(
    ctx: &mut ModifierBuildContext<'_, '_, '_>,
    key: &str,
    result: Result<T, ValueProblem>,
) -> Option<T> {
    result.map_err(|e| ctx.options.invalid(key, e)).ok()
}

/// Split header text as mail-auth writes it (`Name: value` with `\r\n\t`
/// folds, CRLF after each) into names and one-line values. Each fold
/// becomes the single space relaxed canonicalization makes of it, which is
/// also how mail-auth writes the text it signs, so the value sent and the
/// value signed agree; the MTA refolds long lines at spaces.
pub(crate) fn split_headers(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix(['\t', ' ']) {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(rest);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            let value = value.strip_prefix(' ').unwrap_or(value);
            out.push((name.to_string(), value.to_string()));
        }
    }
    out
}

/// The header names mail-auth is told to sign for a message whose headers
/// `present` reports: the configured ones that occur, then each oversigned
/// name once more (mail-auth lists a name it does not find as absent, so
/// `h=` names it once more than the message holds it).
pub(crate) fn header_template(
    headers: &[String],
    oversign: &[String],
    present: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut h: Vec<String> = headers.iter().filter(|n| present(n)).cloned().collect();
    for name in oversign {
        if present(name) && !h.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            h.push(name.clone());
        }
        h.push(name.clone());
    }
    h
}

// ----- the modifier -----

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SignDomain {
    #[default]
    From,
    Sender,
}

/// `[modifiers.NAME]` with `kind = "dkim_sign"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DkimSignOptions {
    keys: KeyList,
    #[serde(default)]
    sign_domain: SignDomain,
    #[serde(default)]
    subdomains: bool,
    headers: Option<OneOrMany>,
    oversign: Option<OneOrMany>,
    expire: Option<Interval>,
    canonicalization: Option<String>,
}

/// One entry of `keys`, as written.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { domain = \"...\", selector = \"...\", key = \"...\" }"
)]
struct RawKey {
    domain: String,
    selector: String,
    key: String,
}

/// `keys`: a list of at least one entry.
struct KeyList(Vec<RawKey>);

impl<'de> Deserialize<'de> for KeyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a non-empty list of tables such as { domain = \"example.org\", selector = \"s2026\", key = \"keys/example.org.pem\" }",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyList, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = seq.next_element::<RawKey>()? {
                    keys.push(key);
                }
                if keys.is_empty() {
                    return Err(de::Error::invalid_value(
                        de::Unexpected::Other("an empty list"),
                        &self,
                    ));
                }
                Ok(KeyList(keys))
            }
        }
        d.deserialize_any(V)
    }
}

struct KeyEntry {
    /// Normalised (A-labels, lowercase): compared with the message's domain.
    domain: String,
    selector: String,
    key: Arc<LoadedKey>,
}

/// The `dkim_sign` modifier.
pub struct DkimSignModifier {
    name: String,
    keys: Vec<KeyEntry>,
    sign_domain: SignDomain,
    subdomains: bool,
    headers: Vec<String>,
    oversign: Vec<String>,
    expire: Option<u64>,
    body_canonicalization: Canonicalization,
}

impl DkimSignModifier {
    /// Build it from its options, loading every key; `None` after
    /// reporting what is wrong.
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        let DkimSignOptions {
            keys,
            sign_domain,
            subdomains,
            headers,
            oversign,
            expire,
            canonicalization,
        } = ctx
            .options
            .required(
                "keys",
                "keys = [{ domain = \"example.org\", selector = \"s2026\", key = \"keys/example.org.pem\" }]",
            )
            .parse()?;
        // Every value is checked before any early return, so all mistakes
        // in the block are reported in one pass.
        let keys = Self::keys(ctx, keys);
        let headers = header_names(headers, &DEFAULT_HEADERS, true);
        let headers = checked(ctx, "headers", headers);
        let oversign = header_names(oversign, &["From"], false);
        let oversign = checked(ctx, "oversign", oversign);
        let body_canonicalization = Self::canonicalization(ctx, canonicalization);
        Some(Arc::new(DkimSignModifier {
            name: ctx.name.to_string(),
            keys: keys?,
            sign_domain,
            subdomains,
            headers: headers?,
            oversign: oversign?,
            expire: expire.map(|Interval(d)| d.as_secs().max(1)),
            body_canonicalization: body_canonicalization?,
        }))
    }

    /// Check every entry of `keys` and load its key file.
    fn keys(ctx: &mut ModifierBuildContext<'_, '_, '_>, keys: KeyList) -> Option<Vec<KeyEntry>> {
        let span = ctx
            .options
            .span_of("keys")
            .unwrap_or_else(|| ctx.options.span());
        let what = ctx.options.what().to_string();
        let mut cache = KeyCache::default();
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut entries = Vec::new();
        let mut ok = true;
        for (i, raw) in keys.0.into_iter().enumerate() {
            let mut report = |ctx: &mut ModifierBuildContext<'_, '_, '_>, message: String| {
                ctx.options.error(span.clone(), message);
                ok = false;
            };
            let domain = signing_domain(&raw.domain)
                .map_err(|e| report(ctx, format!("`keys[{i}].domain` in {what} {e}")))
                .ok();
            let selector = selector(raw.selector)
                .map_err(|e| report(ctx, format!("`keys[{i}].selector` in {what} {e}")))
                .ok();
            if let (Some(d), Some(s)) = (&domain, &selector) {
                let pair = (d.clone(), s.to_ascii_lowercase());
                if seen.contains(&pair) {
                    report(
                        ctx,
                        format!(
                            "`keys[{i}]` in {what} repeats domain \"{d}\" with selector \"{s}\": each signature of a domain needs its own selector"
                        ),
                    );
                }
                seen.push(pair);
            }
            let key = load_key_option(ctx, span.clone(), &raw.key, &mut cache);
            if let (Some(domain), Some(selector), Some(key)) = (domain, selector, key) {
                entries.push(KeyEntry {
                    domain,
                    selector,
                    key,
                });
            } else {
                ok = false;
            }
        }
        ok.then_some(entries)
    }

    fn canonicalization(
        ctx: &mut ModifierBuildContext<'_, '_, '_>,
        written: Option<String>,
    ) -> Option<Canonicalization> {
        let Some(written) = written else {
            return Some(Canonicalization::Relaxed);
        };
        // RFC 6376 §3.5: a lone name is the header's, the body's is simple.
        match written.to_ascii_lowercase().as_str() {
            "relaxed/relaxed" => Some(Canonicalization::Relaxed),
            "relaxed/simple" | "relaxed" => Some(Canonicalization::Simple),
            other => {
                if other.starts_with("simple") {
                    ctx.options.invalid(
                        "canonicalization",
                        format_args!(
                            "cannot be \"{other}\": the MTA and the milter protocol refold header lines, which simple header canonicalization does not survive; use \"relaxed/relaxed\" or \"relaxed/simple\""
                        ),
                    );
                } else {
                    ctx.options.invalid(
                        "canonicalization",
                        format_args!(
                            "must be \"relaxed/relaxed\" or \"relaxed/simple\", found \"{}\"",
                            other.escape_debug()
                        ),
                    );
                }
                None
            }
        }
    }

    /// The keys that sign mail of `domain`: its own, or with `subdomains`
    /// those of the closest parent that has some; in config order.
    fn keys_for(&self, domain: &str) -> Vec<&KeyEntry> {
        let mut candidate = domain;
        loop {
            let found: Vec<&KeyEntry> =
                self.keys.iter().filter(|k| k.domain == candidate).collect();
            if !found.is_empty() || !self.subdomains {
                return found;
            }
            match candidate.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => candidate = parent,
                _ => return Vec::new(),
            }
        }
    }

    /// The domain whose keys sign, or why there is none.
    fn domain_of(
        &self,
        ctx: &MessageContext<'_>,
        headers: &[crate::message::Header],
    ) -> Result<String, &'static str> {
        match self.sign_domain {
            SignDomain::Sender => {
                let sender = ctx
                    .envelope
                    .rewritten_sender
                    .as_ref()
                    .unwrap_or(&ctx.envelope.sender);
                sender
                    .domain()
                    .map(str::to_string)
                    .ok_or("the envelope sender has no domain")
            }
            SignDomain::From => {
                // The same reader as the `dmarc` check, so the domain signed
                // is the one DMARC aligns on.
                let mut domains: Vec<String> = Vec::new();
                let from = headers
                    .iter()
                    .filter(|h| h.name().eq_ignore_ascii_case("From"));
                for mailbox in from.flat_map(|h| address_list(h.value())) {
                    let d = match mailbox {
                        Ok(mailbox) => mailbox.domain().to_string(),
                        Err(Unreadable::NoDomain) => return Err("a From address has no domain"),
                        Err(_) => return Err("the header cannot be parsed"),
                    };
                    let d = d.as_str();
                    let d = normalize_domain(d).map_err(|_| "a From domain is not valid")?;
                    if !domains.contains(&d) {
                        domains.push(d);
                    }
                }
                match domains.len() {
                    0 => Err("the message has no From address"),
                    1 => Ok(domains.remove(0)),
                    _ => Err("the From addresses have several domains"),
                }
            }
        }
    }
}

impl Modifier for DkimSignModifier {
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
        // What the MTA will deliver, every earlier edit applied.
        let headers = edits.resulting_headers(&ctx.message.headers);
        // The signing domain comes from the headers: the whole message (a
        // copy of the body) is only built once it is certain to be signed.
        let domain = match self.domain_of(ctx, &headers) {
            Ok(d) => d,
            Err(why) => {
                tracing::info!(modifier = %self.name, queue_id = ?ctx.queue_id, reason = why, "message not signed: no signing domain");
                return Ok(());
            }
        };
        let entries = self.keys_for(&domain);
        if entries.is_empty() {
            tracing::info!(modifier = %self.name, queue_id = ?ctx.queue_id, domain = %domain, "message not signed: no key for the domain");
            return Ok(());
        }
        if !headers
            .iter()
            .any(|h| h.name().eq_ignore_ascii_case("From"))
        {
            tracing::info!(modifier = %self.name, queue_id = ?ctx.queue_id, domain = %domain, "message not signed: no From header to sign");
            return Ok(());
        }
        // Only now: mail this modifier would not sign anyway goes on.
        if ctx.message.body_truncated {
            return Err(EditError::Truncated);
        }
        let body = ctx.message.body.contiguous();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Signatures added here, top first: each later one is computed over
        // the message with the earlier ones on top, as it is delivered.
        let mut added: Vec<Header> = Vec::new();
        for entry in entries {
            let signature = self
                .sign(entry, &added, &headers, &body, now)
                .map_err(|source| EditError::Sign {
                    domain: entry.domain.clone(),
                    selector: entry.selector.clone(),
                    source,
                })?;
            let header = signature.to_header();
            let Some((name, value)) = split_headers(&header).into_iter().next() else {
                return Err(EditError::NoSignatureHeader);
            };
            edits.insert_header(0, &name, &value)?;
            added.insert(0, Header::new(name, value));
        }
        Ok(())
    }
}

impl DkimSignModifier {
    /// One signature over `added` (our signatures so far, top first) above
    /// `headers`, and `body`. Built here rather than by mail-auth's
    /// `DkimSigner`, whose body hash is wrong for some bodies
    /// (crate::dkim_canon says why); the header canonicalization is ours
    /// too, the signing and the signature's header text mail-auth's.
    fn sign(
        &self,
        entry: &KeyEntry,
        added: &[Header],
        headers: &[Header],
        body: &[u8],
        now: u64,
    ) -> Result<Signature, SignError> {
        let message: Vec<&Header> = added.iter().chain(headers.iter()).collect();
        let present = |name: &str| message.iter().any(|h| h.name().eq_ignore_ascii_case(name));
        let wanted: Vec<&String> = self
            .headers
            .iter()
            .chain(self.oversign.iter())
            .filter(|n| present(n))
            .collect();
        // RFC 6376 §5.4.2: each name in h= takes the next instance from the
        // bottom; listing every instance bottom-up signs them all in order.
        let mut signed: Vec<(&str, Vec<u8>)> = Vec::new();
        for h in message.iter().rev() {
            if wanted.iter().any(|n| n.eq_ignore_ascii_case(h.name())) {
                let mut value = Vec::with_capacity(h.raw_value().len() + 2);
                h.write_value_crlf(&mut value);
                value.truncate(value.len() - 2);
                signed.push((h.name(), value));
            }
        }
        if signed.is_empty() {
            return Err(SignError::NoHeaders);
        }
        let mut h: Vec<String> = signed.iter().map(|(n, _)| n.to_string()).collect();
        // Oversigned names once more than the message holds them: an
        // instance added later breaks the signature (§8.15).
        h.extend(self.oversign.iter().cloned());
        let key = entry.key.signer();
        let algorithm = crypto::SigningKey::algorithm(&key);
        let mut signature = Signature {
            v: 1,
            a: algorithm,
            d: entry.domain.clone(),
            s: entry.selector.clone(),
            h,
            t: now,
            x: self.expire.map_or(0, |secs| now.saturating_add(secs)),
            ch: Canonicalization::Relaxed,
            cb: self.body_canonicalization,
            ..Signature::default()
        };
        signature.bh = crate::dkim_canon::body_hash(
            body,
            self.body_canonicalization,
            HashAlgorithm::from(algorithm),
            None,
        );
        signature.b = crypto::SigningKey::sign(
            &key,
            Signed {
                headers: &signed,
                signature: &signature,
            },
        )?;
        Ok(signature)
    }
}

/// Why one signature could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// None of the names to sign is in the message.
    #[error("no header to sign")]
    NoHeaders,
    /// mail-auth's signing failed.
    #[error(transparent)]
    Crypto(#[from] mail_auth::Error),
}

/// What a signature signs (RFC 6376 §3.7): the signed headers in `h=`
/// order, relaxed (by `crate::dkim_canon`, as the `dkim` check verifies),
/// then the DKIM-Signature header itself with `b=` empty and no CRLF.
struct Signed<'a> {
    headers: &'a [(&'a str, Vec<u8>)],
    signature: &'a Signature,
}

impl Writable for Signed<'_> {
    fn write(self, writer: &mut impl mail_auth::common::headers::Writer) {
        let mut headers = Vec::new();
        for (name, value) in self.headers {
            crate::dkim_canon::canonical_header(
                name.as_bytes(),
                value,
                Canonicalization::Relaxed,
                &mut headers,
            );
        }
        writer.write(&headers);
        // mail-auth writes its header in relaxed form when told it is not
        // the header: "dkim-signature:", the tags, "b=" empty, no CRLF.
        self.signature.write(writer, false);
    }
}

#[cfg(test)]
mod tests;
