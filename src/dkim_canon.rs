//! DKIM body canonicalization and body hashes (RFC 6376 §3.4.3 to §3.4.5,
//! §3.7), owned here instead of taken from mail-auth 0.13, whose body
//! canonicalization fails valid signatures and makes our own relaxed
//! signatures fail elsewhere (0.14 and later, which may fix it, do not build
//! with this toolchain). What mail-auth 0.13 gets wrong (the test
//! `mail_auth_0_13_body_canonicalization_is_still_wrong` notices a fix):
//! - relaxed (§3.4.4): a line of white space alone at the end of the body
//!   is kept as an empty line instead of being ignored, and a body of such
//!   lines alone hashes as CRLF instead of as nothing;
//! - `l=` (§3.5): the body is cut to `l` octets before canonicalization,
//!   but `l` counts octets of the canonicalized body (with relaxed the two
//!   differ); and `l=0` (no body signed) is read as "the whole body";
//! - both: a CR not followed by LF is dropped and an LF not preceded by CR
//!   becomes CRLF, though only CRLF ends a line (RFC 5322 §2.3) and
//!   "simple" changes nothing but the empty lines at the end.
//!
//! Header canonicalization, keys and signatures stay mail-auth's. The
//! verifiers (`dkim`, `arc`) hand mail-auth these body hashes in place of
//! its own (`AuthenticatedMessage::body_hashes`, which it compares with
//! `bh=`); the signers (`dkim_sign`, `arc_seal`) put them in what they sign.

use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::HashAlgorithm;
use mail_auth::common::headers::{Writable, Writer};
use mail_auth::dkim::Canonicalization;
use std::collections::HashMap;
use std::ops::ControlFlow;

const CRLF: &[u8] = b"\r\n";

fn is_wsp(b: u8) -> bool {
    // WSP is SP and HTAB only (RFC 5234 appendix B.1), not every ASCII
    // white space.
    b == b' ' || b == b'\t'
}

/// The next line of `body`: its text without the CRLF, whether a CRLF ended
/// it, and what follows. A lone CR or LF is text, not a line end.
fn next_line(body: &[u8]) -> (&[u8], bool, &[u8]) {
    let mut from = 0;
    while let Some(i) = body[from..].iter().position(|b| *b == b'\n') {
        let lf = from + i;
        if lf > 0 && body[lf - 1] == b'\r' {
            return (&body[..lf - 1], true, &body[lf + 1..]);
        }
        from = lf + 1;
    }
    (body, false, &[])
}

/// Write the canonical form of `body` to `emit`, piece by piece, until
/// `emit` says it has had enough (an `l=` reached: a hostile `l=` or a
/// huge body costs no more than the octets a signature covers).
pub fn canonicalize(
    body: &[u8],
    canon: Canonicalization,
    emit: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
) -> ControlFlow<()> {
    match canon {
        Canonicalization::Simple => {
            // §3.4.3: every CRLF at the end of the body becomes one CRLF;
            // no body, or one not ending with CRLF, gets one.
            let mut end = body.len();
            while body[..end].ends_with(CRLF) {
                end -= 2;
            }
            emit(&body[..end])?;
            emit(CRLF)
        }
        Canonicalization::Relaxed => {
            // §3.4.4: white space at the end of a line goes, runs of it
            // become one SP, and empty lines at the end of the body are
            // ignored; a last line without CRLF gets one. Empty lines are
            // held back until a line with text shows they are not the end.
            let mut held: usize = 0;
            let mut rest = body;
            loop {
                let (line, ended, next) = next_line(rest);
                if line.iter().all(|b| is_wsp(*b)) {
                    // Empty once canonicalized (or the end of the body).
                    if ended {
                        held += 1;
                    }
                } else {
                    for _ in 0..held {
                        emit(CRLF)?;
                    }
                    held = 0;
                    relaxed_line(line, emit)?;
                    emit(CRLF)?;
                }
                if !ended {
                    return ControlFlow::Continue(());
                }
                rest = next;
            }
        }
    }
}

/// One line under relaxed body canonicalization: each run of WSP one SP,
/// none at the end.
fn relaxed_line(line: &[u8], emit: &mut impl FnMut(&[u8]) -> ControlFlow<()>) -> ControlFlow<()> {
    let mut rest = line;
    while !rest.is_empty() {
        let spaces = rest.iter().take_while(|b| is_wsp(**b)).count();
        rest = &rest[spaces..];
        if rest.is_empty() {
            break;
        }
        if spaces > 0 {
            emit(b" ")?;
        }
        let word = rest.iter().take_while(|b| !is_wsp(**b)).count();
        emit(&rest[..word])?;
        rest = &rest[word..];
    }
    ControlFlow::Continue(())
}

