//! ARC chains that must not pass (RFC 8617), through the `arc` check and
//! the `arc_seal` modifier with the real resolver and the loopback DNS
//! server: a chain an upstream hop already marked `cv=fail`, instance gaps
//! and duplicates, a first set with a cv= other than `none`, and chains of
//! 50 and more sets. Each test names the section it comes from. Chains are
//! built with mail-auth's sealer and the test key of tests/zones/auth,
//! whose public half every zone there publishes as `sel._domainkey`.

use crate::common;

use common::dns_server::DnsServer;
use common::signing::{arc_seal, arc_seal_next};
use common::{Mail, QUICK_DNS, check_result, run_to_eom};
use dispatch_milter::edits::Edit;
use dispatch_milter::policy::Policy;
use mail_auth::DkimResult;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

/// Validates the chain and seals as forwarder.test when it may.
const VALIDATE_AND_SEAL: &str = r#"
[checks.arc]
kind = "arc"
on_fail = "ignore"

[modifiers.seal]
kind = "arc_seal"
domain = "forwarder.test"
selector = "sel"
key = "sealer.pem"

[pipelines.p]
authserv_id = "mx.test"
checks = ["arc"]
modify = ["seal"]
"#;

struct Hop {
    _dir: tempfile::TempDir,
    policy: Arc<Policy>,
}

fn hop(server: &DnsServer) -> Hop {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("sealer.pem");
    std::fs::copy(
        common::dns_server::zones_dir().join("auth/dkim-rsa2048.pem"),
        &key,
    )
    .expect("copy the key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let policy = common::compile_resolving(
        server,
        &dir.path().join("t.toml"),
        &format!("{QUICK_DNS}{VALIDATE_AND_SEAL}"),
    );
    Hop { _dir: dir, policy }
}

/// A message from origin.test that a list at forwarder.test sealed.
fn sealed_once() -> Mail {
    let mut m = Mail::from_client("list-bounces@forwarder.test", "192.0.2.50");
    m.headers[0].1 = "Alice <alice@origin.test>".into();
    arc_seal(&mut m, "forwarder.test");
    m
}

struct Seen {
    status: String,
    reason: String,
    /// ARC headers this hop added.
    sealed: Vec<String>,
}

async fn through(hop: &Hop, mail: &Mail) -> Seen {
    let outcome = run_to_eom(&hop.policy, "p", mail).await;
    let (status, reason) = check_result(&outcome, "arc");
    let sealed = outcome
        .edits
        .iter()
        .filter_map(|e| match e {
            Edit::InsertHeader { name, value, .. } if name.starts_with("ARC-") => {
                Some(format!("{name}: {value}"))
            }
            _ => None,
        })
        .collect();
    Seen {
        status,
        reason,
        sealed,
    }
}

/// The check found the chain failed for this reason, and the sealer
/// added nothing: a seal cannot repair a broken chain.
fn fails_unsealed(seen: &Seen, reason: &str) {
    assert_eq!(
        (seen.status.as_str(), seen.reason.as_str()),
        ("fail", reason)
    );
    assert!(seen.sealed.is_empty(), "{:?}", seen.sealed);
}

/// The cv= and i= of every ARC-Seal, in header order.
fn seals(mail: &Mail) -> Vec<String> {
    mail.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("ARC-Seal"))
        .map(|(_, v)| {
            let tag = |t: &str| {
                v.split(';')
                    .map(str::trim)
                    .find_map(|kv| kv.strip_prefix(t))
                    .unwrap_or("?")
                    .to_string()
            };
            format!("i={} cv={}", tag("i="), tag("cv="))
        })
        .collect()
}

#[tokio::test]
async fn a_good_chain_of_two_sets_passes_and_is_sealed_again() {
    // The baseline the failures below depart from (§5.2).
    let server = DnsServer::start_with_auth_zones().await;
    let hop = hop(&server);
    let mut m = sealed_once();
    arc_seal_next(&mut m, "forwarder.test", DkimResult::Pass);
    assert_eq!(seals(&m), ["i=2 cv=pass", "i=1 cv=none"]);
    let seen = through(&hop, &m).await;
    assert_eq!(seen.status, "pass", "{}", seen.reason);
    assert_eq!(seen.sealed.len(), 3, "{:?}", seen.sealed);
    assert!(
        seen.sealed
            .iter()
            .any(|h| h.starts_with("ARC-Seal:") && h.contains("i=3") && h.contains("cv=pass")),
        "{:?}",
        seen.sealed
    );
}

