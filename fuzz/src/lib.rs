//! What each fuzz target feeds and asserts, one function per target, apart
//! from libFuzzer: `fuzz_targets/*.rs` call these, and the main crate's
//! `tests/it/fuzz_regressions.rs` includes this file to replay the seed corpus
//! and every input that ever failed against the very same code.
//!
//! Each function takes raw bytes, as the MTA, a DNS zone or a file would
//! hand them over, turns them into the parser's input the way the daemon
//! does (lossy UTF-8, like the milter adapter), and asserts properties that
//! must hold for any input, not just that nothing panics.

use dispatch_milter::address::{Address, normalize_domain};
use dispatch_milter::auth::dmarc::evaluate::walk_domains;
use dispatch_milter::auth::dmarc::record::{PolicyTag, Record};
use dispatch_milter::auth::keys::domain_key_name;
use dispatch_milter::auth_results::{authserv_id, claims, parse};
use dispatch_milter::checks::authorize_sender::from_addresses;
use dispatch_milter::checks::dmarc::canonical;
use dispatch_milter::checks::spf::pvalue;
use dispatch_milter::cli::test::parse_message;
use dispatch_milter::config::{Registry, compile_str};
use dispatch_milter::daemon::adapter::wire_header_value;
use dispatch_milter::edits::{Edit, EditList, sanitize_value, valid_header_name};
use dispatch_milter::engine::{StageReply, Verdict};
use dispatch_milter::message::unfold;
use dispatch_milter::message::{
    AuthInfo, Body, ConnectionFacts, Header, TlsInfo, header_block, message_bytes,
};
use dispatch_milter::milter;
use dispatch_milter::modifiers::dkim_sign::{LoadedKey, valid_selector};
use dispatch_milter::policy::Policy;
use dispatch_milter::tables::{normalize_key, parse_map_file};
use mail_auth::AuthenticatedMessage;
use mail_auth::common::parse::TxtRecordParser;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Bytes as the milter adapter turns them into text.
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// What every parsed address must satisfy: its canonical spellings parse
/// again to the same matching key, its domain is already normalised, and a
/// table stores the key of a mailbox unchanged (so a table entry written as
/// the key finds the address). A bare local part is a plain table key,
/// which may be normalised further (a non-ASCII one like a domain), but the
/// same way each time.
fn assert_canonical(a: &Address, raw: &str) {
    let key = a.key();
    let table_key = normalize_key(&key);
    if a.domain().is_some() {
        assert_eq!(
            table_key, key,
            "a table would store the key of {raw:?} differently"
        );
    } else {
        assert_eq!(
            normalize_key(&table_key),
            table_key,
            "normalize_key is not idempotent on the key of {raw:?}"
        );
    }
    if let Some(domain) = a.domain() {
        assert_eq!(
            normalize_domain(domain).as_deref(),
            Ok(domain),
            "domain of {raw:?} is not normalised"
        );
    }
    if a.is_null() {
        assert_eq!(key, "<>");
        return;
    }
    for spelling in [key.clone(), a.canonical(), a.bracketed()] {
        match Address::parse(&spelling) {
            Ok(again) => assert_eq!(
                again.key(),
                key,
                "{raw:?} spelled {spelling:?} has another key"
            ),
            Err(e) => panic!("{raw:?} spelled {spelling:?} does not parse: {e}"),
        }
    }
}

/// `Address::parse` (envelope addresses from MAIL FROM and RCPT TO),
/// `Address::parse_config` and `normalize_domain`.
pub fn address(data: &[u8]) {
    let raw = text(data);
    if let Ok(a) = Address::parse(&raw) {
        assert_canonical(&a, &raw);
    }
    if let Ok(a) = Address::parse_config(&raw) {
        assert_canonical(&a, &raw);
    }
    if let Ok(domain) = normalize_domain(&raw) {
        assert_eq!(
            normalize_domain(&domain).as_deref(),
            Ok(domain.as_str()),
            "normalize_domain is not idempotent on {raw:?}"
        );
    }
}

