//! The plain data the engine works on: what is known about the connection,
//! the envelope and the message. Built by the milter adapter or by the offline
//! `test` command; nothing here knows the wire protocol.

pub mod address_list;

use crate::address::Address;
use bytes::Bytes;
use serde::Serialize;
use std::borrow::Cow;
use std::net::IpAddr;

/// The TLS session of the connection, as the MTA's macros describe it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TlsInfo {
    /// `{tls_version}`, for example `TLSv1.3`.
    pub version: String,
    /// `{cipher}`, when the MTA sent it.
    pub cipher: Option<String>,
}

/// The client's SMTP AUTH login, as the MTA's macros describe it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuthInfo {
    /// `{auth_authen}`: the SASL login name.
    pub user: String,
    /// `{auth_type}`: the SASL mechanism.
    pub mechanism: Option<String>,
}

/// Facts about the SMTP client, filled in as the stages reveal them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectionFacts {
    /// The client's IP address, if it connected over IP.
    pub client_ip: Option<IpAddr>,
    /// The client's host name as the MTA resolved it; `None` when it has none.
    pub client_name: Option<String>,
    /// `{daemon_name}`: which MTA service the client talks to.
    pub daemon_name: Option<String>,
    /// The name the client gave at HELO/EHLO.
    pub helo: Option<String>,
    /// The TLS session, when the client used STARTTLS.
    pub tls: Option<TlsInfo>,
    /// The SMTP AUTH login, when the client authenticated.
    pub auth: Option<AuthInfo>,
}

/// The envelope of one message: the sender and recipients of the SMTP transaction.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The sender as the client gave it at MAIL FROM: what SPF, DMARC,
    /// DNSBL and sender authorisation judge.
    pub sender: Address,
    /// The sender after the pipeline's rewrites, when they changed it (what
    /// the MTA will be told at end of message).
    pub rewritten_sender: Option<Address>,
    /// ESMTP parameters of MAIL FROM, such as `SIZE=12345`.
    pub mail_args: Vec<String>,
    /// Accepted recipients so far, after rewrites.
    pub recipients: Vec<Address>,
}

impl Envelope {
    /// The `SIZE=` the client declared at MAIL FROM (RFC 1870), if any.
    pub fn declared_size(&self) -> Option<u64> {
        self.mail_args.iter().find_map(|arg| {
            let (k, v) = arg.split_once('=')?;
            k.eq_ignore_ascii_case("SIZE").then(|| v.parse().ok())?
        })
    }
}

/// One header field. A received header keeps its exact bytes: DKIM's
/// "simple" header canonicalization (RFC 6376 §3.4.1) hashes the name, the
/// colon and the value as the client sent them, so the white space after
/// the colon (or its absence, `Subject:x`), the folding and any 8-bit bytes
/// must reach the verifier unchanged. The policy checks read a text view
/// computed once at construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The field name. Names are printable ASCII (RFC 5322 §3.6.8 `ftext`)
    /// and the MTA passes nothing else as a header; bytes that are not
    /// UTF-8 would be replaced here, so such a name is not kept exactly.
    name: String,
    /// Every byte after the colon, as the MTA passed it: leading white
    /// space and folds included (the MTA may fold with LF alone).
    raw_value: Vec<u8>,
    /// The text view: `raw_value` without its leading white space, with
    /// bytes that are not UTF-8 replaced by U+FFFD.
    value: String,
}

impl Header {
    /// A header as the MTA passed it: `raw_value` is everything after the
    /// colon, exactly.
    pub fn received(name: impl Into<Vec<u8>>, raw_value: impl Into<Vec<u8>>) -> Header {
        let name = into_text(name.into());
        let raw_value = raw_value.into();
        let start = raw_value
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .unwrap_or(raw_value.len());
        let value = String::from_utf8_lossy(&raw_value[start..]).into_owned();
        Header {
            name,
            raw_value,
            value,
        }
    }

