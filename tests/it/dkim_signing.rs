//! DKIM signing (`dkim_sign`) and ARC sealing (`arc_seal`) through the real
//! engine. Each signed message is rebuilt as the MTA will deliver it (the
//! edit list applied to the headers as received, with
//! `EditList::resulting_headers`) and then verified by the project's own
//! `dkim` and `arc` checks against the loopback DNS server
//! (tests/common/dns_server.rs), which publishes the records that
//! `dkim-record` prints for the keys of tests/keys/.

use crate::common;

use common::dns_server::DnsServer;
use common::{Mail, QUICK_DNS, check_result, inserted, run_to_eom};
use dispatch_milter::config::{ConfigErrors, Registry, compile_str};
use dispatch_milter::daemon::adapter::wire_header_value;
use dispatch_milter::edits::{Edit, EditList};
use dispatch_milter::engine::{MessageOutcome, Verdict};
use dispatch_milter::message::Header;
use dispatch_milter::modifiers::dkim_sign::LoadedKey;
use dispatch_milter::policy::Policy;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

/// A configuration directory holding copies of the test keys, private to
/// their owner (git checks files out world-readable, which the loader
/// refuses).
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(keys_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "pem") {
            let to = dir.path().join(path.file_name().unwrap());
            std::fs::copy(&path, &to).unwrap();
            chmod(&to, 0o600);
        }
    }
    dir
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn try_policy(dir: &Path, server: Option<&DnsServer>, body: &str) -> Result<Policy, ConfigErrors> {
    let registry = server.map_or_else(Registry::builtin, common::resolving_registry);
    let src = format!("{QUICK_DNS}\n{body}");
    compile_str(&dir.join("milter.toml"), &src, &registry)
}

fn policy(dir: &Path, server: &DnsServer, body: &str) -> Arc<Policy> {
    match try_policy(dir, Some(server), body) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("config should compile:\n{e}\n{body}"),
    }
}

fn config_errors(dir: &Path, body: &str) -> String {
    match try_policy(dir, None, body) {
        Ok(_) => panic!("config should not compile:\n{body}"),
        Err(e) => e.to_string(),
    }
}

/// Publish `key_file`'s record at `selector._domainkey.domain` as the
/// strings of the zone line `dkim-record` prints. (The test server's zone
/// parser, hickory-proto's, does not take quoted strings inside `( )`, which
/// BIND and NSD do, so the strings are handed over one by one.)
fn publish(server: &DnsServer, domain: &str, selector: &str, key_file: &str) {
    let pem = std::fs::read_to_string(keys_dir().join(key_file)).unwrap();
    let key = LoadedKey::from_pem(&pem).unwrap();
    let line = key.zone_record(selector);
    assert!(line.starts_with(&format!("{selector}._domainkey IN TXT ( \"")));
    let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
    assert!(strings.iter().all(|s| s.len() <= 255), "{line}");
    server.add_zone(domain);
    server.add_txt_strings(&format!("{selector}._domainkey.{domain}"), &strings);
}

async fn dns() -> DnsServer {
    let server = DnsServer::start().await;
    publish(&server, "example.org", "rsa", "rsa2048-pkcs1.pem");
    publish(&server, "example.org", "ed", "ed25519.pem");
    publish(&server, "example.net", "s2026", "rsa2048-pkcs8.pem");
    publish(&server, "lists.example.org", "lists", "rsa2048-pkcs8.pem");
    publish(&server, "forward.example", "arc", "rsa2048-pkcs8.pem");
    publish(&server, "relay.example", "arced", "ed25519.pem");
    server
}

/// A message from `author` (the From header), sent with `sender` at MAIL
/// FROM.
fn message(sender: &str, author: &str) -> Mail {
    let mut m = Mail::new(sender, &["bob@rcpt.test"]);
    m.headers = vec![
        ("From".into(), format!("Alice <{author}>")),
        ("To".into(), "Bob <bob@rcpt.test>".into()),
        ("Subject".into(), "quarterly  report\r\n\tfolded".into()),
        ("Date".into(), "Mon, 2 Mar 2026 10:00:00 +0000".into()),
        ("Message-ID".into(), "<1@example.org>".into()),
        ("X-Secret".into(), "internal".into()),
    ];
    m.body = "Hello Bob,\r\n\r\nthe  report.\r\n\r\n\r\n".into();
    m
}

