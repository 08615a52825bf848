//! Private keys for signing (`dkim_sign`, `arc_seal`, `dkim-record`):
//! PEM (RFC 7468) holding PKCS#1 or PKCS#8, RSA or Ed25519, read and
//! checked when the configuration loads, with just enough DER to tell them
//! apart and to write the public half for a DNS record; and the checks on
//! a key file's permissions.

use mail_auth::common::crypto::{self, Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::Writable;
use std::path::Path;

// ----- base64 (RFC 4648 §4), for PEM and DNS records -----

/// Standard base64 with padding.
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

// ----- errors -----

/// Why a key cannot be used. Each text completes a sentence that starts
/// with the file's name (or, for `dkim-record`, the path given).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A private-key block whose END line is missing.
    #[error("has no \"-----END {label}-----\" line")]
    Unterminated {
        /// The block's label, such as `RSA PRIVATE KEY`.
        label: String,
    },
    /// A passphrase-protected key (`ENCRYPTED PRIVATE KEY`, or legacy
    /// OpenSSL `Proc-Type: 4,ENCRYPTED` headers).
    #[error(
        "holds an encrypted key, and the milter cannot ask for a passphrase: write it out unencrypted with `openssl pkey -in FILE -out NEWFILE`"
    )]
    Encrypted,
    /// A private-key block whose contents do not decode.
    #[error("has a \"{label}\" block that is not valid base64")]
    Base64 {
        /// The block's label.
        label: String,
    },
    /// PEM blocks, but none holds a private key; `label` is the first.
    #[error(
        "holds a \"{label}\" PEM block and no private key: give the private key (\"BEGIN PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\")"
    )]
    NoPrivateKey {
        /// The label of the first block, such as `CERTIFICATE`.
        label: String,
    },
    /// No `-----BEGIN` line at all.
    #[error(
        "is not a PEM file (no \"-----BEGIN\" line): give a PEM private key such as `openssl genpkey` writes"
    )]
    NotPem,
    /// PKCS#8 of an algorithm other than RSA and Ed25519.
    #[error("holds a key of another type: DKIM signs with RSA or Ed25519 (RFC 8463)")]
    OtherAlgorithm,
    /// A `PRIVATE KEY` block whose DER is not a PKCS#8 structure.
    #[error("holds a \"PRIVATE KEY\" block that is not valid PKCS#8")]
    Pkcs8,
    /// An `EC PRIVATE KEY` block (ECDSA), which DKIM has no algorithm for.
    #[error("holds an EC key: DKIM signs with RSA or Ed25519 (RFC 8463)")]
    Ec,
    /// A private-key block of a kind not read here.
    #[error(
        "holds a \"{label}\" block: give an RSA or Ed25519 key in PKCS#1 (\"BEGIN RSA PRIVATE KEY\") or PKCS#8 (\"BEGIN PRIVATE KEY\") form"
    )]
    UnknownBlock {
        /// The block's label.
        label: String,
    },
    /// An RSA key whose modulus cannot be read from its DER.
    #[error("holds an RSA key that cannot be parsed")]
    RsaUnparsable,
    /// Below the 1024 bits RFC 8301 §3.2 allows.
    #[error(
        "holds an RSA key of {bits} bits, too short: DKIM signers must use at least 1024 bits (RFC 8301 §3.2) and this milter needs 2048; generate a new key with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`"
    )]
    RsaTooShort {
        /// The key's modulus length.
        bits: usize,
    },
    /// Outside the 2048 to 4096 bits ring signs with.
    #[error(
        "holds an RSA key of {bits} bits: the ring crypto backend signs with 2048 to 4096 bits; generate a new key with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`"
    )]
    RsaSize {
        /// The key's modulus length.
        bits: usize,
    },
    /// mail-auth (ring) refused the RSA key.
    #[error("holds an RSA key that cannot be used: {0}")]
    RsaUnusable(#[source] mail_auth::Error),
    /// mail-auth (ring) refused the Ed25519 key.
    #[error("holds an Ed25519 key that cannot be used: {0}")]
    Ed25519Unusable(#[source] mail_auth::Error),
    /// The file's metadata cannot be read (it does not exist, ...).
    #[error("cannot be read: {0}")]
    Metadata(#[source] std::io::Error),
    /// A directory, device, socket or the like.
    #[error("is not a regular file")]
    NotRegular,
    /// Any user on the host could sign with it.
    #[error(
        "is readable by every user (mode {mode:04o}): anyone on this host could sign as your domain; run `chmod 600` (or `chmod 640` with the milter's group)"
    )]
    WorldReadable {
        /// The file's permission bits (`0o644`).
        mode: u32,
    },
    /// Opening or reading the file failed, or it is larger than 1 MiB.
    #[error("cannot be read: {0}")]
    Read(#[source] crate::files::ReadError),
    /// Bytes that are not UTF-8, such as a DER key.
    #[error(
        "is not a PEM file (it is not text): give a PEM private key such as `openssl genpkey` writes"
    )]
    NotText,
}