#[tokio::test]
async fn a_chain_marked_cv_fail_upstream_fails_and_is_not_sealed() {
    // §5.2 step 2 (and §4.1.3): once a hop wrote cv=fail, the chain is
    // failed for everyone after it, even though every signature verifies.
    let server = DnsServer::start_with_auth_zones().await;
    let hop = hop(&server);
    let mut m = sealed_once();
    arc_seal_next(
        &mut m,
        "forwarder.test",
        DkimResult::Fail(mail_auth::Error::Arc(mail_auth::arc::ArcError::BrokenChain)),
    );
    assert_eq!(seals(&m), ["i=2 cv=fail", "i=1 cv=none"]);
    let seen = through(&hop, &m).await;
    fails_unsealed(&seen, "ARC fail: Invalid 'cv=' value found in ARC header");
}

#[tokio::test]
async fn the_first_set_must_say_cv_none() {
    // §4.1.3 / §5.2: i=1 carries cv=none; a first set claiming a chain
    // before it (cv=pass) is invalid.
    let server = DnsServer::start_with_auth_zones().await;
    let hop = hop(&server);
    let mut m = sealed_once();
    for (name, value) in &mut m.headers {
        if name == "ARC-Seal" {
            *value = value.replace("cv=none", "cv=pass");
        }
    }
    let seen = through(&hop, &m).await;
    fails_unsealed(&seen, "ARC fail: Invalid 'cv=' value found in ARC header");
}

/// Remove every header of ARC instance `i`.
fn drop_instance(mail: &mut Mail, i: u32) {
    let marker = format!("i={i}");
    mail.headers.retain(|(name, value)| {
        !(name.starts_with("ARC-") && value.split(';').any(|t| t.trim() == marker))
    });
}

#[tokio::test]
async fn a_gap_in_the_instances_fails() {
    // §4.2.1 and §5.2 step 3: instances run 1 to N without gaps. A chain
    // of three sets with the middle one removed (1 and 3 remain) fails,
    // although each remaining signature is intact.
    let server = DnsServer::start_with_auth_zones().await;
    let hop = hop(&server);
    let mut m = sealed_once();
    arc_seal_next(&mut m, "forwarder.test", DkimResult::Pass);
    arc_seal_next(&mut m, "forwarder.test", DkimResult::Pass);
    assert_eq!(seals(&m).len(), 3);
    drop_instance(&mut m, 2);
    assert_eq!(seals(&m), ["i=3 cv=pass", "i=1 cv=none"]);
    let seen = through(&hop, &m).await;
    fails_unsealed(&seen, "ARC fail: Invalid 'i=2' value found in ARC header");
}

#[tokio::test]
async fn an_instance_given_twice_fails() {
    // §4.2.1: exactly one of each header per instance. The first set
    // copied (all three headers twice) is not a chain.
    let server = DnsServer::start_with_auth_zones().await;
    let hop = hop(&server);
    let mut m = sealed_once();
    let set: Vec<(String, String)> = m
        .headers
        .iter()
        .filter(|(n, _)| n.starts_with("ARC-"))
        .cloned()
        .collect();
    assert_eq!(set.len(), 3);
    common::signing::prepend(&mut m, set);
    let seen = through(&hop, &m).await;
    fails_unsealed(&seen, "ARC fail: Invalid 'i=2' value found in ARC header");
}

#[tokio::test]
async fn fifty_sets_pass_and_are_not_sealed_again_and_fifty_one_fail() {
    // §4.2.1: instance values run from 1 to 50. A chain of 50 good sets
    // passes, but a 51st set cannot be added, so our sealer leaves the
    // message as it is; a message that carries 51 sets fails.
    let server = DnsServer::start_with_auth_zones().await;
    let hop = hop(&server);
    let mut m = sealed_once();
    for _ in 2..=50 {
        arc_seal_next(&mut m, "forwarder.test", DkimResult::Pass);
    }
    assert_eq!(seals(&m).len(), 50);
    let seen = through(&hop, &m).await;
    assert_eq!(
        (seen.status.as_str(), seen.reason.as_str()),
        ("pass", "ARC pass, 50 set(s), newest seal by forwarder.test")
    );
    assert!(seen.sealed.is_empty(), "{:?}", seen.sealed);

    arc_seal_next(&mut m, "forwarder.test", DkimResult::Pass);
    assert_eq!(seals(&m).first().map(String::as_str), Some("i=51 cv=pass"));
    let seen = through(&hop, &m).await;
    fails_unsealed(&seen, "ARC fail: Invalid 'i=51' value found in ARC header");
}