struct Delivered {
    outcome: MessageOutcome,
    /// The message as the MTA delivers it.
    mail: Mail,
}

fn apply(edits: &[Edit], mail: &Mail) -> Mail {
    let mut list = EditList::new();
    for e in edits {
        list.push(e.clone());
    }
    let original: Vec<Header> = mail
        .headers
        .iter()
        .map(|(name, value)| Header::new(name.clone(), value.clone()))
        .collect();
    let mut out = mail.clone();
    out.headers = list
        .resulting_headers(&original)
        .into_iter()
        .map(|h| (h.name().to_string(), h.value().to_string()))
        .collect();
    out
}

async fn deliver(policy: &Arc<Policy>, pipeline: &str, mail: &Mail) -> Delivered {
    let outcome = run_to_eom(policy, pipeline, mail).await;
    let delivered = apply(&outcome.edits, mail);
    Delivered {
        outcome,
        mail: delivered,
    }
}

/// The message as the MTA writes it: the headers the edits added folded
/// by the daemon (LF before a space past 78 characters), the LF made CRLF.
fn as_written(outcome: &MessageOutcome, mail: &Mail) -> Mail {
    let added: Vec<&str> = outcome
        .edits
        .iter()
        .filter_map(|e| match e {
            Edit::InsertHeader { name, .. } | Edit::AddHeader { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut out = mail.clone();
    for (name, value) in &mut out.headers {
        // Headers of an earlier hop are already folded.
        if added.contains(&name.as_str()) && !value.contains('\n') {
            let folded = wire_header_value(name, value, false);
            assert!(folded.contains('\n') || folded.len() < 70, "{folded}");
            *value = folded.replace('\n', "\r\n");
        }
    }
    out
}

fn values<'m>(mail: &'m Mail, header: &str) -> Vec<&'m str> {
    mail.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(header))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A tag of a DKIM-Signature or ARC value, white space removed.
fn tag(value: &str, name: &str) -> Option<String> {
    value.split(';').find_map(|t| {
        let (k, v) = t.split_once('=')?;
        (k.trim() == name).then(|| v.split_whitespace().collect())
    })
}

const VERIFY: &str = r#"
[checks.dkim]
kind = "dkim"
on_fail = "ignore"
[checks.arc]
kind = "arc"
on_fail = "ignore"
[pipelines.in]
authserv_id = "mx.test"
checks = ["dkim", "arc"]
"#;

/// The `dkim=` fragments the receiving side reports for `mail`, as
/// "RESULT d S", sorted.
async fn dkim_verdicts(dir: &Path, server: &DnsServer, mail: &Mail) -> Vec<String> {
    let p = policy(dir, server, VERIFY);
    let d = deliver(&p, "in", mail).await;
    let ar = inserted(&d.outcome, "Authentication-Results");
    assert_eq!(ar.len(), 1, "{ar:?}");
    let mut out: Vec<String> = ar[0]
        .split("; ")
        .filter_map(|f| {
            let rest = f.strip_prefix("dkim=")?;
            let mut words = rest.split(' ');
            let result = words.next()?;
            let d = words.find_map(|w| w.strip_prefix("header.d="))?;
            let s = rest.split(' ').find_map(|w| w.strip_prefix("header.s="))?;
            Some(format!("{result} {d} {s}"))
        })
        .collect();
    out.sort();
    out
}

/// The `arc` check's (result, reason) for `mail` on the receiving side.
async fn arc_verdict(dir: &Path, server: &DnsServer, mail: &Mail) -> (String, String) {
    let p = policy(dir, server, VERIFY);
    check_result(&deliver(&p, "in", mail).await.outcome, "arc")
}

const TWO_ALGORITHMS: &str = r#"
[modifiers.sign]
kind = "dkim_sign"
keys = [
  { domain = "example.org", selector = "rsa", key = "rsa2048-pkcs1.pem" },
  { domain = "example.org", selector = "ed", key = "ed25519.pem" },
]
[pipelines.out]
modify = ["sign"]
"#;

#[tokio::test]
async fn rsa_and_ed25519_signatures_verify_with_the_dkim_check() {
    let server = dns().await;
    let dir = config_dir();
    let p = policy(dir.path(), &server, TWO_ALGORITHMS);
    let d = deliver(
        &p,
        "out",
        &message("alice@example.org", "alice@example.org"),
    )
    .await;
    assert_eq!(d.outcome.decision.verdict(), Verdict::Accept);

    // Both at the top, the later key above the earlier.
    assert!(
        d.outcome.edits.iter().all(
            |e| matches!(e, Edit::InsertHeader { index: 0, name, .. } if name == "DKIM-Signature")
        ),
        "{:?}",
        d.outcome.edits
    );
    let sigs = values(&d.mail, "DKIM-Signature");
    assert_eq!(sigs.len(), 2);
    assert_eq!(d.mail.headers[0].0, "DKIM-Signature");
    assert_eq!(d.mail.headers[1].0, "DKIM-Signature");
    let (ed, rsa) = (sigs[0], sigs[1]);
    assert_eq!(tag(ed, "a").as_deref(), Some("ed25519-sha256"));
    assert_eq!(tag(ed, "s").as_deref(), Some("ed"));
    assert_eq!(tag(rsa, "a").as_deref(), Some("rsa-sha256"));
    assert_eq!(tag(rsa, "d").as_deref(), Some("example.org"));
    assert_eq!(tag(rsa, "c").as_deref(), Some("relaxed/relaxed"));
    // One line each: the daemon folds when it sends.
    assert!(!rsa.contains(['\r', '\n', '\t']), "{rsa}");
    // The default headers that are present, From once more (oversigned);
    // absent ones are not listed.
    let h = tag(rsa, "h").unwrap().to_ascii_lowercase();
    let mut names: Vec<&str> = h.split(':').collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["date", "from", "from", "message-id", "subject", "to"],
        "{h}"
    );
    assert_eq!(tag(rsa, "x"), None);

    assert_eq!(
        dkim_verdicts(dir.path(), &server, &d.mail).await,
        ["pass example.org ed", "pass example.org rsa"]
    );

    // Folded as the daemon sends them, they still verify.
    let written = as_written(&d.outcome, &d.mail);
    assert!(values(&written, "DKIM-Signature")[0].contains("\r\n "));
    assert_eq!(
        dkim_verdicts(dir.path(), &server, &written).await,
        ["pass example.org ed", "pass example.org rsa"]
    );

    // The verification is real: a changed body fails both.
    let mut tampered = d.mail.clone();
    tampered.body.push_str("P.S. send money\r\n");
    assert_eq!(
        dkim_verdicts(dir.path(), &server, &tampered).await,
        ["fail example.org ed", "fail example.org rsa"]
    );
}