/// The authserv-id of a received Authentication-Results value, the parser
/// of whole values, and our own writers of such values (the builder and
/// `pvalue`), which must read back.
pub fn auth_results(data: &[u8]) {
    let value = text(data);
    if let Some(id) = authserv_id(&value) {
        assert!(!id.contains(['\r', '\n']), "id {id:?} holds a line break");
        if !id.is_empty() {
            assert!(claims(&value, &id), "{value:?} does not claim its own id");
        }
        // Comments and folding before the id change nothing.
        for prefix in ["(comment) ", "\r\n ", " (a (nested) \\) comment)\t"] {
            assert_eq!(
                authserv_id(&format!("{prefix}{value}")).as_deref(),
                Some(id.as_str()),
                "{prefix:?} before {value:?} changes the id"
            );
        }
    }
    for ours in ["mx.example.org", "xn--bcher-kva.example", "bücher.example"] {
        claims(&value, ours);
    }
    // A value that reads has the same id as the sanitizer reads, and what
    // is built from it reads back as what is built again.
    if let Ok(read) = parse(&value) {
        assert_eq!(Some(&read.authserv_id), authserv_id(&value).as_ref());
        let once = read.to_string();
        match parse(&once) {
            Ok(again) => assert_eq!(again.to_string(), once, "from {value:?}"),
            Err(e) => panic!("{once:?}, built from {value:?}, does not read: {e}"),
        }
    }
    // What we write as a `value` reads back as what we meant.
    let meant: String = value.chars().filter(|c| !c.is_control()).collect();
    if !meant.is_empty() {
        let written = pvalue(&value);
        assert_eq!(
            authserv_id(&format!("{written}; spf=pass")).as_deref(),
            Some(meant.as_str()),
            "pvalue({value:?}) = {written:?} reads back differently"
        );
    }
}

/// Postfix-style map files (`[tables.X] type = "file"`) and table keys.
pub fn map_file(data: &[u8]) {
    let source = text(data);
    if let Ok(map) = parse_map_file(&source) {
        for (key, values) in &map {
            assert!(!key.is_empty(), "empty key from {source:?}");
            assert_eq!(&normalize_key(key), key, "key {key:?} is not normalised");
            for v in values {
                // Split at commas and white space outside quoted strings.
                assert!(
                    !v.is_empty()
                        && dispatch_milter::address::outside_quotes(v)
                            .all(|(_, c)| c != ',' && !c.is_whitespace()),
                    "value {v:?} of {key:?} was not split"
                );
            }
        }
    }
    for line in source.lines().take(64) {
        let key = normalize_key(line);
        assert_eq!(
            normalize_key(&key),
            key,
            "normalize_key is not idempotent on {line:?}"
        );
    }
}

/// Whether a config could make the compiler read something that never ends
/// (a device, a FIFO, /proc): its paths are outside input of another kind,
/// an administrator's, and reading /dev/zero as a table is not a parser bug.
/// Relative paths resolve under a directory that does not exist.
fn names_special_files(source: &str) -> bool {
    ["/dev", "/proc", "/sys", "/run", "\\u", "\\U"]
        .iter()
        .any(|p| source.contains(p))
}

/// The TOML configuration, compiled with the built-in kinds.
pub fn config(data: &[u8]) {
    let source = text(data);
    if names_special_files(&source) {
        return;
    }
    let file = Path::new("/nonexistent-fuzz-dir/fuzz.toml");
    let registry = Registry::builtin();
    if let Err(errors) = compile_str(file, &source, &registry) {
        assert!(!errors.0.is_empty(), "a failed compile reports no error");
        let lines = source.split('\n').count();
        for e in &errors.0 {
            assert_eq!(e.file, file, "error names another file: {e}");
            assert!(!e.message.is_empty(), "empty error message");
            if let Some((line, col)) = e.position {
                assert!(
                    line >= 1 && line <= lines && col >= 1,
                    "error position {line}:{col} outside the file ({lines} lines): {e}"
                );
            }
        }
    }
}

/// Every line of a folded value for the MTA: unfolding gives the value
/// back, a fold starts with a space, no line is white space alone (RFC 5322
/// §3.2.2), and none is longer than 78 characters (trailing white space
/// aside) unless one word alone is.
fn assert_folded_well(name: &str, value: &str, folded: &str, leading_space: bool) {
    let body = if leading_space {
        folded
            .strip_prefix(' ')
            .expect("the leading space is written")
    } else {
        folded
    };
    assert!(!folded.contains(['\r', '\0']), "{folded:?} holds CR or NUL");
    assert_eq!(
        body.replace('\n', ""),
        value,
        "unfolding {folded:?} does not give the value back"
    );
    for (i, line) in body.split('\n').enumerate() {
        let visible = line.trim_end_matches([' ', '\t']);
        let words = visible.trim_start_matches([' ', '\t']);
        let width = if i == 0 { name.len() + 2 } else { 0 } + visible.len();
        if i > 0 {
            assert!(line.starts_with(' '), "line {i} of {folded:?} is no fold");
            assert!(
                !words.is_empty(),
                "line {i} of {folded:?} is white space alone"
            );
        }
        if width > 78 {
            assert!(
                !words.contains(' '),
                "line {i} of {folded:?} is {width} long and could have been folded"
            );
        }
    }
}