/// The canonical body of one signature, as mail-auth's hashers take it:
/// cut at `limit` octets of canonical form when the signature has `l=`.
struct Canonical<'a> {
    body: &'a [u8],
    canon: Canonicalization,
    limit: Option<u64>,
}

impl Writable for Canonical<'_> {
    fn write(self, writer: &mut impl Writer) {
        let mut left = self.limit.unwrap_or(u64::MAX);
        if left == 0 {
            return;
        }
        let _ = canonicalize(self.body, self.canon, &mut |piece| {
            let take = usize::try_from(left).map_or(piece.len(), |l| l.min(piece.len()));
            writer.write(&piece[..take]);
            left -= take as u64;
            if left == 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
    }
}

/// The length of the canonical body in octets, exact when below `cap`,
/// otherwise at least `cap`: counting stops there (enough to tell whether
/// an `l=` of `cap` fits).
pub fn canonical_len_up_to(body: &[u8], canon: Canonicalization, cap: u64) -> u64 {
    let mut len = 0u64;
    let _ = canonicalize(body, canon, &mut |piece| {
        len = len.saturating_add(piece.len() as u64);
        if len >= cap {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    len
}

/// The body hash (`bh=`) of `body` under `canon`, counting only the first
/// `limit` octets of the canonical body when given (`l=`, §3.5).
pub fn body_hash(
    body: &[u8],
    canon: Canonicalization,
    algorithm: HashAlgorithm,
    limit: Option<u64>,
) -> Vec<u8> {
    algorithm
        .hash(Canonical { body, canon, limit })
        .as_ref()
        .to_vec()
}

/// Most ARC sets a chain may have (RFC 8617 §4.2.1); more
/// ARC-Message-Signatures than this make the chain fail whatever they hash.
pub const MAX_ARC_SETS: usize = 50;

/// Give `parsed` our body hashes over `body` for what its
/// ARC-Message-Signatures ask for (`parsed` comes from the header block
/// alone, so mail-auth hashed an empty body). mail-auth keys them by
/// canonicalization, hash and `l=`, where 0 stands for "no `l=`": that is
/// how it is read here too, so `l=0` in an ARC-Message-Signature still
/// means the whole body (the `dkim` check reads `l=` itself and is exact;
/// ARC forbids nothing but nobody sends `l=0`). The keys DKIM-Signatures
/// alone ask for, and every key when there are more AMS headers than a
/// chain may have, get no hash: a thousand hostile signatures with as many
/// `l=` values cost nothing here.
pub fn replace_ams_body_hashes(parsed: &mut AuthenticatedMessage<'_>, body: &[u8]) {
    let wanted: Vec<_> = if parsed.ams_headers.len() <= MAX_ARC_SETS {
        parsed
            .ams_headers
            .iter()
            .map(|h| (h.header.cb, HashAlgorithm::from(h.header.a), h.header.l))
            .collect()
    } else {
        Vec::new()
    };
    for (canon, algorithm, l, hash) in &mut parsed.body_hashes {
        *hash = if wanted.contains(&(*canon, *algorithm, *l)) {
            let limit = (*l > 0).then_some(*l);
            body_hash(body, *canon, *algorithm, limit)
        } else {
            Vec::new()
        };
    }
}

/// The reason when a DKIM-Signature has `l=` twice.
pub const L_TWICE: &str = "the l= tag appears more than once";

/// The `l=` tag of a DKIM-Signature value, read from the tag list itself
/// (RFC 6376 §3.2, §3.5): mail-auth stores an absent `l=` and `l=0` alike
/// as 0, but `l=0` signs no body at all. `Ok(None)` when absent; an `l=`
/// that is not a number is left to mail-auth's parser, which refuses it.
/// A tag list with `l=` twice is invalid as a whole (§3.2), and which of
/// the two a reader takes would decide what is signed: an error.
pub fn l_tag(value: &[u8]) -> Result<Option<u64>, &'static str> {
    let fws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let mut found = None;
    for spec in value.split(|b| *b == b';') {
        let Some(eq) = spec.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, rest) = spec.split_at(eq);
        if !name.iter().copied().filter(|b| !fws(b)).eq(*b"l") {
            continue;
        }
        if found.is_some() {
            return Err(L_TWICE);
        }
        let digits: Vec<u8> = rest[1..].iter().copied().filter(|b| !fws(b)).collect();
        // At most 76 digits (§3.5); more than u64 holds is more than any
        // body and reads as the largest.
        found = Some(
            (!digits.is_empty() && digits.len() <= 76 && digits.iter().all(u8::is_ascii_digit))
                .then(|| {
                    std::str::from_utf8(&digits)
                        .ok()
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(u64::MAX)
                }),
        );
    }
    Ok(found.flatten())
}

// ----- headers (§3.4.1, §3.4.2, §3.7, §5.4.2) -----

/// One header field in canonical form, CRLF at the end. `value` is every
/// byte after the colon with folds as CRLF, without the CRLF that ends the
/// field.
pub fn canonical_header(name: &[u8], value: &[u8], canon: Canonicalization, out: &mut Vec<u8>) {
    canonical_header_no_crlf(name, value, canon, out);
    out.extend_from_slice(CRLF);
}

fn canonical_header_no_crlf(name: &[u8], value: &[u8], canon: Canonicalization, out: &mut Vec<u8>) {
    match canon {
        // §3.4.1: the field as it is.
        Canonicalization::Simple => {
            out.extend_from_slice(name);
            out.push(b':');
            out.extend_from_slice(value);
        }
        // §3.4.2: name lowercased, no WSP around the colon; the value
        // unfolded, each run of WSP one SP, none at either end. WSP is SP
        // and HTAB only (mail-auth 0.13 also takes form feed for it).
        Canonicalization::Relaxed => {
            let name_end = name.iter().rposition(|b| !is_wsp(*b)).map_or(0, |i| i + 1);
            out.extend(name[..name_end].iter().map(u8::to_ascii_lowercase));
            out.push(b':');
            let mut pending_space = false;
            let mut wrote = false;
            let mut rest = value;
            while let Some((&b, tail)) = rest.split_first() {
                if b == b'\r' && tail.first() == Some(&b'\n') {
                    // Unfold: the CRLF of a fold goes, its WSP stays.
                    rest = &tail[1..];
                    continue;
                }
                if is_wsp(b) {
                    pending_space = wrote;
                } else {
                    if pending_space {
                        out.push(b' ');
                        pending_space = false;
                    }
                    out.push(b);
                    wrote = true;
                }
                rest = tail;
            }
        }
    }
}

/// The DKIM-Signature value with the value of its `b=` tag deleted,
/// surrounding white space included (§3.5 `b=`, §3.7); everything else
/// byte for byte.
pub fn without_b_value(value: &[u8]) -> Vec<u8> {
    let fws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let mut out = Vec::with_capacity(value.len());
    for (i, spec) in value.split(|b| *b == b';').enumerate() {
        if i > 0 {
            out.push(b';');
        }
        match spec.iter().position(|b| *b == b'=') {
            Some(eq) if spec[..eq].iter().filter(|b| !fws(b)).eq(b"b".iter()) => {
                out.extend_from_slice(&spec[..=eq]);
            }
            _ => out.extend_from_slice(spec),
        }
    }
    out
}

/// What a signature signs (§3.7): the headers `h=` names, each name taking
/// the next instance from the bottom not yet taken (§5.4.2; a name with no
/// instance left adds nothing), canonicalized, then the DKIM-Signature
/// header itself without its `b=` value and without the final CRLF.
/// `headers` are (name, value) pairs as [`canonical_header`] takes them,
/// top first; `signature` is the signature header's (name, value).
pub fn header_hash_input(
    headers: &[(&[u8], &[u8])],
    h: &[String],
    signature: (&[u8], &[u8]),
    canon: Canonicalization,
) -> Vec<u8> {
    let mut out = Vec::new();
    // The instances of each name, top first, and how many of them `h=` has
    // taken from the bottom so far: linear in `h=` and the header count,
    // however long a hostile `h=` is.
    let mut instances: HashMap<Vec<u8>, (Vec<usize>, usize)> = HashMap::new();
    for (i, (name, _)) in headers.iter().enumerate() {
        instances
            .entry(name.to_ascii_lowercase())
            .or_default()
            .0
            .push(i);
    }
    for name in h {
        let lower = name.trim().to_ascii_lowercase();
        let Some((found, taken)) = instances.get_mut(lower.as_bytes()) else {
            continue;
        };
        if *taken < found.len() {
            let (n, v) = headers[found[found.len() - 1 - *taken]];
            canonical_header(n, v, canon, &mut out);
            *taken += 1;
        }
    }
    let (name, value) = signature;
    canonical_header_no_crlf(name, &without_b_value(value), canon, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::crypto::HashAlgorithm::Sha256;

    fn canon(body: &[u8], c: Canonicalization) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = canonicalize(body, c, &mut |p| {
            out.extend_from_slice(p);
            ControlFlow::Continue(())
        });
        out
    }

    fn simple(body: &[u8]) -> Vec<u8> {
        canon(body, Canonicalization::Simple)
    }

    fn relaxed(body: &[u8]) -> Vec<u8> {
        canon(body, Canonicalization::Relaxed)
    }

    fn b64(hash: &[u8]) -> String {
        crate::modifiers::dkim_sign::base64_encode(hash)
    }

    #[test]
    fn rfc6376_3_4_3_simple_body() {
        assert_eq!(simple(b""), b"\r\n");
        assert_eq!(simple(b"\r\n"), b"\r\n");
        assert_eq!(simple(b"\r\n\r\n\r\n"), b"\r\n");
        assert_eq!(simple(b"abc"), b"abc\r\n");
        assert_eq!(simple(b"abc\r\n\r\n"), b"abc\r\n");
        // Trailing white space is text to "simple".
        assert_eq!(simple(b"abc \r\n \r\n"), b"abc \r\n \r\n");
        // A lone CR or LF is text, kept as it is.
        assert_eq!(simple(b"a\rb\nc\r\n"), b"a\rb\nc\r\n");
        // Errata 1376: the sha256 of the empty body.
        assert_eq!(
            b64(&body_hash(b"", Canonicalization::Simple, Sha256, None)),
            "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="
        );
    }

    #[test]
    fn rfc6376_3_4_4_relaxed_body() {
        assert_eq!(relaxed(b""), b"");
        assert_eq!(relaxed(b"\r\n"), b"");
        assert_eq!(relaxed(b"abc"), b"abc\r\n");
        assert_eq!(relaxed(b" C \r\nD \t E\r\n"), b" C\r\nD E\r\n");
        // White-space-only lines at the end are empty lines: ignored.
        assert_eq!(relaxed(b"abc\r\n \r\n\t\r\n\r\n"), b"abc\r\n");
        assert_eq!(relaxed(b" \r\n\t \r\n"), b"");
        // In the middle they are empty lines that stay.
        assert_eq!(relaxed(b"a\r\n \r\n\r\nb\r\n"), b"a\r\n\r\n\r\nb\r\n");
        // A last line without CRLF gets one; one of white space is empty.
        assert_eq!(relaxed(b"a\r\nb  "), b"a\r\nb\r\n");
        assert_eq!(relaxed(b"a\r\n  "), b"a\r\n");
        // A lone CR or LF is text, not a line end or white space.
        assert_eq!(relaxed(b"a \rb\n \r\n"), b"a \rb\n\r\n");
        // Errata 1376: the sha256 of the empty body.
        assert_eq!(
            b64(&body_hash(
                b" \r\n",
                Canonicalization::Relaxed,
                Sha256,
                None
            )),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn rfc6376_3_4_5_canonicalization_example() {
        // The example of §3.4.5, body part.
        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(relaxed(body), b" C\r\nD E\r\n");
        assert_eq!(simple(body), b" C \r\nD \t E\r\n");
    }

    #[test]
    fn rfc6376_3_5_l_counts_canonical_octets() {
        let body = b"a  b\r\nc\r\n";
        // Relaxed: "a b\r\n" is 5 canonical octets (6 raw).
        assert_eq!(
            body_hash(body, Canonicalization::Relaxed, Sha256, Some(5)),
            Sha256.hash(&b"a b\r\n"[..]).as_ref()
        );
        assert_eq!(
            body_hash(body, Canonicalization::Relaxed, Sha256, Some(0)),
            Sha256.hash(&b""[..]).as_ref()
        );
        assert_eq!(
            canonical_len_up_to(body, Canonicalization::Relaxed, u64::MAX),
            8
        );
        assert_eq!(
            canonical_len_up_to(b"", Canonicalization::Simple, u64::MAX),
            2
        );
    }

    #[test]
    fn l_tags_are_read_from_the_tag_list() {
        assert_eq!(l_tag(b"v=1; a=rsa-sha256; l=0; b=x"), Ok(Some(0)));
        assert_eq!(l_tag(b"v=1;\r\n\t l = 12 ;bh=abc"), Ok(Some(12)));
        assert_eq!(l_tag(b"v=1; bh=l=5"), Ok(None));
        assert_eq!(l_tag(b"v=1; a=rsa-sha256"), Ok(None));
        assert_eq!(l_tag(b"l=x"), Ok(None));
        assert_eq!(l_tag(b"L=5"), Ok(None));
        assert_eq!(
            l_tag(format!("l={}", "9".repeat(40)).as_bytes()),
            Ok(Some(u64::MAX))
        );
        // Twice, however written, is an invalid tag list.
        assert_eq!(l_tag(b"l=5; b=x; l=0"), Err(L_TWICE));
        assert_eq!(l_tag(b"l=5; l =x"), Err(L_TWICE));
    }

    #[test]
    fn canonicalization_stops_at_the_limit() {
        let body = b"a  b\r\n\r\nc\r\n".repeat(1000);
        for c in [Canonicalization::Simple, Canonicalization::Relaxed] {
            // At least the cap once it is reached (simple emits its body
            // in one piece), exact below it.
            assert!(canonical_len_up_to(&body, c, 5) >= 5, "{c:?}");
            let full = canonical_len_up_to(&body, c, u64::MAX);
            assert_eq!(canonical_len_up_to(&body, c, full + 1), full);
            // A hash of the first n octets is the hash of those octets.
            let all = canon(&body, c);
            assert_eq!(
                body_hash(&body, c, Sha256, Some(7)),
                Sha256.hash(&all[..7]).as_ref()
            );
            assert_eq!(
                body_hash(&body, c, Sha256, Some(0)),
                Sha256.hash(&b""[..]).as_ref()
            );
        }
    }

    /// When this fails, mail-auth's body canonicalization was fixed: this
    /// module may then give way to it (check `l=` and lone CR/LF too).
    #[test]
    fn mail_auth_0_13_body_canonicalization_is_still_wrong() {
        let theirs = |body: &[u8], c: Canonicalization| {
            let mut out = Vec::new();
            c.canonical_body(body, u64::MAX).write(&mut out);
            out
        };
        assert_eq!(
            theirs(b"abc\r\n \r\n", Canonicalization::Relaxed),
            b"abc\r\n\r\n"
        );
        assert_eq!(relaxed(b"abc\r\n \r\n"), b"abc\r\n");
        assert_eq!(theirs(b"a\rb\r\n", Canonicalization::Simple), b"ab\r\n");
    }

    fn header(name: &str, value: &[u8], c: Canonicalization) -> Vec<u8> {
        let mut out = Vec::new();
        canonical_header(name.as_bytes(), value, c, &mut out);
        out
    }

    #[test]
    fn rfc6376_3_4_1_simple_header() {
        for value in [&b"x"[..], b" x", b"  a\r\n\tb ", b" caf\xe9"] {
            let mut expected = b"Subject:".to_vec();
            expected.extend_from_slice(value);
            expected.extend_from_slice(b"\r\n");
            assert_eq!(header("Subject", value, Canonicalization::Simple), expected);
        }
    }

    #[test]
    fn rfc6376_3_4_2_relaxed_header() {
        let r = |name: &str, value: &[u8]| header(name, value, Canonicalization::Relaxed);
        assert_eq!(
            r("SUBJECT ", b" \t a  b\t\r\n\t c \t"),
            b"subject:a b c\r\n"
        );
        assert_eq!(r("Subject", b"x"), b"subject:x\r\n");
        assert_eq!(r("Subject", b""), b"subject:\r\n");
        assert_eq!(r("Subject", b"\r\n folded"), b"subject:folded\r\n");
        // Form feed is not WSP: kept as it is.
        assert_eq!(r("Subject", b" a\x0cb \x0c"), b"subject:a\x0cb \x0c\r\n");
        // The example of §3.4.5, header part.
        assert_eq!(r("A", b" X"), b"a:X\r\n");
        assert_eq!(r("B ", b" Y\t\r\n\tZ  "), b"b:Y Z\r\n");
    }

    #[test]
    fn rfc6376_3_7_the_b_value_is_deleted() {
        assert_eq!(
            without_b_value(b" v=1; bh=abc; b=de\r\n\t fg ; h=from"),
            b" v=1; bh=abc; b=; h=from"
        );
        assert_eq!(without_b_value(b"v=1; b =xyz"), b"v=1; b =");
        assert_eq!(without_b_value(b"v=1;\r\n b=xyz\r\n"), b"v=1;\r\n b=");
    }

    #[test]
    fn rfc6376_5_4_2_instances_bottom_up_and_oversigning() {
        let headers: Vec<(&[u8], &[u8])> = vec![(b"X", b" 1"), (b"From", b" a"), (b"x", b" 2")];
        let h: Vec<String> = ["x", "From", "X", "X", "from"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let input = header_hash_input(
            &headers,
            &h,
            (b"DKIM-Signature", b" v=1; b=abc"),
            Canonicalization::Relaxed,
        );
        assert_eq!(
            input,
            b"x:2\r\nfrom:a\r\nx:1\r\ndkim-signature:v=1; b=".to_vec()
        );
    }
}