/// Header modifiers listed before and after the signer: the signer runs
/// last either way.
fn edits_policy(order: &str) -> String {
    format!(
        r#"
[modifiers.tag]
kind = "add_header"
name = "X-Added"
value = "via {{pipeline}}"
[modifiers.top]
kind = "add_header"
name = "X-Top"
value = "first"
position = "top"
[modifiers.strip]
kind = "remove_header"
name = "X-Secret"
[modifiers.sign]
kind = "dkim_sign"
keys = [{{ domain = "example.org", selector = "rsa", key = "rsa2048-pkcs1.pem" }}]
headers = ["From", "To", "Subject", "X-Added", "X-Top", "X-Secret"]
oversign = ["From", "X-Secret"]
expire = "7d"
canonicalization = "relaxed/simple"
[pipelines.out]
modify = [{order}]
"#
    )
}

#[tokio::test]
async fn signatures_cover_the_headers_as_edited_before_signing() {
    let server = dns().await;
    let dir = config_dir();
    for order in [
        r#""tag", "top", "strip", "sign""#,
        r#""sign", "tag", "top", "strip""#,
    ] {
        let p = policy(dir.path(), &server, &edits_policy(order));
        let d = deliver(
            &p,
            "out",
            &message("alice@example.org", "alice@example.org"),
        )
        .await;
        let kinds: Vec<&str> = d.outcome.edits.iter().map(Edit::kind).collect();
        assert_eq!(
            kinds,
            [
                "add_header",
                "insert_header",
                "delete_header",
                "insert_header"
            ],
            "{order}: the signature comes last"
        );
        let names: Vec<&str> = d.mail.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "DKIM-Signature",
                "X-Top",
                "From",
                "To",
                "Subject",
                "Date",
                "Message-ID",
                "X-Added"
            ],
            "{order}"
        );
        let sig = values(&d.mail, "DKIM-Signature")[0];
        assert_eq!(
            tag(sig, "h").as_deref(),
            Some("X-Added:Subject:To:From:X-Top:From:X-Secret"),
            "{order}"
        );
        assert_eq!(tag(sig, "c").as_deref(), Some("relaxed/simple"));
        let t: u64 = tag(sig, "t").unwrap().parse().unwrap();
        let x: u64 = tag(sig, "x").unwrap().parse().unwrap();
        assert_eq!(x - t, 7 * 24 * 3600);

        assert_eq!(
            dkim_verdicts(dir.path(), &server, &d.mail).await,
            ["pass example.org rsa"],
            "{order}"
        );

        // Without the header the add_header added, the signature fails: it
        // was computed over the edited header block.
        let mut without = d.mail.clone();
        without.headers.retain(|(n, _)| n != "X-Added");
        assert_eq!(
            dkim_verdicts(dir.path(), &server, &without).await,
            ["fail example.org rsa"]
        );
        // The removed header is oversigned as absent: putting it back fails.
        let mut readded = d.mail.clone();
        readded.headers.push(("X-Secret".into(), "internal".into()));
        assert_eq!(
            dkim_verdicts(dir.path(), &server, &readded).await,
            ["fail example.org rsa"]
        );
    }
}