/// Header values: what leaves through an edit (`sanitize_value`,
/// `EditList`, the folding of `wire_header_value`) and what is read from a
/// received one (`unfold`). The first line is the name, the rest the value.
pub fn header_value(data: &[u8]) {
    let input = text(data);
    let (name, value) = input.split_once('\n').unwrap_or(("X-Fuzz", &input));

    let clean = sanitize_value(value);
    assert!(
        !clean.contains(|c: char| c.is_control() && c != '\t'),
        "sanitize_value({value:?}) = {clean:?} keeps a control character"
    );
    assert_eq!(
        clean,
        clean.trim(),
        "sanitize_value({value:?}) is not trimmed"
    );
    assert_eq!(
        sanitize_value(&clean),
        clean,
        "sanitize_value is not idempotent"
    );

    let mut edits = EditList::new();
    let added = edits.add_header(name, value);
    let inserted = edits.insert_header(0, name, value);
    assert_eq!(added.is_ok(), valid_header_name(name));
    assert_eq!(inserted.is_ok(), valid_header_name(name));
    for edit in edits.edits() {
        if let Edit::AddHeader { name: n, value: v }
        | Edit::InsertHeader {
            name: n, value: v, ..
        } = edit
        {
            assert!(valid_header_name(n));
            assert_eq!(v, &clean);
        }
    }

    if valid_header_name(name) {
        for leading_space in [false, true] {
            let folded = wire_header_value(name, &clean, leading_space);
            assert_folded_well(name, &clean, &folded, leading_space);
        }
    }

    // A received value: once unfolded, no fold is left, as long as the
    // line breaks in it are single (two in a row end the header block, so
    // the MTA never passes them).
    let unfolded = unfold(value);
    assert!(unfolded.len() <= value.len());
    let breaks = |b: &u8| matches!(b, b'\r' | b'\n');
    let single_breaks = !value
        .replace("\r\n", "\n")
        .as_bytes()
        .windows(2)
        .any(|w| breaks(&w[0]) && breaks(&w[1]));
    if single_breaks {
        let folds = unfolded
            .as_bytes()
            .windows(2)
            .any(|w| matches!(w[0], b'\r' | b'\n') && matches!(w[1], b' ' | b'\t'));
        assert!(!folds, "unfold({value:?}) = {unfolded:?} keeps a fold");
    }
}

/// A From: value, read by both of its readers: `authorize_sender`'s (every
/// address in it) and DMARC's (mail-auth's parser, then the author domain
/// and the DNS names of its policy tree walk, at most eight).
pub fn from_header(data: &[u8]) {
    let value = text(data);
    if let Some(addresses) = from_addresses(&value) {
        for a in &addresses {
            assert!(!a.is_null(), "{value:?} gave the null address");
            assert_canonical(a, &value);
        }
    }
    let head = header_block(&[Header::new("From", value)]);
    if let Some(parsed) = AuthenticatedMessage::parse_with_opts(&head, None, false) {
        for from in &parsed.from {
            let Some((_, domain)) = from.rsplit_once('@') else {
                continue;
            };
            let Some(domain) = canonical(domain.trim()) else {
                continue;
            };
            let walk = walk_domains(&domain);
            assert!((1..=8).contains(&walk.len()), "{domain:?}: {walk:?}");
            for name in walk {
                assert_dns_name(&format!("_dmarc.{name}."), &domain);
            }
        }
    }
}

/// A name we would send a query for: labels of 1 to 63 letters, digits,
/// `-` or `_`, ending with the root dot.
fn assert_dns_name(name: &str, from: &str) {
    let labels = name
        .strip_suffix('.')
        .unwrap_or_else(|| panic!("{name:?} (from {from:?}) is not absolute"));
    for label in labels.split('.') {
        assert!(
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{name:?} (from {from:?}) has the label {label:?}"
        );
    }
}