// ----- PEM (RFC 7468) -----

/// The label and contents of the first private-key block of a PEM file.
fn pem_private_key(text: &str) -> Result<(String, Vec<u8>), KeyError> {
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
            return Err(KeyError::Unterminated {
                label: label.to_string(),
            });
        }
        if encrypted || label == "ENCRYPTED PRIVATE KEY" {
            return Err(KeyError::Encrypted);
        }
        let der = base64_decode(&base64).ok_or_else(|| KeyError::Base64 {
            label: label.to_string(),
        })?;
        return Ok((label.to_string(), der));
    }
    Err(match first_label {
        Some(label) => KeyError::NoPrivateKey { label },
        None => KeyError::NotPem,
    })
}

// ----- keys -----

/// The kind and strength of a loaded key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA of `bits` bits.
    Rsa {
        /// The modulus length.
        bits: usize,
    },

    /// Ed25519 (RFC 8463).
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
pub(crate) enum Exposure {
    /// Only the owner, or a group the milter runs as.
    Private,
    /// A group the milter does not run as: a warning.
    Group,
    /// Every user: an error.
    World,
}

/// Judge a key file's mode bits and group against the milter's group.
pub(crate) fn exposure(mode: u32, file_gid: u32, our_gid: u32) -> Exposure {
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
    pub fn from_pem(text: &str) -> Result<LoadedKey, KeyError> {
        let (label, der) = pem_private_key(text)?;
        match label.as_str() {
            "RSA PRIVATE KEY" => Self::rsa(&der, None),
            "PRIVATE KEY" => match pkcs8_parts(&der) {
                Some((OID_RSA, pkcs1)) => Self::rsa(pkcs1, Some(&der)),
                Some((OID_ED25519, _)) => Self::ed25519(&der),
                Some(_) => Err(KeyError::OtherAlgorithm),
                None => Err(KeyError::Pkcs8),
            },
            "EC PRIVATE KEY" => Err(KeyError::Ec),
            _ => Err(KeyError::UnknownBlock { label }),
        }
    }

    fn rsa(pkcs1: &[u8], pkcs8: Option<&[u8]>) -> Result<LoadedKey, KeyError> {
        let bits = rsa_modulus_bits(pkcs1).ok_or(KeyError::RsaUnparsable)?;
        if bits < 1024 {
            return Err(KeyError::RsaTooShort { bits });
        }
        if !(2048..=4096).contains(&bits) {
            return Err(KeyError::RsaSize { bits });
        }
        // mail-auth's replacement, `from_key_der`, takes a type of
        // rustls-pki-types, which is not among this crate's dependencies;
        // these two call the same ring parser.
        #[allow(deprecated)]
        let parsed = match pkcs8 {
            Some(der) => RsaKey::<Sha256>::from_pkcs8_der(der),
            None => RsaKey::<Sha256>::from_der(pkcs1),
        };
        let key = parsed.map_err(KeyError::RsaUnusable)?;
        let public = rsa_spki(&key.public_key());
        Ok(LoadedKey {
            key: DkimKey::Rsa(key),
            kind: KeyKind::Rsa { bits },
            public,
        })
    }

    fn ed25519(pkcs8: &[u8]) -> Result<LoadedKey, KeyError> {
        // OpenSSL writes PKCS#8 v1 without the public key, which the
        // checked constructor refuses; ring derives the public key itself.
        let key =
            Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8).map_err(KeyError::Ed25519Unusable)?;
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
    pub(crate) fn load(path: &Path) -> Result<(LoadedKey, Option<String>), KeyError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(KeyError::Metadata)?;
        if !meta.is_file() {
            return Err(KeyError::NotRegular);
        }
        let mode = meta.mode() & 0o777;
        let warning = match exposure(mode, meta.gid(), effective_gid()) {
            Exposure::World => return Err(KeyError::WorldReadable { mode }),
            Exposure::Group => Some(format!(
                "is readable by group {} (mode {mode:04o}), which the milter does not run as: every member of that group can sign as your domain",
                meta.gid()
            )),
            Exposure::Private => None,
        };
        // A PEM key is a few kilobytes; 1 MiB bounds what a wrong path costs.
        let bytes = crate::files::read_regular(path, 1 << 20).map_err(KeyError::Read)?;
        let text = String::from_utf8(bytes).map_err(|_| KeyError::NotText)?;
        Ok((Self::from_pem(&text)?, warning))
    }

    /// The key's algorithm and, for RSA, its size.
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