const DOMAINS: &str = r#"
[modifiers.sign]
kind = "dkim_sign"
keys = [
  { domain = "example.org", selector = "rsa", key = "rsa2048-pkcs1.pem" },
  { domain = "EXAMPLE.NET.", selector = "s2026", key = "rsa2048-pkcs8.pem" },
  { domain = "lists.example.org", selector = "lists", key = "rsa2048-pkcs8.pem" },
]
SUBDOMAINS
[pipelines.out]
modify = ["sign"]
"#;

async fn signer_of(p: &Arc<Policy>, sender: &str, author: &str) -> (Option<String>, Mail) {
    let d = deliver(p, "out", &message(sender, author)).await;
    assert_eq!(d.outcome.decision.verdict(), Verdict::Accept);
    let sigs = inserted(&d.outcome, "DKIM-Signature");
    assert!(sigs.len() <= 1, "{sigs:?}");
    let signer = sigs
        .first()
        .map(|s| format!("{} {}", tag(s, "d").unwrap(), tag(s, "s").unwrap()));
    (signer, d.mail)
}

#[tokio::test]
async fn each_domain_signs_with_its_own_key_and_others_are_not_signed() {
    let server = dns().await;
    let dir = config_dir();
    let p = policy(dir.path(), &server, &DOMAINS.replace("SUBDOMAINS", ""));

    let (signer, mail) = signer_of(&p, "alice@example.org", "alice@example.org").await;
    assert_eq!(signer.as_deref(), Some("example.org rsa"));
    assert_eq!(
        dkim_verdicts(dir.path(), &server, &mail).await,
        ["pass example.org rsa"]
    );

    // The From domain decides, not the envelope sender; case and a trailing
    // dot in the configuration do not matter.
    let (signer, mail) = signer_of(&p, "bounces@example.org", "carol@Example.NET").await;
    assert_eq!(signer.as_deref(), Some("example.net s2026"));
    assert_eq!(
        dkim_verdicts(dir.path(), &server, &mail).await,
        ["pass example.net s2026"]
    );

    // No key, no signature, and the mail goes on.
    assert_eq!(
        signer_of(&p, "dave@example.com", "dave@example.com")
            .await
            .0,
        None
    );
    // A subdomain without its own key is not signed by its parent's.
    assert_eq!(
        signer_of(&p, "eve@mail.example.org", "eve@mail.example.org")
            .await
            .0,
        None
    );
    let (signer, _) = signer_of(&p, "list@lists.example.org", "list@lists.example.org").await;
    assert_eq!(signer.as_deref(), Some("lists.example.org lists"));
}