/// Tag lists from DNS (DKIM keys, SPF and DMARC records) and from headers
/// (DKIM-Signature, ARC-Seal, ARC-Message-Signature,
/// ARC-Authentication-Results), parsed by mail-auth as our checks call it,
/// and what we read of them ourselves: SPF records and macro strings and a
/// DMARC record (our own parsers), and the key name a signature makes us
/// look up.
pub fn auth_records(data: &[u8]) {
    let _ = mail_auth::common::verify::DomainKey::parse(data);
    // SPF records and explanations go through our own parser (the `spf`
    // check no longer uses mail-auth's).
    let spf_text = String::from_utf8_lossy(data);
    let _ = dispatch_milter::auth::spf::record::parse_record(&spf_text);
    for context in [
        dispatch_milter::auth::spf::record::Context::DomainSpec,
        dispatch_milter::auth::spf::record::Context::Explanation,
    ] {
        let _ = dispatch_milter::auth::spf::record::parse_macro_string(&spf_text, context);
    }
    if let Ok(sig) = mail_auth::dkim::Signature::parse(data) {
        let name = domain_key_name(&sig.s, &sig.d);
        assert!(name.ends_with("."), "{name:?}");
    }
    if let Ok(sig) = mail_auth::arc::Signature::parse(data) {
        let _ = domain_key_name(&sig.s, &sig.d);
    }
    if let Ok(seal) = mail_auth::arc::Seal::parse(data) {
        let _ = domain_key_name(&seal.s, &seal.d);
    }
    let _ = mail_auth::arc::Results::parse(data);
    let record = text(data);
    if let Some(parsed) = Record::parse(&record) {
        if let Some(pct) = parsed.pct {
            assert!(pct <= 100, "pct={pct} from {record:?}");
        }
        // Unusable only for an invalid policy tag without a valid rua
        // (RFC 9989 §4.10.1).
        let invalid = [parsed.p, parsed.sp, parsed.np].contains(&PolicyTag::Invalid);
        assert_eq!(
            parsed.policies().is_none(),
            invalid && !parsed.valid_rua,
            "{record:?}"
        );
    }
}

/// DKIM signing keys (`dkim_sign` key files, `dkim-record`): our own PEM
/// and DER reading before ring's. The first byte chooses: the rest as PEM
/// text, or the rest as DER in a PEM armour of one of the labels we read.
pub fn dkim_key(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let pem = match choice % 4 {
        0 => text(rest),
        1 => armour("RSA PRIVATE KEY", rest),
        2 => armour("PRIVATE KEY", rest),
        _ => armour("EC PRIVATE KEY", rest),
    };
    if let Ok(key) = LoadedKey::from_pem(&pem) {
        let txt = key.txt_record();
        assert!(txt.starts_with("v=DKIM1; k="), "{txt:?}");
        let line = key.zone_record("sel");
        for (i, string) in line.split('"').enumerate() {
            if i % 2 == 1 {
                assert!(
                    string.len() <= 255,
                    "a TXT string of {} bytes",
                    string.len()
                );
            }
        }
    }
    if valid_selector(&pem) {
        assert!(!pem.contains(['"', ' ', '\n', ';']));
    }
}

