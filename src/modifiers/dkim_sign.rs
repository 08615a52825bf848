//! The `dkim_sign` modifier: adds DKIM-Signature headers (RFC 6376), one
//! per key of the signing domain, over the message as it will be delivered
//! (received headers byte for byte). The signature is built here: body hash
//! and relaxed header canonicalization from `crate::dkim_canon` (mail-auth
//! 0.13's body hash is wrong for some bodies), signing and the signature's
//! header text from mail-auth on its `ring` backend. `h=` lists every instance of each signed name, bottom
//! up (RFC 6376 §5.4.2), then each `oversign` name once more. Also home of the private key loader
//! that `arc_seal` and `dkim-record` share.
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

use super::{Effects, MessageContext, Modifier, ModifierBuildContext};
use crate::address::normalize_domain;
use crate::edits::{EditList, valid_header_name};
use crate::message::Header;
use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::{
    self, Algorithm, DkimKey, Ed25519Key, HashAlgorithm, RsaKey, Sha256,
};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, Signature};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Value;

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

/// The reason a truncated body gives, for both signers.
pub const TRUNCATED: &str = "the body is larger than the pipeline's max_body_size and was not kept whole, so it cannot be signed; raise max_body_size";

// ----- base64 (RFC 4648 §4), for PEM and DNS records -----

pub fn base64_encode(data: &[u8]) -> String {
    data_encoding::BASE64.encode(data)
}

/// Decode base64, ignoring white space (PEM lines, folded DNS records);
/// `None` for any other stray byte or a bad length.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    data_encoding::BASE64.decode(&compact).ok()
}

// ----- DER, just enough to read private keys and write a public one -----

/// The first DER element of `input`: its tag, its contents and what follows.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn der_wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
/// 1.2.840.113549.1.1.1 (rsaEncryption, RFC 8017).
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.3.101.112 (id-Ed25519, RFC 8410 §3).
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// The size in bits of the modulus of a PKCS#1 RSAPrivateKey (RFC 8017
/// appendix A.1.2: version, then the modulus).
fn rsa_modulus_bits(pkcs1: &[u8]) -> Option<usize> {
    let (TAG_SEQUENCE, body, _) = der_next(pkcs1)? else {
        return None;
    };
    let (TAG_INTEGER, _version, rest) = der_next(body)? else {
        return None;
    };
    let (TAG_INTEGER, modulus, _) = der_next(rest)? else {
        return None;
    };
    let start = modulus.iter().position(|&b| b != 0)?;
    let significant = &modulus[start..];
    Some((significant.len() - 1) * 8 + (8 - significant[0].leading_zeros() as usize))
}

/// The algorithm OID and the private key octets of a PKCS#8 PrivateKeyInfo
/// (RFC 5208 §5).
fn pkcs8_parts(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (TAG_SEQUENCE, body, _) = der_next(der)? else {
        return None;
    };
    let (TAG_INTEGER, _version, rest) = der_next(body)? else {
        return None;
    };
    let (TAG_SEQUENCE, algorithm, rest) = der_next(rest)? else {
        return None;
    };
    let (TAG_OID, oid, _) = der_next(algorithm)? else {
        return None;
    };
    let (TAG_OCTET_STRING, private, _) = der_next(rest)? else {
        return None;
    };
    Some((oid, private))
}

/// An RSAPublicKey wrapped as the SubjectPublicKeyInfo (RFC 5280 §4.1) that
/// `openssl rsa -pubout` writes and DKIM records carry in `p=`.
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    let mut algorithm = der_wrap(TAG_OID, OID_RSA);
    algorithm.extend(der_wrap(TAG_NULL, &[]));
    let mut bits = vec![0u8];
    bits.extend_from_slice(rsa_public_key);
    let mut body = der_wrap(TAG_SEQUENCE, &algorithm);
    body.extend(der_wrap(TAG_BIT_STRING, &bits));
    der_wrap(TAG_SEQUENCE, &body)
}

// ----- PEM (RFC 7468) -----