#[tokio::test]
async fn parent_keys_sign_subdomains_only_when_configured() {
    let server = dns().await;
    let dir = config_dir();
    let p = policy(
        dir.path(),
        &server,
        &DOMAINS.replace("SUBDOMAINS", "subdomains = true"),
    );
    let (signer, mail) = signer_of(&p, "eve@mail.example.org", "eve@a.mail.example.org").await;
    assert_eq!(signer.as_deref(), Some("example.org rsa"));
    assert_eq!(
        dkim_verdicts(dir.path(), &server, &mail).await,
        ["pass example.org rsa"]
    );
    // A subdomain with keys of its own keeps them.
    let (signer, _) = signer_of(&p, "x@lists.example.org", "x@lists.example.org").await;
    assert_eq!(signer.as_deref(), Some("lists.example.org lists"));
    assert_eq!(
        signer_of(&p, "x@example.com", "x@example.com").await.0,
        None
    );
}

#[tokio::test]
async fn the_envelope_sender_domain_can_choose_the_key() {
    let server = dns().await;
    let dir = config_dir();
    let p = policy(
        dir.path(),
        &server,
        &DOMAINS.replace("SUBDOMAINS", "sign_domain = \"sender\""),
    );
    let (signer, mail) = signer_of(&p, "bounces@example.net", "alice@example.org").await;
    assert_eq!(signer.as_deref(), Some("example.net s2026"));
    assert_eq!(
        dkim_verdicts(dir.path(), &server, &mail).await,
        ["pass example.net s2026"]
    );
    assert_eq!(
        signer_of(&p, "x@example.com", "alice@example.org").await.0,
        None
    );
}

#[tokio::test]
async fn a_truncated_body_is_not_signed_but_tempfailed() {
    let server = dns().await;
    let dir = config_dir();
    let p = policy(
        dir.path(),
        &server,
        &TWO_ALGORITHMS.replace(
            "modify = [\"sign\"]",
            "modify = [\"sign\"]\nmax_body_size = 10\noversize_action = \"truncate\"",
        ),
    );
    let d = deliver(
        &p,
        "out",
        &message("alice@example.org", "alice@example.org"),
    )
    .await;
    assert_eq!(d.outcome.decision.verdict(), Verdict::Tempfail);
    assert!(d.outcome.edits.is_empty(), "{:?}", d.outcome.edits);
    let reason = d
        .outcome
        .decision
        .reason()
        .map(str::to_string)
        .unwrap_or_default();
    assert!(reason.contains("modifier \"sign\""), "{reason}");
    assert!(reason.contains("max_body_size"), "{reason}");

    // Mail the modifier would not sign goes on, unsigned.
    let d = deliver(&p, "out", &message("dave@example.com", "dave@example.com")).await;
    assert_eq!(d.outcome.decision.verdict(), Verdict::Accept);
    assert!(d.outcome.edits.is_empty(), "{:?}", d.outcome.edits);
}

