use super::super::rewrite_sender::test_support::{build, has_error};
use super::key::{Exposure, exposure};
use super::*;
use crate::tables::TableSet;
use std::path::Path;

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
        let e = LoadedKey::from_pem(&pem(file)).unwrap_err().to_string();
        assert!(e.contains(&format!("{bits} bits, too short")), "{e}");
        assert!(e.contains("RFC 8301"), "{e}");
    }
    let e = LoadedKey::from_pem(&pem("rsa1024.pem"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1024 bits: the ring crypto backend signs with 2048 to 4096"),
        "{e}"
    );
}

#[test]
fn what_is_not_a_usable_key_says_so() {
    let e = LoadedKey::from_pem("hello").unwrap_err().to_string();
    assert!(e.starts_with("is not a PEM file"), "{e}");
    let e = LoadedKey::from_pem(
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAm3ywBnoo1dUy/SHaPoRy0fjDgO8gQEF0XHZtORRlnrM=\n-----END PUBLIC KEY-----\n",
    )
    .unwrap_err().to_string();
    assert!(
        e.contains("\"PUBLIC KEY\" PEM block and no private key"),
        "{e}"
    );
    let e = LoadedKey::from_pem(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("encrypted key"), "{e}");
    let legacy = pem("rsa2048-pkcs1.pem").replacen(
        "-----\n",
        "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n",
        1,
    );
    assert!(
        LoadedKey::from_pem(&legacy)
            .unwrap_err()
            .to_string()
            .contains("encrypted key")
    );
    let e = LoadedKey::from_pem("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid base64"), "{e}");
    let e = LoadedKey::from_pem("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid PKCS#8"), "{e}");
    let e = LoadedKey::from_pem("-----BEGIN PRIVATE KEY-----\nMAA=\n")
        .unwrap_err()
        .to_string();
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
    assert!(has_error(&errors_of(""), "needs `keys`, such as keys = [{"));
    assert!(has_error(
        &errors_of("keys = []"),
        "non-empty list of tables"
    ));
    assert!(has_error(
        &errors_of("keys = ['x']"),
        "`keys[0]` in modifier \"t\" must be a table { domain"
    ));
    let errors =
        errors_of("keys = [{ domain = 'example.org', selector = 's', key = 'k.pem', algo = 'x' }]");
    assert!(
        has_error(&errors, "unknown key `algo` in `keys[0]`"),
        "{errors:?}"
    );
    // Entries of the right shape have every problem named.
    let errors = errors_of(
        "keys = [{ domain = 'bad domain', selector = 'a b', key = 'missing.pem' }, \
         { domain = 'Example.org', selector = 's', key = 'missing.pem' }, \
         { domain = 'example.org', selector = 'S', key = 'missing.pem' }]",
    );
    assert!(has_error(&errors, "`keys[0].domain`"), "{errors:?}");
    assert!(has_error(&errors, "`keys[0].selector`"), "{errors:?}");
    assert!(
        has_error(
            &errors,
            "`keys[2]` in modifier \"t\" repeats domain \"example.org\""
        ),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, "key file \"/nonexistent-config-dir/missing.pem\""),
        "{errors:?}"
    );
    // A file named twice is reported once.
    assert_eq!(errors.len(), 4, "{errors:?}");
    let errors = errors_of("keys = [{ domain = 'example.org' }]");
    assert!(
        has_error(&errors, "`keys[0]` in modifier \"t\" needs `selector`"),
        "{errors:?}"
    );
    // Every value of the wrong kind at once, ...
    let errors = errors_of(
        "keys = [{ domain = 'example.org', selector = 's', key = 1 }]\nsign_domain = 'envelope'\nsubdomains = 'yes'\nheaders = 1\noversign = [2]\nexpire = 'soon'\ncanonicalization = 3",
    );
    assert!(has_error(&errors, "`keys[0].key`"), "{errors:?}");
    assert!(has_error(&errors, "\"from\" or \"sender\""), "{errors:?}");
    assert!(has_error(&errors, "`subdomains`"), "{errors:?}");
    assert!(has_error(&errors, "`headers`"), "{errors:?}");
    assert!(has_error(&errors, "`oversign[0]`"), "{errors:?}");
    assert!(has_error(&errors, "`expire`"), "{errors:?}");
    assert!(has_error(&errors, "`canonicalization`"), "{errors:?}");
    assert_eq!(errors.len(), 7, "{errors:?}");
    // ... and once each has the right kind, every value still wrong.
    let errors = errors_of(
        "keys = [{ domain = 'example.org', selector = 's', key = 'missing.pem' }]\nheaders = ['Subject']\noversign = ['Bad Name']\ncanonicalization = 'simple/simple'",
    );
    assert!(has_error(&errors, "key file"), "{errors:?}");
    assert!(has_error(&errors, "must include \"From\""), "{errors:?}");
    assert!(has_error(&errors, "not a header name"), "{errors:?}");
    assert!(
        has_error(&errors, "simple header canonicalization"),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 4, "{errors:?}");
    let errors = errors_of(
        "keys = [{ domain = 'example.org', selector = 's', key = 'k' }]\ncanonicalization = 'loose'",
    );
    assert!(has_error(&errors, "found \"loose\""), "{errors:?}");
}