/// DER bytes in PEM armour, base64 in lines of 64 (RFC 7468).
pub fn armour(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A whole message: our reader of message files (`test`), the bytes DKIM
/// and ARC are computed on, mail-auth's message parser, and the header
/// edit model driven by the body bytes.
pub fn message(data: &[u8]) {
    let (pairs, body) = parse_message(data);
    let headers: Vec<Header> = pairs
        .iter()
        .map(|(name, value)| Header::new(name.clone(), value.clone()))
        .collect();
    let mut chunks = Body::default();
    let (first, second) = body.split_at(body.len() / 2);
    chunks.push(bytes::Bytes::copy_from_slice(first));
    chunks.push(bytes::Bytes::copy_from_slice(second));
    assert_eq!(chunks.to_vec(), body);

    // What DKIM hashes has CRLF line ends only.
    let head = header_block(&headers);
    for (i, b) in head.iter().enumerate() {
        if *b == b'\n' {
            assert!(i > 0 && head[i - 1] == b'\r', "bare LF in {head:?}");
        }
    }
    let raw = message_bytes(&headers, &chunks);
    assert!(raw.starts_with(&head));

    // Read back, the rebuilt message has the same headers and body (lone
    // CRs aside, which the reader's CRLF handling cannot keep).
    if !data.contains(&b'\r') {
        let (again, again_body) = parse_message(&raw);
        assert_eq!(again, pairs, "headers change when read back");
        assert_eq!(again_body, body, "body changes when read back");
    }

    for strict in [false, true] {
        if let Some(parsed) = AuthenticatedMessage::parse_with_opts(&raw, None, strict) {
            for h in &parsed.dkim_headers {
                let _ = domain_key_name(&h.header.s, &h.header.d);
            }
        }
    }

    edit_model(&headers, &body);
}

/// Header edits over the received `headers`, chosen by `program` two bytes
/// at a time: the model must never panic, and deletions go highest index
/// first.
fn edit_model(headers: &[Header], program: &[u8]) {
    let mut names: Vec<&str> = headers.iter().map(|h| h.name()).collect();
    names.extend(["X-Fuzz", "Authentication-Results"]);
    let mut list = EditList::new();
    for step in program.chunks_exact(2).take(64) {
        let (op, arg) = (step[0], step[1]);
        let name = names[usize::from(arg) % names.len()];
        let index = u32::from(arg >> 2);
        match op % 5 {
            0 => {
                let _ = list.add_header(name, "ours");
            }
            1 => {
                let _ = list.insert_header(index, name, "ours");
            }
            2 => {
                let before = list.edits().len();
                list.delete_headers_where(name, headers, |v| v.len() % 2 == usize::from(arg & 1));
                let new: Vec<u32> = list.edits()[before..]
                    .iter()
                    .map(|e| match e {
                        Edit::DeleteHeader { index, .. } => *index,
                        other => panic!("delete_headers_where pushed {other:?}"),
                    })
                    .collect();
                assert!(
                    new.windows(2).all(|w| w[0] > w[1]) && new.iter().all(|i| *i >= 1),
                    "deletions not highest first: {new:?}"
                );
            }
            3 => list.push(Edit::ChangeHeader {
                name: name.to_string(),
                index,
                value: if arg & 1 == 0 {
                    String::new()
                } else {
                    "changed".into()
                },
            }),
            _ => list.push(Edit::DeleteHeader {
                name: name.to_string(),
                index,
            }),
        }
    }
    let result = list.resulting_headers(headers);
    assert!(result.len() <= headers.len() + list.edits().len());
}

/// The policy the engine target runs: every check and modifier kind that
/// needs no DNS and no external program, and the dispatch outcomes.
/// `KEY` is replaced by the path of an Ed25519 key.
pub const ENGINE_POLICY: &str = r#"
[tables.users]
type = "inline"
entries = { alice = ["alice@example.org", "@example.net"], bob = ["*@example.com"] }

[checks.size]
kind = "size"
max_size = "64k"

[checks.spam_flag]
kind = "header"
header = "X-Spam-Flag"
pattern = "(?i)^\\s*yes"
on_fail = "score 6"

[checks.no_date]
kind = "header"
header = "Date"
missing = "softfail"
on_softfail = "score 2"

[checks.auth]
kind = "require_auth"

[checks.tls]
kind = "require_tls"

[checks.sender_allowed]
kind = "authorize_sender"
table = "users"

[modifiers.plus]
kind = "strip_plus"
separator = "+-"
sender = true

[modifiers.aliases]
kind = "alias"
table = { "sales@example.org" = ["alice@example.org", "bob@example.org", "sales@example.org"], "team.example" = ["@example.org"] }

[modifiers.rcpt_rewrite]
kind = "rewrite_rcpt"
pattern = '^(.+)@old\.example$'
replacement = '$1@example.org'

[modifiers.sender_rewrite]
kind = "rewrite_sender"
table = { "example.net" = ["@example.org"] }

[modifiers.tag]
kind = "add_header"
name = "X-Dispatch-Source"
value = "from {sender} to {recipients} via {client_ip} ({helo}) user {auth_user} queue {queue_id} in {pipeline}"

[modifiers.top]
kind = "add_header"
name = "X-Top"
position = "top"
value = "{helo}"

[modifiers.strip]
kind = "remove_header"
name = "X-Internal"
pattern = "(?i)secret"

[modifiers.strip_all]
kind = "remove_header"
name = "X-Remove"

[modifiers.sign]
kind = "dkim_sign"
keys = [{ domain = "example.org", selector = "ed", key = "KEY" }]

[pipelines.mx]
authserv_id = "mx.example.org"
quarantine_score = 5
reject_score = 10
max_body_size = "4k"
max_headers = 64
max_header_bytes = "16k"
checks = ["size", "spam_flag", "no_date"]
modify = ["plus", "rcpt_rewrite", "strip", "strip_all", "tag", "top", "sign"]

[[pipelines.mx.destination]]
match = ["sales@example.org", "team.example"]
modify = ["aliases"]
copy = ["archive@example.org"]

[[pipelines.mx.destination]]
match = ["example.org"]

[[pipelines.mx.destination]]
match = ["hold.example"]
action = "quarantine"
reason = "held for review"

[[pipelines.mx.destination]]
match = ["void.example"]
action = "discard"

[[pipelines.mx.destination]]
match = ["moved@example.org"]
redirect = "new@example.org"

[[pipelines.mx.source]]
match = ["<>"]
[pipelines.mx.source.default]
action = "tempfail"

[pipelines.mx.default]
action = "reject"

[pipelines.dry]
authserv_id = "dry.example.org"
dry_run = true
max_body_size = "1k"
oversize_action = "reject"
checks = ["size", "spam_flag", "auth"]
modify = ["plus", "aliases", "strip", "tag", "sign"]

[[pipelines.dry.destination]]
match = ["example.org", "team.example"]

[pipelines.dry.default]
action = "reject"

[pipelines.submission]
split_transactions = true
refuse_at_eom = true
header_limit_action = "tempfail"
max_headers = 8
checks = ["tls", "auth", "sender_allowed"]
modify = ["sender_rewrite", "rcpt_rewrite", "top", "sign"]

[[pipelines.submission.destination]]
match = ["example.org"]

[[pipelines.submission.destination]]
match = ["hold.example"]
action = "quarantine"
reason = "outbound hold"

[pipelines.submission.default]
copy = ["outbound-archive@example.org"]
"#;

/// A test key of this repository (tests/keys/README.md): it signs nothing
/// that matters.
const ED25519_KEY: &str = include_str!("../../tests/keys/ed25519.pem");

/// The compiled engine policy, built once per process. The key file is
/// written where only we can read it, as `dkim_sign` demands.
pub fn engine_policy() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            use std::os::unix::fs::PermissionsExt;
            let dir = std::env::temp_dir().join(format!("dispatch-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("key directory");
            let key = dir.join("ed25519.pem");
            std::fs::write(&key, ED25519_KEY).expect("key file");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("key mode");
            let source = ENGINE_POLICY.replace("KEY", &key.display().to_string());
            let policy = compile_str(&dir.join("fuzz.toml"), &source, &Registry::builtin())
                .unwrap_or_else(|e| panic!("the engine policy compiles:\n{e}"));
            let _ = std::fs::remove_dir_all(&dir);
            Arc::new(policy)
        })
        .clone()
}