#[tokio::test]
async fn bad_key_files_are_config_errors_naming_the_file() {
    let dir = config_dir();
    let conf = |key: &str| {
        format!(
            "[modifiers.sign]\nkind = \"dkim_sign\"\nkeys = [{{ domain = \"example.org\", selector = \"s\", key = \"{key}\" }}]\n[pipelines.out]\nmodify = [\"sign\"]\n"
        )
    };
    let file = |name: &str| dir.path().join(name).display().to_string();

    let e = config_errors(dir.path(), &conf("missing.pem"));
    assert!(
        e.contains(&format!(
            "milter.toml:7:8: key file \"{}\" of modifier \"sign\" cannot be read",
            file("missing.pem")
        )),
        "{e}"
    );

    std::fs::write(dir.path().join("garbage.pem"), "not a key\n").unwrap();
    chmod(&dir.path().join("garbage.pem"), 0o600);
    let e = config_errors(dir.path(), &conf("garbage.pem"));
    assert!(e.contains(&file("garbage.pem")), "{e}");
    assert!(e.contains("is not a PEM file"), "{e}");

    for (name, bits) in [("rsa512.pem", 512), ("rsa768.pem", 768)] {
        let e = config_errors(dir.path(), &conf(name));
        assert!(e.contains(&file(name)), "{e}");
        assert!(
            e.contains(&format!("RSA key of {bits} bits, too short")),
            "{e}"
        );
    }
    let e = config_errors(dir.path(), &conf("rsa1024.pem"));
    assert!(e.contains("2048 to 4096 bits"), "{e}");

    // Readable by everyone: an error, whatever the key.
    chmod(&dir.path().join("ed25519.pem"), 0o644);
    let e = config_errors(dir.path(), &conf("ed25519.pem"));
    assert!(e.contains(&file("ed25519.pem")), "{e}");
    assert!(e.contains("is readable by every user (mode 0644)"), "{e}");
    // Readable by the milter's own group: fine (that is how it reads it).
    chmod(&dir.path().join("ed25519.pem"), 0o640);
    try_policy(dir.path(), None, &conf("ed25519.pem")).unwrap();

    // Every bad entry of a block at once, the same key named twice read
    // once, and an absolute path as given.
    let e = config_errors(
        dir.path(),
        &format!(
            "[modifiers.sign]\nkind = \"dkim_sign\"\nkeys = [\n {{ domain = \"example.org\", selector = \"a\", key = \"rsa512.pem\" }},\n {{ domain = \"example.net\", selector = \"a\", key = \"rsa512.pem\" }},\n {{ domain = \"example.com\", selector = \"a\", key = \"{}\" }},\n {{ domain = \"example.com\", selector = \"a\", key = \"rsa2048-pkcs1.pem\" }},\n]\n[pipelines.out]\nmodify = [\"sign\"]\n",
            dir.path().join("nope.pem").display()
        ),
    );
    assert_eq!(e.matches("rsa512.pem").count(), 1, "{e}");
    assert!(
        e.contains(&format!("key file \"{}\"", file("nope.pem"))),
        "{e}"
    );
    assert!(
        e.contains(
            "`keys[3]` in modifier \"sign\" repeats domain \"example.com\" with selector \"a\""
        ),
        "{e}"
    );
    assert_eq!(e.lines().count(), 3, "{e}");

    let e = config_errors(
        dir.path(),
        "[modifiers.seal]\nkind = \"arc_seal\"\ndomain = \"forward.example\"\nselector = \"arc\"\nkey = \"rsa768.pem\"\n[pipelines.out]\nmodify = [\"seal\"]\n",
    );
    assert!(
        e.contains(&format!(
            "milter.toml:9:7: key file \"{}\" of modifier \"seal\" holds an RSA key of 768 bits",
            file("rsa768.pem")
        )),
        "{e}"
    );
}

fn forwarding(authserv_id: &str, seal: &str, checks: &str) -> String {
    format!(
        r#"
[checks.arc]
kind = "arc"
on_fail = "ignore"
[modifiers.sign]
kind = "dkim_sign"
keys = [{{ domain = "example.org", selector = "ed", key = "ed25519.pem" }}]
{seal}
[pipelines.fwd]
authserv_id = "{authserv_id}"
checks = [{checks}]
modify = ["sign", "seal"]
"#
    )
}

const SEAL_FORWARD: &str = r#"
[modifiers.seal]
kind = "arc_seal"
domain = "forward.example"
selector = "arc"
key = "rsa2048-pkcs8.pem"
headers = ["From", "To", "Subject", "Date", "Message-ID", "DKIM-Signature"]
"#;

const SEAL_RELAY: &str = r#"
[modifiers.seal]
kind = "arc_seal"
domain = "relay.example"
selector = "arced"
key = "ed25519.pem"
"#;

