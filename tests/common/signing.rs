//! Signing and sealing as the sending side does it, with mail-auth and the
//! test key tests/zones/auth/dkim-rsa2048.pem, whose public half the zones
//! of tests/zones/auth publish as `sel._domainkey.<domain>`.

use super::Mail;
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, SpfOutput, SpfResult};

/// The message as sent (and as the engine rebuilds it for verification):
/// headers ("Name: value" CRLF), empty line, body.
pub fn raw_message(mail: &Mail) -> String {
    let mut raw = String::new();
    for (name, value) in &mail.headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(&mail.body);
    raw
}

/// Split a block of header text ("Name: value\r\n\tcontinued\r\n...") into
/// (name, value) pairs as the milter delivers them: no space after the
/// colon, folding kept.
pub fn parse_headers(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            let last = out.last_mut().expect("a continuation follows a header");
            last.1.push_str("\r\n");
            last.1.push_str(line);
        } else {
            let (name, value) = line.split_once(':').expect("a header line");
            let value = value.strip_prefix(' ').unwrap_or(value);
            out.push((name.to_string(), value.to_string()));
        }
    }
    out
}

pub fn prepend(mail: &mut Mail, headers: Vec<(String, String)>) {
    let rest = std::mem::take(&mut mail.headers);
    mail.headers = headers;
    mail.headers.extend(rest);
}

pub fn rsa_key() -> RsaKey<Sha256> {
    let path = super::dns_server::zones_dir().join("auth/dkim-rsa2048.pem");
    let pem = std::fs::read_to_string(path).expect("test key");
    #[allow(deprecated)]
    RsaKey::<Sha256>::from_pkcs8_pem(&pem).expect("a PKCS#8 RSA key")
}

/// DKIM-sign the message as `d=domain; s=sel` (with `l=` when asked).
pub fn dkim_sign(mail: &mut Mail, domain: &str, body_length: bool) {
    let raw = raw_message(mail);
    let signer = DkimSigner::from_key(rsa_key())
        .domain(domain)
        .selector("sel")
        .headers(["From", "To", "Subject"])
        .body_length(body_length);
    let signature = signer.sign(raw.as_bytes()).expect("sign");
    prepend(mail, parse_headers(&signature.to_header()));
}

/// Add an ARC set sealed by `sealer` (the first of the chain), recording
/// an SPF pass for origin.test as the sealer's Authentication-Results.
pub fn arc_seal(mail: &mut Mail, sealer: &str) {
    let raw = raw_message(mail);
    let parsed = AuthenticatedMessage::parse(raw.as_bytes()).expect("parse");
    let spf = SpfOutput::new("origin.test".into()).with_result(SpfResult::Pass);
    let results = AuthenticationResults::new(sealer).with_spf_mailfrom_result(
        &spf,
        "192.0.2.10".parse().expect("ip"),
        "alice@origin.test",
        "mx.origin.test",
    );
    let set = ArcSealer::from_key(rsa_key())
        .domain(sealer)
        .selector("sel")
        .headers(["From", "To", "Subject", "DKIM-Signature"])
        .seal(&parsed, &results, &ArcOutput::default())
        .expect("seal");
    prepend(mail, parse_headers(&set.to_header()));
}

/// A message from origin.test, signed there, that the list at
/// forwarder.test (client 192.0.2.50) changed (a footer) and ARC-sealed.
pub fn forwarded() -> Mail {
    let mut m = Mail::from_client("list-bounces@forwarder.test", "192.0.2.50");
    m.headers[0].1 = "Alice <alice@origin.test>".into();
    dkim_sign(&mut m, "origin.test", false);
    m.body.push_str("--\r\nlist footer\r\n");
    arc_seal(&mut m, "forwarder.test");
    m
}

/// Add the next ARC set, sealed by `sealer`, on top of the chain the
/// message carries, as a hop that validated that chain with the result
/// `chain` would: `cv=pass` for a pass, `cv=fail` otherwise (mail-auth's
/// sealer writes cv= from the result it is given and never seals on top of
/// a `cv=fail`). The sets are taken as they are, not validated here.
pub fn arc_seal_next(mail: &mut Mail, sealer: &str, chain: mail_auth::DkimResult) {
    use mail_auth::arc::Set;
    use mail_auth::common::headers::Header;
    let raw = raw_message(mail);
    let parsed = AuthenticatedMessage::parse(raw.as_bytes()).expect("parse");
    let mut output = ArcOutput::default().with_result(chain);
    for ((seal, ams), aar) in parsed
        .as_headers
        .iter()
        .zip(&parsed.ams_headers)
        .zip(&parsed.aar_headers)
    {
        output = output.with_set(Set {
            signature: Header::new(ams.name, ams.value, &ams.header),
            seal: Header::new(seal.name, seal.value, &seal.header),
            results: Header::new(aar.name, aar.value, &aar.header),
        });
    }
    let results = AuthenticationResults::new(sealer);
    let set = ArcSealer::from_key(rsa_key())
        .domain(sealer)
        .selector("sel")
        .headers(["From", "To", "Subject"])
        .seal(&parsed, &results, &output)
        .expect("seal");
    prepend(mail, parse_headers(&set.to_header()));
}