/// The label and contents of the first private-key block of a PEM file.
fn pem_private_key(text: &str) -> Result<(String, Vec<u8>), String> {
    let mut lines = text.lines().map(str::trim);
    let mut first_label: Option<String> = None;
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut base64 = String::new();
        let mut closed = false;
        let mut encrypted = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            // RFC 1421 headers of legacy OpenSSL encryption ("Proc-Type:
            // 4,ENCRYPTED", "DEK-Info: ...").
            if line.contains(':') {
                encrypted |= line.to_ascii_uppercase().contains("ENCRYPTED");
                continue;
            }
            base64.push_str(line);
        }
        if !label.ends_with("PRIVATE KEY") {
            first_label.get_or_insert_with(|| label.to_string());
            continue;
        }
        if !closed {
            return Err(format!("has no \"{end}\" line"));
        }
        if encrypted || label == "ENCRYPTED PRIVATE KEY" {
            return Err(
                "holds an encrypted key, and the milter cannot ask for a passphrase: write it out unencrypted with `openssl pkey -in FILE -out NEWFILE`"
                    .to_string(),
            );
        }
        let der = base64_decode(&base64)
            .ok_or_else(|| format!("has a \"{label}\" block that is not valid base64"))?;
        return Ok((label.to_string(), der));
    }
    Err(match first_label {
        Some(label) => format!(
            "holds a \"{label}\" PEM block and no private key: give the private key (\"BEGIN PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\")"
        ),
        None => "is not a PEM file (no \"-----BEGIN\" line): give a PEM private key such as `openssl genpkey` writes".to_string(),
    })
}

// ----- keys -----

/// The kind and strength of a loaded key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa { bits: usize },
    Ed25519,
}

/// A private key checked and ready to sign, with its public half as DNS
/// publishes it.
pub struct LoadedKey {
    key: DkimKey,
    kind: KeyKind,
    /// The `p=` bytes: SubjectPublicKeyInfo for RSA, the raw 32-byte key
    /// for Ed25519 (RFC 8463 §4.2).
    public: Vec<u8>,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Who else can read a key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// Only the owner, or a group the milter runs as.
    Private,
    /// A group the milter does not run as: a warning.
    Group,
    /// Every user: an error.
    World,
}

/// Judge a key file's mode bits and group against the milter's group.
pub fn exposure(mode: u32, file_gid: u32, our_gid: u32) -> Exposure {
    if mode & 0o004 != 0 {
        Exposure::World
    } else if mode & 0o040 != 0 && file_gid != our_gid {
        Exposure::Group
    } else {
        Exposure::Private
    }
}

fn effective_gid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail (POSIX).
    unsafe { libc::getegid() }
}

impl LoadedKey {
    /// Parse a PEM private key: PKCS#1 RSA, PKCS#8 RSA or PKCS#8 Ed25519.
    /// The error completes a sentence that starts with the file name.
    pub fn from_pem(text: &str) -> Result<LoadedKey, String> {
        let (label, der) = pem_private_key(text)?;
        match label.as_str() {
            "RSA PRIVATE KEY" => Self::rsa(&der, None),
            "PRIVATE KEY" => match pkcs8_parts(&der) {
                Some((OID_RSA, pkcs1)) => Self::rsa(pkcs1, Some(&der)),
                Some((OID_ED25519, _)) => Self::ed25519(&der),
                Some(_) => Err(
                    "holds a key of another type: DKIM signs with RSA or Ed25519 (RFC 8463)"
                        .to_string(),
                ),
                None => Err("holds a \"PRIVATE KEY\" block that is not valid PKCS#8".to_string()),
            },
            "EC PRIVATE KEY" => {
                Err("holds an EC key: DKIM signs with RSA or Ed25519 (RFC 8463)".to_string())
            }
            other => Err(format!(
                "holds a \"{other}\" block: give an RSA or Ed25519 key in PKCS#1 (\"BEGIN RSA PRIVATE KEY\") or PKCS#8 (\"BEGIN PRIVATE KEY\") form"
            )),
        }
    }