    /// A header we make: written `Name: value`, with the one space after
    /// the colon that RFC 5322 §2.2 suggests.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Header {
        let value = value.into();
        let mut raw_value = Vec::with_capacity(value.len() + 1);
        raw_value.push(b' ');
        raw_value.extend_from_slice(value.as_bytes());
        Header {
            name: name.into(),
            raw_value,
            value,
        }
    }

    /// The header's name as received, without the colon.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value's bytes exactly as received (for a header we made: a space
    /// and the value).
    pub fn raw_value(&self) -> &[u8] {
        &self.raw_value
    }

    /// The value as text: without the white space after the colon, folds
    /// kept as received, bytes that are not UTF-8 replaced by U+FFFD.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The value after the colon with every line break made CRLF (MTAs pass
    /// folds with LF or CRLF; DKIM hashes CRLF) and the CRLF that ends the
    /// field, appended to `out`. Copied line by line, not byte by byte
    /// (most values are one line).
    pub fn write_value_crlf(&self, out: &mut Vec<u8>) {
        for line in self.raw_value.split_inclusive(|b| *b == b'\n') {
            match line.strip_suffix(b"\n") {
                Some(text) if !text.ends_with(b"\r") => {
                    out.extend_from_slice(text);
                    out.extend_from_slice(b"\r\n");
                }
                _ => out.extend_from_slice(line),
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Bytes as text, reusing the buffer when they are UTF-8.
fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// What reports and the `test` command show of a header: its name and its
/// text view (the exact bytes are for signatures, not for reading).
impl Serialize for Header {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Header", 2)?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("value", &self.value)?;
        s.end()
    }
}

/// The body as the MTA sent it, kept as the chunks it came in. A chunk
/// shares the buffer it was read into: keeping the body costs no copy, and
/// only what needs it in one piece (DKIM, ARC) builds one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Body {
    /// Append a chunk of body as received from the MTA.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(chunk);
        }
    }

    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body's pieces, in order.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().map(|c| c.as_ref())
    }

    /// The body in one piece: borrowed when it came in one chunk, else a
    /// copy.
    pub fn contiguous(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.chunks.as_slice() {
            [] => std::borrow::Cow::Borrowed(&[]),
            [one] => std::borrow::Cow::Borrowed(one.as_ref()),
            _ => std::borrow::Cow::Owned(self.to_vec()),
        }
    }

    /// The body in one piece (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        self.chunks().for_each(|c| out.extend_from_slice(c));
        out
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        let mut body = Body::default();
        body.push(Bytes::from(bytes));
        body
    }
}

impl From<&[u8]> for Body {
    fn from(bytes: &[u8]) -> Body {
        Body::from(bytes.to_vec())
    }
}

/// One message as the engine sees it: its headers and buffered body.
#[derive(Clone, Debug, Default)]
pub struct Message {
    /// The header fields in the order received.
    pub headers: Vec<Header>,
    /// The body as buffered, at most the pipeline's body limit.
    pub body: Body,
    /// True when the body was longer than the limit and the rest was not kept.
    pub body_truncated: bool,
    /// The size of headers and body as received, in bytes.
    pub size: u64,
}

/// The message as bytes, the shape DKIM and ARC work on: each header as
/// received (name, colon, the value's exact bytes with every line break
/// made CRLF) and CRLF, an empty line, then the body as received.
pub fn message_bytes(headers: &[Header], body: &Body) -> Vec<u8> {
    let mut out = header_block_with_room(headers, body.len());
    body.chunks().for_each(|c| out.extend_from_slice(c));
    out
}

/// The header block alone, as [`message_bytes`] writes it (ending with the
/// empty line), for what needs the headers only.
pub fn header_block(headers: &[Header]) -> Vec<u8> {
    header_block_with_room(headers, 0)
}

fn header_block_with_room(headers: &[Header], room: usize) -> Vec<u8> {
    let size: usize = headers
        .iter()
        .map(|h| h.name.len() + h.raw_value.len() + 8)
        .sum();
    let mut out = Vec::with_capacity(size + room + 2);
    for h in headers {
        out.extend_from_slice(h.name.as_bytes());
        out.push(b':');
        h.write_value_crlf(&mut out);
    }
    out.extend_from_slice(b"\r\n");
    out
}

impl Message {
    /// The values of every header with this name, in order (names compare
    /// case-insensitively, RFC 5322 §1.2.2).
    pub fn header_values<'m>(&'m self, name: &'m str) -> impl Iterator<Item = &'m str> + 'm {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(Header::value)
    }
}