#[tokio::test]
async fn sealed_messages_pass_the_arc_check() {
    let server = dns().await;
    let dir = config_dir();

    // First hop: no chain yet; it also DKIM-signs, and the seal (listed
    // after the signer, so it runs after it) covers that signature.
    let hop1 = policy(
        dir.path(),
        &server,
        &forwarding("mx.forward.example", SEAL_FORWARD, "\"arc\""),
    );
    let one = deliver(
        &hop1,
        "fwd",
        &message("alice@example.org", "alice@example.org"),
    )
    .await;
    assert_eq!(one.outcome.decision.verdict(), Verdict::Accept);
    let names: Vec<&str> = one
        .mail
        .headers
        .iter()
        .take(5)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ARC-Seal",
            "ARC-Message-Signature",
            "ARC-Authentication-Results",
            "DKIM-Signature",
            "Authentication-Results"
        ]
    );
    assert_eq!(
        values(&one.mail, "ARC-Authentication-Results"),
        ["i=1; mx.forward.example; arc=none"]
    );
    let seal = values(&one.mail, "ARC-Seal")[0];
    assert_eq!(tag(seal, "cv").as_deref(), Some("none"));
    assert_eq!(tag(seal, "i").as_deref(), Some("1"));
    let ams = values(&one.mail, "ARC-Message-Signature")[0];
    assert!(tag(ams, "h").unwrap().contains("DKIM-Signature"), "{ams}");
    assert_eq!(
        arc_verdict(dir.path(), &server, &one.mail).await,
        (
            "pass".into(),
            "ARC pass, 1 set(s), newest seal by forward.example".into()
        )
    );
    assert_eq!(
        dkim_verdicts(dir.path(), &server, &one.mail).await,
        ["pass example.org ed"]
    );

    // Second hop, sealing with Ed25519: the chain it received passed, so
    // cv=pass, and the chain of two passes.
    let hop2 = policy(
        dir.path(),
        &server,
        &forwarding("mx.relay.example", SEAL_RELAY, "\"arc\""),
    );
    let two = deliver(&hop2, "fwd", &as_written(&one.outcome, &one.mail)).await;
    let seals = values(&two.mail, "ARC-Seal");
    assert_eq!(seals.len(), 2);
    assert_eq!(tag(seals[0], "i").as_deref(), Some("2"));
    assert_eq!(tag(seals[0], "cv").as_deref(), Some("pass"));
    assert_eq!(tag(seals[0], "a").as_deref(), Some("ed25519-sha256"));
    assert_eq!(
        arc_verdict(dir.path(), &server, &two.mail).await,
        (
            "pass".into(),
            "ARC pass, 2 set(s), newest seal by relay.example".into()
        )
    );

    // Folded as the daemon sends them, the seals still verify.
    let written = as_written(&two.outcome, &two.mail);
    assert_eq!(arc_verdict(dir.path(), &server, &written).await.0, "pass");

    // A chain broken on the way is not sealed over, and the mail goes on.
    let mut broken = one.mail.clone();
    broken.body.push_str("altered\r\n");
    let d = deliver(&hop2, "fwd", &broken).await;
    assert_eq!(d.outcome.decision.verdict(), Verdict::Accept);
    assert!(inserted(&d.outcome, "ARC-Seal").is_empty());

    // Without an `arc` check nobody knows what the chain is worth: no seal.
    let blind = policy(
        dir.path(),
        &server,
        &forwarding("mx.relay.example", SEAL_RELAY, ""),
    );
    let d = deliver(&blind, "fwd", &one.mail).await;
    assert_eq!(d.outcome.decision.verdict(), Verdict::Accept);
    assert!(inserted(&d.outcome, "ARC-Seal").is_empty());
    // A first hop without any Authentication-Results still seals.
    let d = deliver(
        &blind,
        "fwd",
        &message("alice@example.org", "alice@example.org"),
    )
    .await;
    assert_eq!(
        values(&d.mail, "ARC-Authentication-Results"),
        ["i=1; relay.example; none"]
    );
    assert_eq!(arc_verdict(dir.path(), &server, &d.mail).await.0, "pass");

    // A body cut at max_body_size cannot be sealed: tempfail.
    let small = policy(
        dir.path(),
        &server,
        &forwarding("mx.relay.example", SEAL_RELAY, "").replace(
            "modify = [\"sign\", \"seal\"]",
            "modify = [\"sign\", \"seal\"]\nmax_body_size = 10",
        ),
    );
    let d = deliver(
        &small,
        "fwd",
        &message("dave@example.com", "dave@example.com"),
    )
    .await;
    assert_eq!(d.outcome.decision.verdict(), Verdict::Tempfail);
    let reason = d
        .outcome
        .decision
        .reason()
        .map(str::to_string)
        .unwrap_or_default();
    assert!(reason.contains("modifier \"seal\""), "{reason}");
}