    fn rsa(pkcs1: &[u8], pkcs8: Option<&[u8]>) -> Result<LoadedKey, String> {
        let bits = rsa_modulus_bits(pkcs1)
            .ok_or_else(|| "holds an RSA key that cannot be parsed".to_string())?;
        if bits < 1024 {
            return Err(format!(
                "holds an RSA key of {bits} bits, too short: DKIM signers must use at least 1024 bits (RFC 8301 §3.2) and this milter needs 2048; generate a new key with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`"
            ));
        }
        if !(2048..=4096).contains(&bits) {
            return Err(format!(
                "holds an RSA key of {bits} bits: the ring crypto backend signs with 2048 to 4096 bits; generate a new key with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`"
            ));
        }
        // mail-auth's replacement, `from_key_der`, takes a type of
        // rustls-pki-types, which is not among this crate's dependencies;
        // these two call the same ring parser.
        #[allow(deprecated)]
        let parsed = match pkcs8 {
            Some(der) => RsaKey::<Sha256>::from_pkcs8_der(der),
            None => RsaKey::<Sha256>::from_der(pkcs1),
        };
        let key = parsed.map_err(|e| format!("holds an RSA key that cannot be used: {e}"))?;
        let public = rsa_spki(&key.public_key());
        Ok(LoadedKey {
            key: DkimKey::Rsa(key),
            kind: KeyKind::Rsa { bits },
            public,
        })
    }

    fn ed25519(pkcs8: &[u8]) -> Result<LoadedKey, String> {
        // OpenSSL writes PKCS#8 v1 without the public key, which the
        // checked constructor refuses; ring derives the public key itself.
        let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8)
            .map_err(|e| format!("holds an Ed25519 key that cannot be used: {e}"))?;
        let public = key.public_key();
        Ok(LoadedKey {
            key: DkimKey::Ed25519(key),
            kind: KeyKind::Ed25519,
            public,
        })
    }

    /// Read, check and parse a key file. `Ok` may carry a warning (the file
    /// is readable by a group the milter does not run as); a file readable
    /// by everyone is an error. Texts complete a sentence naming the file.
    pub fn load(path: &Path) -> Result<(LoadedKey, Option<String>), String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
        if !meta.is_file() {
            return Err("is not a regular file".to_string());
        }
        let mode = meta.mode() & 0o777;
        let warning = match exposure(mode, meta.gid(), effective_gid()) {
            Exposure::World => {
                return Err(format!(
                    "is readable by every user (mode {mode:04o}): anyone on this host could sign as your domain; run `chmod 600` (or `chmod 640` with the milter's group)"
                ));
            }
            Exposure::Group => Some(format!(
                "is readable by group {} (mode {mode:04o}), which the milter does not run as: every member of that group can sign as your domain",
                meta.gid()
            )),
            Exposure::Private => None,
        };
        // A PEM key is a few kilobytes; 1 MiB bounds what a wrong path costs.
        let bytes = crate::files::read_regular(path, 1 << 20)
            .map_err(|e| format!("cannot be read: {e}"))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            "is not a PEM file (it is not text): give a PEM private key such as `openssl genpkey` writes"
                .to_string()
        })?;
        Ok((Self::from_pem(&text)?, warning))
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The TXT record to publish at `SELECTOR._domainkey.DOMAIN` (RFC 6376
    /// §3.6.1).
    pub fn txt_record(&self) -> String {
        let k = match self.kind {
            KeyKind::Rsa { .. } => "rsa",
            KeyKind::Ed25519 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", base64_encode(&self.public))
    }

    /// The record as a zone file line, `SELECTOR._domainkey IN TXT ( "..."
    /// )`, split into strings of at most 255 bytes (RFC 1035 §3.3.14: a
    /// TXT string holds 255 bytes; resolvers join them, RFC 6376 §3.6.2.2).
    pub fn zone_record(&self, selector: &str) -> String {
        let txt = self.txt_record();
        // The record is ASCII, so byte chunks are character chunks.
        let strings: Vec<String> = txt
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!("{selector}._domainkey IN TXT ( {} )", strings.join("\n\t"))
    }

    pub(crate) fn signer(&self) -> KeyRef<'_> {
        KeyRef(&self.key)
    }
}