/// Undo RFC 5322 §2.2.3 folding: a line break followed by white space is
/// removed, keeping the white space. Milters see LF or CRLF depending on the
/// MTA, so both are handled. The one unfolder: patterns of the `header`
/// check and `remove_header` match the unfolded value.
pub fn unfold(value: &str) -> Cow<'_, str> {
    if !value.contains(['\r', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(idx) = rest.find(['\r', '\n']) {
        out.push_str(&rest[..idx]);
        let after = &rest[idx..];
        let brk = if after.starts_with("\r\n") { 2 } else { 1 };
        let next = after[brk..].chars().next();
        if !matches!(next, Some(' ' | '\t')) {
            // Not a fold: keep the break so a pattern can still see it.
            out.push_str(&after[..brk]);
        }
        rest = &after[brk..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_size() {
        let env = Envelope {
            rewritten_sender: None,
            sender: Address::Null,
            mail_args: vec!["BODY=8BITMIME".into(), "size=4096".into()],
            recipients: vec![],
        };
        assert_eq!(env.declared_size(), Some(4096));
    }

    #[test]
    fn a_body_in_chunks_reads_as_one_piece() {
        let mut body = Body::default();
        body.push(Bytes::from_static(b"Hello,\r\n"));
        body.push(Bytes::new());
        body.push(Bytes::from_static(b"world\r\n"));
        assert_eq!(body.len(), 15);
        assert_eq!(body.chunks().count(), 2, "empty chunks are not kept");
        assert_eq!(body.to_vec(), b"Hello,\r\nworld\r\n");
        let headers = vec![Header::received("Subject", " folded\n line")];
        assert_eq!(
            message_bytes(&headers, &body),
            b"Subject: folded\r\n line\r\n\r\nHello,\r\nworld\r\n"
        );
        assert_eq!(header_block(&headers), b"Subject: folded\r\n line\r\n\r\n");
    }

    #[test]
    fn header_values_get_crlf_line_ends_whatever_the_mta_sent() {
        let headers = vec![
            Header::received("A", " one\r\n two\n three"),
            Header::received("B", "\n lead"),
            Header::received("C", " end\n"),
            Header::new("D", "plain"),
            Header::new("E", ""),
        ];
        assert_eq!(
            header_block(&headers),
            b"A: one\r\n two\r\n three\r\nB:\r\n lead\r\nC: end\r\n\r\nD: plain\r\nE: \r\n\r\n"
        );
    }

    #[test]
    fn received_headers_keep_their_bytes_and_give_a_text_view() {
        // RFC 6376 §3.4.1: "simple" hashes the header as received, so no
        // space is added after the colon and none is taken away.
        let h = Header::received("Subject", "x");
        assert_eq!(h.raw_value(), b"x");
        assert_eq!(h.value(), "x");
        let h = Header::received("Subject", " \t two\n\tlines ");
        assert_eq!(h.value(), "two\n\tlines ");
        // 8-bit bytes stay bytes; the text view replaces them.
        let h = Header::received("X-Latin1", b" caf\xe9".to_vec());
        assert_eq!(h.raw_value(), b" caf\xe9");
        assert_eq!(h.value(), "caf\u{fffd}");
        assert_eq!(
            header_block(&[h, Header::received("Subject", "x")]),
            b"X-Latin1: caf\xe9\r\nSubject:x\r\n\r\n"
        );
        // Ours get the one space.
        let h = Header::new("X-Ours", "v");
        assert_eq!(
            (h.name(), h.raw_value(), h.value()),
            ("X-Ours", &b" v"[..], "v")
        );
    }

    proptest::proptest! {
        /// RFC 6376 §3.4.1: the header block rebuilt from received headers
        /// is the block as it came, byte for byte, whatever the spacing
        /// after the colon, the folds (CRLF or, as Postfix passes them, LF)
        /// and the 8-bit bytes.
        #[test]
        fn received_headers_rebuild_the_exact_header_block(
            fields in proptest::collection::vec(
                (
                    "[!-9;-~]{1,20}",
                    proptest::collection::vec(
                        (
                            proptest::collection::vec(
                                proptest::prop_oneof![0u8..=9, 11u8..=12, 14u8..=255],
                                0..30,
                            ),
                            proptest::prop_oneof![proptest::strategy::Just(b' '), proptest::strategy::Just(b'\t')],
                        ),
                        1..4,
                    ),
                    proptest::bool::ANY,
                ),
                0..12,
            )
        ) {
            let mut expected = Vec::new();
            let mut headers = Vec::new();
            for (name, segments, lf_folds) in &fields {
                let mut crlf_value = Vec::new();
                let mut wire_value = Vec::new();
                for (i, (text, fold)) in segments.iter().enumerate() {
                    if i > 0 {
                        crlf_value.extend_from_slice(b"\r\n");
                        wire_value.extend_from_slice(if *lf_folds { b"\n" } else { b"\r\n" });
                        crlf_value.push(*fold);
                        wire_value.push(*fold);
                    }
                    crlf_value.extend_from_slice(text);
                    wire_value.extend_from_slice(text);
                }
                expected.extend_from_slice(name.as_bytes());
                expected.push(b':');
                expected.extend_from_slice(&crlf_value);
                expected.extend_from_slice(b"\r\n");
                headers.push(Header::received(name.as_str(), wire_value));
            }
            expected.extend_from_slice(b"\r\n");
            proptest::prop_assert_eq!(header_block(&headers), expected.clone());
            let body = Body::from(b"x\r\n".as_slice());
            expected.extend_from_slice(b"x\r\n");
            proptest::prop_assert_eq!(message_bytes(&headers, &body), expected);
        }
    }
}