/// One SMTP transaction as the engine target reads it, one item a line:
/// `PIPELINE [tls]`, the HELO name, the MAIL FROM address with ESMTP
/// arguments after tabs, the SASL user (empty: none), then RCPT TO lines
/// (address, tab, arguments) up to an empty line; the rest is the message,
/// as `dispatch-milter test` reads a message file.
pub struct Transaction {
    pub pipeline: String,
    pub tls: bool,
    pub helo: String,
    pub mail: Vec<String>,
    pub auth: Option<String>,
    pub rcpts: Vec<Vec<String>>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Transaction {
    pub fn parse(data: &[u8]) -> Transaction {
        let mut rest = data;
        let mut line = || {
            let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let l = text(&rest[..end]);
            rest = rest.get(end + 1..).unwrap_or_default();
            l
        };
        let first = line();
        let mut words = first.split(' ');
        let pipeline = words.next().unwrap_or_default().to_string();
        let tls = words.any(|w| w == "tls");
        let helo = line();
        let mail = line().split('\t').map(str::to_string).collect();
        let auth = Some(line()).filter(|u| !u.is_empty());
        let mut rcpts = Vec::new();
        loop {
            let l = line();
            if l.is_empty() {
                break;
            }
            rcpts.push(l.split('\t').map(str::to_string).collect());
        }
        let (headers, body) = parse_message(rest);
        Transaction {
            pipeline,
            tls,
            helo,
            mail,
            auth,
            rcpts,
            headers,
            body,
        }
    }
}

/// What one run of the engine gave, for comparing two runs.
#[derive(Debug, PartialEq)]
struct Run {
    replies: Vec<StageReply>,
    verdict: Option<Verdict>,
    /// The edits, DKIM-Signature values left out (they hold the time).
    edits: Vec<String>,
}

thread_local! {
    /// One runtime per thread: the fuzzer has one thread, the test replay
    /// several.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
}

fn assert_reply(reply: &StageReply) {
    match reply {
        StageReply::Continue => {}
        StageReply::Reject(r) => assert!((500..600).contains(&r.code), "reject with {r:?}"),
        StageReply::Tempfail(r) => assert!((400..500).contains(&r.code), "tempfail with {r:?}"),
    }
    if let StageReply::Reject(r) | StageReply::Tempfail(r) = reply {
        assert!(!r.text.contains(['\r', '\n', '\0']), "reply text {r:?}");
    }
}

/// Text sent to the MTA in an edit: one line, no NUL.
fn assert_one_line(what: &str, s: &str) {
    assert!(
        !s.contains(['\r', '\n', '\0']),
        "{what} {s:?} is not one line"
    );
}

async fn run_engine(t: &Transaction) -> Run {
    use dispatch_milter::engine::Session;
    let policy = engine_policy();
    let index = policy.pipeline_index(&t.pipeline).unwrap_or(0);
    let dry_run = policy.pipelines[index].settings.dry_run;
    let facts = ConnectionFacts {
        client_ip: "192.0.2.10".parse().ok(),
        client_name: Some("client.example.net".into()),
        ..ConnectionFacts::default()
    };
    let mut session = Session::new(policy.clone(), index, facts);
    let mut replies = vec![session.connect().await];
    let tls = t.tls.then(|| TlsInfo {
        version: "TLSv1.3".into(),
        cipher: None,
    });
    replies.push(session.helo(&t.helo, tls).await);
    let auth = t.auth.as_ref().map(|user| AuthInfo {
        user: user.clone(),
        mechanism: Some("PLAIN".into()),
    });
    let sender = t.mail.first().cloned().unwrap_or_default();
    let mail = session.mail(&sender, &t.mail[1..], auth).await;
    let go_on = mail.is_continue();
    replies.push(mail);
    if !go_on {
        replies.iter().for_each(assert_reply);
        return Run {
            replies,
            verdict: None,
            edits: Vec::new(),
        };
    }
    let mut accepted = Vec::new();
    for rcpt in &t.rcpts {
        let reply = session.rcpt(&rcpt[0], &rcpt[1..]).await;
        if reply.is_continue()
            && let Ok(a) = Address::parse(&rcpt[0])
        {
            accepted.push(a.original().to_string());
        }
        replies.push(reply);
    }
    replies.iter().for_each(assert_reply);
    if accepted.is_empty() {
        return Run {
            replies,
            verdict: None,
            edits: Vec::new(),
        };
    }
    session.set_queue_id(Some("FUZZQ1"));
    for (name, value) in &t.headers {
        session.header(name, value);
    }
    let (first, second) = t.body.split_at(t.body.len() / 2);
    session.body(bytes::Bytes::copy_from_slice(first));
    session.body(bytes::Bytes::copy_from_slice(second));
    let outcome = session.eom().await;

    let verdict = outcome.decision.verdict();
    if let Some(r) = outcome.decision.reply() {
        assert_one_line("reply text", &r.text);
    }
    if dry_run {
        assert_eq!(verdict, Verdict::Accept, "a dry run refused: {outcome:?}");
    }
    if matches!(
        verdict,
        Verdict::Reject | Verdict::Tempfail | Verdict::Discard
    ) {
        assert!(
            outcome.edits.is_empty(),
            "{verdict} with edits {:?}",
            outcome.edits
        );
    }
    let mut edits = Vec::new();
    for edit in &outcome.edits {
        assert!(
            !(dry_run && edit.changes_delivery()),
            "a dry run changes delivery: {edit:?}"
        );
        match edit {
            Edit::AddHeader { name, value }
            | Edit::InsertHeader { name, value, .. }
            | Edit::ChangeHeader { name, value, .. } => {
                assert!(valid_header_name(name), "edit with header name {name:?}");
                assert_one_line("header value", value);
                let folded = wire_header_value(name, value, true);
                assert_folded_well(name, value, &folded, true);
            }
            Edit::DeleteHeader { name, index } => {
                assert!(valid_header_name(name), "edit with header name {name:?}");
                assert!(*index >= 1, "delete of header index 0");
            }
            Edit::AddRecipient { address, args } | Edit::ChangeSender { address, args } => {
                assert_one_line("address", address);
                if let Some(args) = args {
                    assert_one_line("ESMTP arguments", args);
                }
                if let Err(e) = Address::parse(address) {
                    panic!("{edit:?} sends an address the MTA cannot read: {e}");
                }
            }
            Edit::DeleteRecipient { address } => {
                assert!(
                    accepted.contains(address),
                    "deletes {address:?}, which is no accepted recipient {accepted:?}"
                );
            }
            Edit::Quarantine { reason } => assert_one_line("quarantine reason", reason),
        }
        edits.push(match edit {
            Edit::AddHeader { name, .. } | Edit::InsertHeader { name, .. }
                if name.eq_ignore_ascii_case("DKIM-Signature") =>
            {
                format!("{} {name}", edit.kind())
            }
            other => format!("{other:?}"),
        });
    }
    Run {
        replies,
        verdict: Some(verdict),
        edits,
    }
}

/// The engine end to end, as the milter adapter drives it: no panic, every
/// reply fits its class, every edit can go to the MTA as it is, and the
/// same transaction gives the same answers twice.
pub fn engine(data: &[u8]) {
    let t = Transaction::parse(data);
    let (first, second) =
        RUNTIME.with(|rt| (rt.block_on(run_engine(&t)), rt.block_on(run_engine(&t))));
    assert_eq!(first, second, "the same transaction gave other answers");
}

/// The frames and commands of the milter wire codec, from bytes as the MTA
/// would send them. The first byte sets the size of the pieces the stream
/// arrives in (1 to 256 bytes), the second the reader's limit (the default,
/// or a small one so that refusals are reached); the rest is the stream.
/// Asserts: the buffer never holds more than the limit and its length
/// field; the same frames come out of the stream whole and in pieces; every
/// parsed command says its own letter; macro lookups find every name the
/// iterator shows; a reply built from the frame's payload either encodes to
/// frames that read back with its letter, or leaves the buffer untouched.
pub fn milter_wire(data: &[u8]) {
    let [piece, limit, stream @ ..] = data else {
        return;
    };
    let piece = 1 + usize::from(*piece);
    let limit = if limit % 2 == 0 {
        milter::DEFAULT_FRAME_LIMIT
    } else {
        16 + 8 * usize::from(*limit)
    };
    let whole = milter_frames(stream, stream.len().max(1), limit);
    let split = milter_frames(stream, piece, limit);
    assert_eq!(
        whole, split,
        "the stream read otherwise in pieces of {piece}"
    );
}

/// Each frame read from `stream` fed `piece` bytes at a time, as (letter,
/// payload), then the error that ended it, if any.
fn milter_frames(
    stream: &[u8],
    piece: usize,
    limit: usize,
) -> (Vec<(u8, Vec<u8>)>, Option<String>) {
    let mut reader = milter::FrameReader::with_limit(limit);
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            };
            assert!(frame.payload.len() < limit, "a frame past the limit");
            milter_command(frame);
            frames.push((frame.code, frame.payload.to_vec()));
        }
        assert!(
            reader.capacity() <= 4 + limit,
            "the buffer grew past the limit"
        );
        if rest.is_empty() {
            return (frames, reader.finish().err().map(|e| e.to_string()));
        }
        let took = reader.push(&rest[..piece.min(rest.len())]);
        assert!(took > 0, "no room although every frame was taken");
        rest = &rest[took..];
    }
}