/// A borrowed key that mail-auth's builders can take by value, so one
/// loaded key serves every message.
pub(crate) struct KeyRef<'k>(&'k DkimKey);

impl crypto::SigningKey for KeyRef<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        crypto::SigningKey::sign(self.0, input)
    }

    fn algorithm(&self) -> Algorithm {
        crypto::SigningKey::algorithm(self.0)
    }
}

/// A DNS selector (RFC 6376 §3.1): labels of letters, digits, `-` and `_`
/// separated by dots.
pub fn valid_selector(selector: &str) -> bool {
    !selector.is_empty()
        && selector.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

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

/// A header name list option, checked, without duplicates (compared
/// case-insensitively), with `From` required when `need_from`.
pub(crate) fn header_list_option(
    ctx: &mut ModifierBuildContext<'_, '_, '_>,
    key: &'static str,
    default: &[&str],
    need_from: bool,
) -> Option<Vec<String>> {
    if ctx.options.value(key).is_none() {
        return Some(default.iter().map(|s| s.to_string()).collect());
    }
    let list = ctx.options.string_list(key)?;
    let span = list.span();
    let mut names: Vec<String> = Vec::new();
    for name in list.into_inner() {
        if !valid_header_name(&name) {
            let msg = format!(
                "`{key}` in {} holds \"{}\", which is not a header name",
                ctx.options.what(),
                name.escape_debug()
            );
            ctx.options.error(span, msg);
            return None;
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    if need_from && !names.iter().any(|n| n.eq_ignore_ascii_case("From")) {
        let msg = format!(
            "`{key}` in {} must include \"From\": a signature must cover it (RFC 6376 §5.4)",
            ctx.options.what()
        );
        ctx.options.error(span, msg);
        return None;
    }
    Some(names)
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SignDomain {
    From,
    Sender,
}

struct KeyEntry {
    /// Normalised (A-labels, lowercase): compared with the message's domain.
    domain: String,
    selector: String,
    key: Arc<LoadedKey>,
}

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
    pub fn build(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Arc<dyn Modifier>> {
        // Every key is read before any early return, so all mistakes in the
        // block are reported in one pass.
        let keys = Self::keys(ctx);
        let sign_domain = Self::sign_domain(ctx);
        let subdomains = match ctx.options.value("subdomains") {
            None => Some(false),
            Some(_) => ctx.options.bool("subdomains"),
        };
        let headers = header_list_option(ctx, "headers", &DEFAULT_HEADERS, true);
        let oversign = header_list_option(ctx, "oversign", &["From"], false);
        let expire = match ctx.options.value("expire") {
            None => Some(None),
            Some(_) => ctx
                .options
                .duration("expire")
                .map(|d| Some(d.as_secs().max(1))),
        };
        let body_canonicalization = Self::canonicalization(ctx);
        Some(Arc::new(DkimSignModifier {
            name: ctx.name.to_string(),
            keys: keys?,
            sign_domain: sign_domain?,
            subdomains: subdomains?,
            headers: headers?,
            oversign: oversign?,
            expire: expire?,
            body_canonicalization: body_canonicalization?,
        }))
    }

    fn keys(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Vec<KeyEntry>> {
        let what = ctx.options.what().to_string();
        let Some(value) = ctx.options.value("keys") else {
            let span = ctx.options.span();
            ctx.options.error(
                span,
                format!(
                    "{what} needs `keys`, such as keys = [{{ domain = \"example.org\", selector = \"s2026\", key = \"keys/example.org.pem\" }}]"
                ),
            );
            return None;
        };
        let span = value.span();
        let items = match value.get_ref() {
            Value::Array(items) if !items.is_empty() => items.clone(),
            _ => {
                ctx.options.error(
                    span,
                    format!(
                        "`keys` in {what} must be a non-empty list of tables such as {{ domain = \"example.org\", selector = \"s2026\", key = \"keys/example.org.pem\" }}"
                    ),
                );
                return None;
            }
        };
        let mut cache = KeyCache::default();
        let mut seen = Vec::new();
        let mut entries = Vec::new();
        let mut ok = true;
        for (n, item) in items.iter().enumerate() {
            match Self::key_entry(ctx, span.clone(), n + 1, item, &mut cache, &mut seen) {
                Some(entry) => entries.push(entry),
                None => ok = false,
            }
        }
        ok.then_some(entries)
    }

    fn key_entry(
        ctx: &mut ModifierBuildContext<'_, '_, '_>,
        span: std::ops::Range<usize>,
        n: usize,
        item: &Value,
        cache: &mut KeyCache,
        seen: &mut Vec<(String, String)>,
    ) -> Option<KeyEntry> {
        let what = format!("entry {n} of `keys` in {}", ctx.options.what());
        let Value::Table(table) = item else {
            ctx.options.error(
                span,
                format!(
                    "{what} must be a table {{ domain = \"...\", selector = \"...\", key = \"...\" }}, found {}",
                    item.type_str()
                ),
            );
            return None;
        };
        let mut ok = true;
        for k in table.keys() {
            if !["domain", "selector", "key"].contains(&k.as_str()) {
                ctx.options.error(
                    span.clone(),
                    format!("unknown key `{k}` in {what}: use domain, selector and key"),
                );
                ok = false;
            }
        }
        let field = |ctx: &mut ModifierBuildContext<'_, '_, '_>, name: &str| match table.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                ctx.options.error(
                    span.clone(),
                    format!(
                        "`{name}` in {what} must be a string, found {}",
                        other.type_str()
                    ),
                );
                None
            }
            None => {
                ctx.options
                    .error(span.clone(), format!("{what} needs `{name}`"));
                None
            }
        };
        let domain = field(ctx, "domain");
        let selector = field(ctx, "selector");
        let key_path = field(ctx, "key");
        let domain = domain.and_then(|d| match normalize_domain(&d) {
            Ok(norm) => Some(norm),
            Err(_) => {
                ctx.options.error(
                    span.clone(),
                    format!(
                        "`domain` in {what} is not a domain: \"{}\"",
                        d.escape_debug()
                    ),
                );
                None
            }
        });
        let selector = selector.and_then(|s| {
            if valid_selector(&s) {
                Some(s)
            } else {
                ctx.options.error(
                    span.clone(),
                    format!(
                        "`selector` in {what} must be DNS labels of letters, digits, \"-\" and \"_\", found \"{}\"",
                        s.escape_debug()
                    ),
                );
                None
            }
        });
        if let (Some(d), Some(s)) = (&domain, &selector) {
            let pair = (d.clone(), s.to_ascii_lowercase());
            if seen.contains(&pair) {
                ctx.options.error(
                    span.clone(),
                    format!(
                        "{what} repeats domain \"{d}\" with selector \"{s}\": each signature of a domain needs its own selector"
                    ),
                );
                ok = false;
            }
            seen.push(pair);
        }
        let key = key_path.and_then(|p| load_key_option(ctx, span.clone(), &p, cache));
        if !ok {
            return None;
        }
        Some(KeyEntry {
            domain: domain?,
            selector: selector?,
            key: key?,
        })
    }

    fn sign_domain(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<SignDomain> {
        if ctx.options.value("sign_domain").is_none() {
            return Some(SignDomain::From);
        }
        let v = ctx.options.string("sign_domain")?;
        match v.get_ref().as_str() {
            "from" => Some(SignDomain::From),
            "sender" => Some(SignDomain::Sender),
            other => {
                let msg = format!(
                    "`sign_domain` in {} must be \"from\" or \"sender\", found \"{}\"",
                    ctx.options.what(),
                    other.escape_debug()
                );
                ctx.options.error(v.span(), msg);
                None
            }
        }
    }

    fn canonicalization(ctx: &mut ModifierBuildContext<'_, '_, '_>) -> Option<Canonicalization> {
        if ctx.options.value("canonicalization").is_none() {
            return Some(Canonicalization::Relaxed);
        }
        let v = ctx.options.string("canonicalization")?;
        // RFC 6376 §3.5: a lone name is the header's, the body's is simple.
        match v.get_ref().to_ascii_lowercase().as_str() {
            "relaxed/relaxed" => Some(Canonicalization::Relaxed),
            "relaxed/simple" | "relaxed" => Some(Canonicalization::Simple),
            other => {
                let msg = if other.starts_with("simple") {
                    format!(
                        "`canonicalization` in {} cannot be \"{other}\": the MTA and the milter protocol refold header lines, which simple header canonicalization does not survive; use \"relaxed/relaxed\" or \"relaxed/simple\"",
                        ctx.options.what()
                    )
                } else {
                    format!(
                        "`canonicalization` in {} must be \"relaxed/relaxed\" or \"relaxed/simple\", found \"{}\"",
                        ctx.options.what(),
                        other.escape_debug()
                    )
                };
                ctx.options.error(v.span(), msg);
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
    fn domain_of(&self, ctx: &MessageContext<'_>, raw: &[u8]) -> Result<String, &'static str> {
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
                // The same parser as the `dmarc` check, so the domain signed
                // is the one DMARC aligns on.
                let parsed = AuthenticatedMessage::parse_with_opts(raw, None, false)
                    .ok_or("the header cannot be parsed")?;
                let mut domains: Vec<String> = Vec::new();
                for address in &parsed.from {
                    let Some((_, d)) = address.rsplit_once('@') else {
                        return Err("a From address has no domain");
                    };
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

    fn edit_message(&self, ctx: &MessageContext<'_>, edits: &mut EditList) -> Result<(), String> {
        // What the MTA will deliver, every earlier edit applied.
        let headers = edits.resulting_headers(&ctx.message.headers);
        // The signing domain comes from the headers: the whole message (a
        // copy of the body) is only built once it is certain to be signed.
        let head = crate::message::header_block(&headers);
        let domain = match self.domain_of(ctx, &head) {
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
            return Err(TRUNCATED.to_string());
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
                .map_err(|e| {
                    format!(
                        "signing as d={} s={} failed: {e}",
                        entry.domain, entry.selector
                    )
                })?;
            let header = signature.to_header();
            let Some((name, value)) = split_headers(&header).into_iter().next() else {
                return Err("mail-auth wrote no DKIM-Signature header".to_string());
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
    ) -> Result<Signature, String> {
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
            return Err("no header to sign".to_string());
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
        )
        .map_err(|e| e.to_string())?;
        Ok(signature)
    }
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
mod tests {
    use super::super::rewrite_sender::test_support::{build, has_error};
    use super::*;
    use crate::tables::TableSet;

    fn keys_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
    }

    fn pem(name: &str) -> String {
        std::fs::read_to_string(keys_dir().join(name)).unwrap()
    }

    fn errors_of(src: &str) -> Vec<String> {
        let (m, errors) = build(src, &TableSet::new(), DkimSignModifier::build);
        assert!(m.is_none(), "{src}");
        errors
    }

    #[test]
    fn base64_round_trips() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            let text = base64_encode(data);
            assert_eq!(base64_decode(&text).as_deref(), Some(data), "{text}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(
            base64_decode("Zm9v\r\nYmE=").as_deref(),
            Some(&b"fooba"[..])
        );
        assert_eq!(base64_decode("Zm9v!"), None);
        assert_eq!(base64_decode("Zm9"), None);
        assert_eq!(base64_decode("Zm=9"), None);
    }

    #[test]
    fn keys_parse_with_their_public_half() {
        for (file, kind) in [
            ("rsa2048-pkcs1.pem", KeyKind::Rsa { bits: 2048 }),
            ("rsa2048-pkcs8.pem", KeyKind::Rsa { bits: 2048 }),
            ("ed25519.pem", KeyKind::Ed25519),
        ] {
            let key = LoadedKey::from_pem(&pem(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(key.kind(), kind, "{file}");
            // The public half as `openssl pkey -pubout` gives it.
            let expected =
                std::fs::read_to_string(keys_dir().join(file.replace(".pem", ".pub.b64"))).unwrap();
            let k = if kind == KeyKind::Ed25519 {
                "ed25519"
            } else {
                "rsa"
            };
            assert_eq!(
                key.txt_record(),
                format!("v=DKIM1; k={k}; p={}", expected.trim()),
                "{file}"
            );
        }
    }

    #[test]
    fn short_rsa_keys_are_refused_with_their_size() {
        for (file, bits) in [("rsa512.pem", 512), ("rsa768.pem", 768)] {
            let e = LoadedKey::from_pem(&pem(file)).unwrap_err();
            assert!(e.contains(&format!("{bits} bits, too short")), "{e}");
            assert!(e.contains("RFC 8301"), "{e}");
        }
        let e = LoadedKey::from_pem(&pem("rsa1024.pem")).unwrap_err();
        assert!(
            e.contains("1024 bits: the ring crypto backend signs with 2048 to 4096"),
            "{e}"
        );
    }

    #[test]
    fn what_is_not_a_usable_key_says_so() {
        let e = LoadedKey::from_pem("hello").unwrap_err();
        assert!(e.starts_with("is not a PEM file"), "{e}");
        let e = LoadedKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAm3ywBnoo1dUy/SHaPoRy0fjDgO8gQEF0XHZtORRlnrM=\n-----END PUBLIC KEY-----\n",
        )
        .unwrap_err();
        assert!(
            e.contains("\"PUBLIC KEY\" PEM block and no private key"),
            "{e}"
        );
        let e = LoadedKey::from_pem(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(e.contains("encrypted key"), "{e}");
        let legacy = pem("rsa2048-pkcs1.pem").replacen(
            "-----\n",
            "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n",
            1,
        );
        assert!(
            LoadedKey::from_pem(&legacy)
                .unwrap_err()
                .contains("encrypted key")
        );
        let e =
            LoadedKey::from_pem("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(e.contains("not valid base64"), "{e}");
        let e =
            LoadedKey::from_pem("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(e.contains("not valid PKCS#8"), "{e}");
        let e = LoadedKey::from_pem("-----BEGIN PRIVATE KEY-----\nMAA=\n").unwrap_err();
        assert!(e.contains("no \"-----END PRIVATE KEY-----\" line"), "{e}");
        // Garbled key material inside a valid PEM frame.
        let mut text = pem("rsa2048-pkcs1.pem");
        text = text.replacen("MII", "MIJ", 1);
        assert!(LoadedKey::from_pem(&text).is_err());
    }

    #[test]
    fn exposure_of_key_files() {
        assert_eq!(exposure(0o600, 10, 20), Exposure::Private);
        assert_eq!(exposure(0o400, 10, 20), Exposure::Private);
        // The milter's own group may read it: that is how it reads it.
        assert_eq!(exposure(0o640, 20, 20), Exposure::Private);
        assert_eq!(exposure(0o640, 10, 20), Exposure::Group);
        assert_eq!(exposure(0o644, 20, 20), Exposure::World);
        assert_eq!(exposure(0o604, 20, 20), Exposure::World);
    }

    #[test]
    fn zone_records_split_into_255_byte_strings() {
        let key = LoadedKey::from_pem(&pem("rsa2048-pkcs1.pem")).unwrap();
        let line = key.zone_record("s2026");
        assert!(
            line.starts_with("s2026._domainkey IN TXT ( \"v=DKIM1; k=rsa; p=MIIB"),
            "{line}"
        );
        assert!(line.ends_with("\" )"), "{line}");
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 2, "{line}");
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert_eq!(strings[0].len(), 255);
        assert_eq!(strings.concat(), key.txt_record());

        let ed = LoadedKey::from_pem(&pem("ed25519.pem")).unwrap();
        assert_eq!(
            ed.zone_record("ed"),
            format!("ed._domainkey IN TXT ( \"{}\" )", ed.txt_record())
        );
    }

    #[test]
    fn selectors() {
        assert!(valid_selector("s2026"));
        assert!(valid_selector("mail.rsa-2048_a"));
        assert!(!valid_selector(""));
        assert!(!valid_selector("a..b"));
        assert!(!valid_selector("bad selector"));
        assert!(!valid_selector("x;y"));
        assert!(!valid_selector(&"a".repeat(64)));
    }

    #[test]
    fn header_templates_sign_what_is_present_and_oversign() {
        let headers: Vec<String> = ["From", "Subject", "Cc", "X-Extra"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let oversign = vec!["From".to_string(), "Reply-To".to_string()];
        let present = |n: &str| ["from", "subject"].contains(&n.to_ascii_lowercase().as_str());
        assert_eq!(
            header_template(&headers, &oversign, present),
            ["From", "Subject", "From", "Reply-To"]
        );
        // An oversigned name outside `headers` that is present is signed.
        let present = |n: &str| ["from", "reply-to"].contains(&n.to_ascii_lowercase().as_str());
        assert_eq!(
            header_template(&headers, &oversign, present),
            ["From", "From", "Reply-To", "Reply-To"]
        );
    }

    #[test]
    fn mail_auth_headers_split_into_one_line_values() {
        let text = "ARC-Seal: i=1; a=rsa-sha256;\r\n\tb=abc\r\n\tdef;\r\nARC-Authentication-Results: i=1; mx; none\r\n";
        assert_eq!(
            split_headers(text),
            [
                (
                    "ARC-Seal".to_string(),
                    "i=1; a=rsa-sha256; b=abc def;".to_string()
                ),
                (
                    "ARC-Authentication-Results".to_string(),
                    "i=1; mx; none".to_string()
                ),
            ]
        );
    }

    #[test]
    fn option_errors() {
        assert!(has_error(&errors_of(""), "needs `keys`"));
        assert!(has_error(
            &errors_of("keys = []"),
            "non-empty list of tables"
        ));
        assert!(has_error(&errors_of("keys = ['x']"), "must be a table"));
        let errors = errors_of(
            "keys = [{ domain = 'bad domain', selector = 'a b', key = 'missing.pem', algo = 'x' }]",
        );
        assert!(
            has_error(&errors, "unknown key `algo` in entry 1"),
            "{errors:?}"
        );
        assert!(has_error(&errors, "`domain` in entry 1"), "{errors:?}");
        assert!(has_error(&errors, "`selector` in entry 1"), "{errors:?}");
        assert!(
            has_error(&errors, "key file \"/nonexistent-config-dir/missing.pem\""),
            "{errors:?}"
        );
        let errors = errors_of("keys = [{ domain = 'example.org' }]");
        assert!(has_error(&errors, "needs `selector`"), "{errors:?}");
        assert!(has_error(&errors, "needs `key`"), "{errors:?}");
        let errors = errors_of(
            "keys = [{ domain = 'example.org', selector = 's', key = 1 }]\nsign_domain = 'envelope'\nsubdomains = 'yes'\nheaders = ['Subject']\noversign = ['Bad Name']\nexpire = 'soon'\ncanonicalization = 'simple/simple'",
        );
        assert!(has_error(&errors, "`key` in entry 1"), "{errors:?}");
        assert!(has_error(&errors, "\"from\" or \"sender\""), "{errors:?}");
        assert!(has_error(&errors, "`subdomains`"), "{errors:?}");
        assert!(has_error(&errors, "must include \"From\""), "{errors:?}");
        assert!(has_error(&errors, "not a header name"), "{errors:?}");
        assert!(has_error(&errors, "`expire`"), "{errors:?}");
        assert!(
            has_error(&errors, "simple header canonicalization"),
            "{errors:?}"
        );
        assert_eq!(errors.len(), 7, "{errors:?}");
        let errors = errors_of(
            "keys = [{ domain = 'example.org', selector = 's', key = 'k' }]\ncanonicalization = 'loose'",
        );
        assert!(has_error(&errors, "found \"loose\""), "{errors:?}");
    }
}