fn milter_command(frame: milter::Frame<'_>) {
    use milter::{Command, Reply};
    if let Ok(command) = Command::parse(frame) {
        assert_eq!(command.code(), frame.code);
        match command {
            Command::Macros(m) => {
                for (name, _) in m.iter() {
                    assert!(m.get(name).is_some(), "macro {name:?} not found");
                }
            }
            Command::Connect(c) => {
                let _ = c.address.ip();
            }
            Command::Mail(a) | Command::Rcpt(a) => {
                assert!(a.esmtp().all(|arg| !arg.contains(&0)));
            }
            _ => {}
        }
    }
    // The payload, cut at its first NUL, as a reply's strings.
    let (first, second) = match frame.payload.iter().position(|&b| b == 0) {
        Some(at) => (&frame.payload[..at], &frame.payload[at + 1..]),
        None => (frame.payload, &b""[..]),
    };
    let lines = [second];
    for reply in [
        Reply::AddHeader {
            name: first,
            value: second,
        },
        Reply::ChangeHeader {
            index: u32::from(frame.code) << 24,
            name: first,
            value: second,
        },
        Reply::AddRcptWithArgs {
            rcpt: first,
            args: Some(second),
        },
        Reply::Quarantine { reason: second },
        Reply::ReplaceBody(frame.payload),
        Reply::ReplyCode(milter::SmtpReply {
            code: 400 + u16::from(frame.code),
            status: std::str::from_utf8(first).unwrap_or("4.0.0"),
            lines: &lines,
        }),
    ] {
        let mut out = b"before".to_vec();
        match reply.encode(&mut out) {
            Ok(()) => {
                let mut reader = milter::FrameReader::with_limit(milter::MAX_REPLY_DATA + 1);
                let mut rest = &out[6..];
                let mut count = 0;
                while !rest.is_empty() {
                    rest = &rest[reader.push(rest)..];
                    while let Some(f) = reader.next_frame().expect("our own frames read back") {
                        assert_eq!(f.code, reply.code());
                        count += 1;
                    }
                }
                assert!(count >= 1 && reader.finish().is_ok());
            }
            Err(_) => assert_eq!(out, b"before", "a refused reply left bytes"),
        }
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for the regression replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("address", address),
    ("auth_records", auth_records),
    ("auth_results", auth_results),
    ("config", config),
    ("dkim_key", dkim_key),
    ("engine", engine),
    ("from_header", from_header),
    ("header_value", header_value),
    ("map_file", map_file),
    ("message", message),
    ("milter_wire", milter_wire),
];
