//! DMARC conformance, written from RFC 9989 (which obsoletes RFC 7489 and
//! RFC 9091) section by section; each test names the section it comes from.
//!
//! Every test goes through the real engine and the real resolver
//! (`dispatch_milter::dns::Dns`) pointed at the loopback DNS server of
//! tests/common/dns_server.rs, with zone data made for that test under the
//! `test.` zone (a name nobody publishes anything at answers NXDOMAIN). SPF
//! passes for a MAIL FROM domain whose record allows 192.0.2.10, the client
//! every message comes from; DKIM passes for a signature made here with the
//! test key (tests/zones/auth/dkim-rsa2048.pem) whose public half the test
//! publishes as `sel._domainkey.<d>`.
//!
//! With the default `policy = "published"`, the policy that applies to a
//! failing message is visible as the check's result: `fail` for reject,
//! `softfail` for quarantine, `neutral` for none. The pipeline runs in dry
//! run, so every message gets its Authentication-Results header, rejected
//! or not.

use crate::common;

use common::dns_server::{DnsServer, Failure, RecordType};
use common::signing::dkim_sign;
use common::{Mail, QUICK_DNS, check_result, inserted, run_to_eom};
use dispatch_milter::engine::{MessageOutcome, Verdict};
use dispatch_milter::policy::Policy;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

/// SPF and DKIM only feed DMARC here: their own failures do nothing.
const CHECKS: &str = r#"
[checks.spf]
kind = "spf"
on_fail = "ignore"
on_softfail = "ignore"
on_temperror = "ignore"
on_permerror = "ignore"
[checks.dkim]
kind = "dkim"
on_fail = "ignore"
on_temperror = "ignore"
on_permerror = "ignore"
"#;

struct World {
    server: DnsServer,
}

impl World {
    async fn new() -> World {
        let server = DnsServer::start().await;
        server.add_zone("test");
        World { server }
    }

    /// A DMARC policy record for `domain`.
    fn dmarc(&self, domain: &str, record: &str) {
        self.server.add_txt(&format!("_dmarc.{domain}"), record);
    }

    /// SPF passes for `domain` from the test client.
    fn spf(&self, domain: &str) {
        self.server.add_txt(domain, "v=spf1 ip4:192.0.2.10 -all");
    }

    /// The test key, published for signatures with `d=domain; s=sel`.
    fn key(&self, domain: &str) {
        let path = common::dns_server::zones_dir().join("auth/dkim-rsa2048.pub.b64");
        let b64 = std::fs::read_to_string(path).expect("test public key");
        self.server.add_txt(
            &format!("sel._domainkey.{domain}"),
            &format!("v=DKIM1; k=rsa; p={}", b64.trim()),
        );
    }

    /// `domain` exists in the DNS (an A record).
    fn host(&self, domain: &str) {
        self.server.add_a(domain, Ipv4Addr::new(192, 0, 2, 1));
    }

    /// A dry-run pipeline (every message gets to end of message and is
    /// delivered, so the verdicts can be read) with these `dmarc` options.
    fn policy(&self, dmarc_options: &str) -> Arc<Policy> {
        self.policy_with(dmarc_options, "dry_run = true")
    }

    fn policy_with(&self, dmarc_options: &str, pipeline_options: &str) -> Arc<Policy> {
        let src = format!(
            "{QUICK_DNS}{CHECKS}\
             [checks.dmarc]\nkind = \"dmarc\"\n{dmarc_options}\n\
             [pipelines.p]\nauthserv_id = \"mx.test\"\n{pipeline_options}\nchecks = [\"spf\", \"dkim\", \"dmarc\"]\n"
        );
        common::compile_resolving(&self.server, Path::new("t.toml"), &src)
    }

    /// A message from `mail_from` with `From: <from>` (a whole header value
    /// when it holds `<` or `:`), DKIM-signed by each of `signers` in turn.
    async fn send(&self, mail_from: &str, from: &str, signers: &[&str]) -> MessageOutcome {
        self.send_with(&self.policy(""), mail_from, &[from], signers)
            .await
    }

    async fn send_with(
        &self,
        policy: &Arc<Policy>,
        mail_from: &str,
        from: &[&str],
        signers: &[&str],
    ) -> MessageOutcome {
        let mut m = Mail::new(mail_from, &["bob@rcpt.test"]);
        m.headers.retain(|(n, _)| n != "From");
        for f in from.iter().rev() {
            let value = if f.contains(['<', ':', ',']) || !f.contains('@') {
                f.to_string()
            } else {
                format!("<{f}>")
            };
            m.headers.insert(0, ("From".into(), value));
        }
        for d in signers {
            dkim_sign(&mut m, d, false);
        }
        run_to_eom(policy, "p", &m).await
    }
}

/// The `dmarc` check's (result, reason).
fn dmarc(o: &MessageOutcome) -> (String, String) {
    check_result(o, "dmarc")
}

fn result(o: &MessageOutcome) -> String {
    dmarc(o).0
}

/// The `dmarc=` part of the Authentication-Results header we added.
fn ar(o: &MessageOutcome) -> String {
    inserted(o, "Authentication-Results")
        .into_iter()
        .next()
        .and_then(|v| {
            v.split(';')
                .map(str::trim)
                .find(|f| f.starts_with("dmarc="))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The `_dmarc` names the server was asked for (TXT), as a set.
fn dmarc_queries(server: &DnsServer) -> BTreeSet<String> {
    server
        .query_log()
        .into_iter()
        .filter(|q| q.rtype == RecordType::TXT && q.name.starts_with("_dmarc."))
        .map(|q| q.name)
        .collect()
}

// ----- §4.7, §4.8: the record, its grammar and defaults -----

#[tokio::test]
async fn s4_7_unknown_tags_and_bad_syntax_after_v_are_ignored() {
    let w = World::new().await;
    w.dmarc(
        "unknown.test",
        "v=DMARC1; p=reject; future=tag; 9x=y; junk; rf=afrf",
    );
    let o = w.send("a@other.test", "a@unknown.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_7_v_must_be_the_first_tag() {
    let w = World::new().await;
    w.dmarc("vlast.test", "p=reject; v=DMARC1");
    let o = w.send("a@other.test", "a@vlast.test", &[]).await;
    assert_eq!(result(&o), "none", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_7_the_version_value_is_case_sensitive() {
    let w = World::new().await;
    w.dmarc("vcase.test", "v=dmarc1; p=reject");
    let o = w.send("a@other.test", "a@vcase.test", &[]).await;
    assert_eq!(result(&o), "none", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_8_white_space_around_separators_and_equals() {
    let w = World::new().await;
    w.dmarc("spaces.test", "v = DMARC1 ;\tp = quarantine ; ");
    let o = w.send("a@other.test", "a@spaces.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_5_txt_strings_are_joined_before_parsing() {
    let w = World::new().await;
    w.server
        .add_txt_strings("_dmarc.split.test", &["v=DMARC1; p=rej", "ect"]);
    let o = w.send("a@other.test", "a@split.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_7_a_record_without_p_is_p_none() {
    let w = World::new().await;
    w.dmarc("nop.test", "v=DMARC1; rua=mailto:agg@nop.test");
    w.dmarc("bare.test", "v=DMARC1");
    for d in ["nop.test", "bare.test"] {
        let o = w.send("a@other.test", &format!("a@{d}"), &[]).await;
        assert_eq!(result(&o), "neutral", "{d}: {:?}", dmarc(&o));
    }
}

#[tokio::test]
async fn s4_8_an_invalid_value_of_another_tag_takes_its_default() {
    let w = World::new().await;
    // adkim=x falls back to relaxed: a parent's signature aligns.
    w.dmarc("badadkim.test", "v=DMARC1; p=reject; adkim=x");
    w.host("sub.badadkim.test");
    w.key("badadkim.test");
    let o = w
        .send("a@other.test", "a@sub.badadkim.test", &["badadkim.test"])
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
    // t=maybe falls back to n: the policy applies as published.
    w.dmarc("badt.test", "v=DMARC1; p=reject; t=maybe");
    let o = w.send("a@other.test", "a@badt.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_7_values_of_policy_tags_are_case_insensitive() {
    let w = World::new().await;
    w.dmarc("pcase.test", "v=DMARC1; p=Quarantine");
    let o = w.send("a@other.test", "a@pcase.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
}

// ----- §4.10.1 (RFC 7489 §6.6.3): invalid p, sp, np and rua -----

#[tokio::test]
async fn s4_10_1_invalid_p_with_a_valid_rua_is_p_none() {
    let w = World::new().await;
    w.dmarc("badp.test", "v=DMARC1; p=bogus; rua=mailto:dmarc@badp.test");
    let o = w.send("a@other.test", "a@badp.test", &[]).await;
    assert_eq!(result(&o), "neutral", "{:?}", dmarc(&o));
    assert_eq!(ar(&o), "dmarc=fail (p=none dis=none) header.from=badp.test");
}

#[tokio::test]
async fn s4_10_1_invalid_p_without_a_valid_rua_applies_no_dmarc() {
    let w = World::new().await;
    w.dmarc("badp2.test", "v=DMARC1; p=bogus");
    // A rua without a scheme is not a URI (RFC 3986).
    w.dmarc("badp3.test", "v=DMARC1; p=bogus; rua=dmarc@badp3.test");
    for d in ["badp2.test", "badp3.test"] {
        let o = w.send("a@other.test", &format!("a@{d}"), &[]).await;
        assert_eq!(result(&o), "none", "{d}: {:?}", dmarc(&o));
        assert_eq!(
            ar(&o),
            format!("dmarc=permerror (unusable policy record) header.from={d}")
        );
    }
}

#[tokio::test]
async fn s4_10_1_invalid_sp_with_a_valid_rua_is_p_none_for_all() {
    let w = World::new().await;
    w.dmarc(
        "badsp.test",
        "v=DMARC1; p=reject; sp=quarantin; rua=mailto:d@badsp.test",
    );
    w.host("sub.badsp.test");
    let o = w.send("a@other.test", "a@badsp.test", &[]).await;
    assert_eq!(result(&o), "neutral", "{:?}", dmarc(&o));
    let o = w.send("a@other.test", "a@sub.badsp.test", &[]).await;
    assert_eq!(result(&o), "neutral", "{:?}", dmarc(&o));
}

// ----- §4.10 steps 2 and 6: several records, non-DMARC TXT records -----

#[tokio::test]
async fn s4_10_several_records_at_a_name_are_all_discarded() {
    let w = World::new().await;
    w.dmarc("twice.test", "v=DMARC1; p=reject");
    w.dmarc("twice.test", "v=DMARC1; p=none");
    let o = w.send("a@other.test", "a@twice.test", &[]).await;
    assert_eq!(result(&o), "none", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_10_several_records_at_the_author_domain_send_the_walk_upwards() {
    let w = World::new().await;
    w.dmarc("sub.twiceup.test", "v=DMARC1; p=reject");
    w.dmarc("sub.twiceup.test", "v=DMARC1; p=none");
    w.dmarc("twiceup.test", "v=DMARC1; p=quarantine");
    w.host("sub.twiceup.test");
    let o = w.send("a@other.test", "a@sub.twiceup.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_10_txt_records_that_are_not_dmarc_are_discarded() {
    let w = World::new().await;
    w.dmarc("mixed.test", "v=spf1 -all");
    w.dmarc("mixed.test", "some verification token");
    w.dmarc("mixed.test", "v=DMARC1; p=reject");
    let o = w.send("a@other.test", "a@mixed.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

// ----- §4.10: the tree walk and its bound -----

#[tokio::test]
async fn s4_10_a_long_author_domain_costs_at_most_eight_queries() {
    let w = World::new().await;
    w.dmarc("walk.test", "v=DMARC1; p=reject");
    let author = "a.b.c.d.e.f.g.h.i.j.mail.walk.test";
    let o = w.send("a@walk.test", &format!("x@{author}"), &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
    // The RFC's own example (§4.10), with walk.test for example.com.
    let expected: BTreeSet<String> = [
        "_dmarc.a.b.c.d.e.f.g.h.i.j.mail.walk.test.",
        "_dmarc.g.h.i.j.mail.walk.test.",
        "_dmarc.h.i.j.mail.walk.test.",
        "_dmarc.i.j.mail.walk.test.",
        "_dmarc.j.mail.walk.test.",
        "_dmarc.mail.walk.test.",
        "_dmarc.walk.test.",
        "_dmarc.test.",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(dmarc_queries(&w.server), expected);
    for name in &expected {
        assert_eq!(w.server.queries_for(name), 1, "{name} asked once");
    }
}

#[tokio::test]
async fn s4_10_1_the_author_domains_own_record_applies_first() {
    let w = World::new().await;
    w.dmarc("sub.own.test", "v=DMARC1; p=none");
    w.dmarc("own.test", "v=DMARC1; p=reject");
    w.host("sub.own.test");
    let o = w.send("a@other.test", "a@sub.own.test", &[]).await;
    assert_eq!(result(&o), "neutral", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_10_1_the_organizational_domain_is_the_record_with_fewest_labels() {
    // §4.10.2 rule 3: records at mail.fewest.test and fewest.test; the
    // author a.mail.fewest.test has none, so fewest.test's record applies.
    let w = World::new().await;
    w.dmarc("mail.fewest.test", "v=DMARC1; p=none");
    w.dmarc("fewest.test", "v=DMARC1; p=reject");
    w.host("a.mail.fewest.test");
    let o = w.send("a@other.test", "a@a.mail.fewest.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

// ----- §4.7 sp and np, §3.2.13 non-existent domains -----

#[tokio::test]
async fn s4_7_sp_applies_to_existing_subdomains_only() {
    let w = World::new().await;
    w.dmarc("sp.test", "v=DMARC1; p=reject; sp=quarantine");
    w.host("sub.sp.test");
    let o = w.send("a@other.test", "a@sub.sp.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
    assert_eq!(
        ar(&o),
        "dmarc=fail (sp=quarantine dis=none) header.from=sub.sp.test"
    );
    let o = w.send("a@other.test", "a@sp.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
    assert_eq!(ar(&o), "dmarc=fail (p=reject dis=none) header.from=sp.test");
}

#[tokio::test]
async fn s4_7_np_applies_to_non_existent_subdomains() {
    let w = World::new().await;
    w.dmarc("np.test", "v=DMARC1; p=quarantine; sp=none; np=reject");
    w.host("real.np.test");
    // NXDOMAIN (RFC 8020): ghost.np.test and all below it do not exist.
    let o = w.send("a@other.test", "a@ghost.np.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
    assert_eq!(
        ar(&o),
        "dmarc=fail (np=reject dis=none) header.from=ghost.np.test"
    );
    let o = w.send("a@other.test", "a@real.np.test", &[]).await;
    assert_eq!(result(&o), "neutral", "{:?}", dmarc(&o));
    let o = w.send("a@other.test", "a@np.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s3_2_13_a_name_with_only_other_records_exists() {
    // NOERROR without an A record (NODATA) is not NXDOMAIN: the name
    // exists, so sp applies, not np.
    let w = World::new().await;
    w.dmarc("nodata.test", "v=DMARC1; p=none; sp=quarantine; np=reject");
    w.server
        .add_mx("mx-only.nodata.test", 10, "mail.other.test");
    let o = w.send("a@other.test", "a@mx-only.nodata.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
    // An empty non-terminal (a name with names below it) exists too.
    w.host("deep.ent.nodata.test");
    let o = w.send("a@other.test", "a@ent.nodata.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_7_without_np_non_existent_subdomains_get_sp_then_p() {
    let w = World::new().await;
    w.dmarc("nonp.test", "v=DMARC1; p=reject; sp=quarantine");
    let o = w.send("a@other.test", "a@ghost.nonp.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
    w.dmarc("nosp.test", "v=DMARC1; p=reject");
    let o = w.send("a@other.test", "a@ghost.nosp.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

// ----- §4.7 psd, §4.10.2 the organizational domain -----

#[tokio::test]
async fn s4_10_2_psd_y_makes_the_name_below_it_the_organizational_domain() {
    // Appendix B.4.3, with bank.test for bank.example.
    let w = World::new().await;
    w.dmarc("bank.test", "v=DMARC1; p=reject; psd=y");
    w.dmarc("giant.bank.test", "v=DMARC1; p=reject");
    w.spf("mail.giant.bank.test");
    w.key("mail.mega.bank.test");
    // SPF for mail.giant.bank.test aligns with giant.bank.test.
    let o = w
        .send("a@mail.giant.bank.test", "a@giant.bank.test", &[])
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
    // A signature of mail.mega.bank.test does not: its organizational
    // domain is mega.bank.test.
    let o = w
        .send(
            "a@other.test",
            "a@giant.bank.test",
            &["mail.mega.bank.test"],
        )
        .await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_10_1_the_psd_record_applies_when_the_organization_has_none() {
    let w = World::new().await;
    w.dmarc("psd.test", "v=DMARC1; p=reject; sp=quarantine; psd=y");
    w.host("shop.psd.test");
    let o = w.send("a@other.test", "a@shop.psd.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
    // Not when the organization publishes its own (§4.10.1, the note).
    w.dmarc("own.psd.test", "v=DMARC1; p=none");
    w.host("own.psd.test");
    let o = w.send("a@other.test", "a@own.psd.test", &[]).await;
    assert_eq!(result(&o), "neutral", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_10_2_psd_n_stops_the_walk_and_is_the_organizational_domain() {
    let w = World::new().await;
    w.dmarc("corp.test", "v=DMARC1; p=reject");
    w.dmarc("dept.corp.test", "v=DMARC1; p=quarantine; psd=n");
    w.host("a.dept.corp.test");
    w.key("corp.test");
    // a.dept.corp.test takes dept.corp.test's policy, not corp.test's.
    let o = w.send("a@other.test", "a@a.dept.corp.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
    // And corp.test's signature no longer aligns with dept.corp.test.
    let o = w
        .send("a@other.test", "a@dept.corp.test", &["corp.test"])
        .await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_7_psd_u_is_the_default() {
    let w = World::new().await;
    w.dmarc("corpu.test", "v=DMARC1; p=reject");
    w.dmarc("dept.corpu.test", "v=DMARC1; p=quarantine; psd=u");
    w.key("corpu.test");
    // Without psd=n, corpu.test is the organizational domain: its
    // signature aligns with dept.corpu.test (relaxed).
    let o = w
        .send("a@other.test", "a@dept.corpu.test", &["corpu.test"])
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
}

// Where the tree walk and RFC 7489's Public Suffix List disagree. We give
// the tree walk's answer: RFC 9989 §4.10 replaced the list.

#[tokio::test]
async fn s4_10_vs_psl_a_listed_public_suffix_that_publishes_a_record() {
    // pages.test stands for a name a suffix list lists as public (like
    // github.io). It publishes a record without psd=y: for the tree walk it
    // is the organizational domain of its subdomains, so its own signature
    // aligns with alice.pages.test (the list would say alice.pages.test is
    // the organizational domain and fail the message).
    let w = World::new().await;
    w.dmarc("pages.test", "v=DMARC1; p=reject");
    w.key("pages.test");
    w.host("alice.pages.test");
    let o = w
        .send("a@other.test", "a@alice.pages.test", &["pages.test"])
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
    // With psd=y the walk and the list agree: no alignment.
    w.dmarc("psdpages.test", "v=DMARC1; p=reject; psd=y");
    w.key("psdpages.test");
    w.host("bob.psdpages.test");
    let o = w
        .send("a@other.test", "a@bob.psdpages.test", &["psdpages.test"])
        .await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_10_vs_psl_a_subdomain_with_its_own_record_signed_by_its_parent() {
    // The list makes parent.test the organizational domain of
    // sub.parent.test whatever sub publishes. The tree walk agrees while
    // sub's record has no psd tag (the record with the fewest labels wins)...
    let w = World::new().await;
    w.dmarc("parent.test", "v=DMARC1; p=none");
    w.dmarc("sub.parent.test", "v=DMARC1; p=reject");
    w.key("parent.test");
    let o = w
        .send("a@other.test", "a@sub.parent.test", &["parent.test"])
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
    // ...and disagrees when it says psd=n: sub.parent2.test is its own
    // organizational domain, and the parent's signature no longer aligns.
    w.dmarc("parent2.test", "v=DMARC1; p=none");
    w.dmarc("sub.parent2.test", "v=DMARC1; p=reject; psd=n");
    w.key("parent2.test");
    let o = w
        .send("a@other.test", "a@sub.parent2.test", &["parent2.test"])
        .await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

// ----- §4.4, §3.2.10: identifier alignment -----

#[tokio::test]
async fn s4_4_2_spf_strict_and_relaxed_alignment() {
    let w = World::new().await;
    w.dmarc("spfr.test", "v=DMARC1; p=reject");
    w.dmarc("spfs.test", "v=DMARC1; p=reject; aspf=s");
    for d in [
        "spfr.test",
        "bounce.spfr.test",
        "spfs.test",
        "bounce.spfs.test",
    ] {
        w.spf(d);
    }
    let pass = |o: &MessageOutcome| result(o) == "pass";
    assert!(pass(&w.send("a@spfr.test", "a@spfr.test", &[]).await));
    assert!(pass(
        &w.send("a@bounce.spfr.test", "a@spfr.test", &[]).await
    ));
    assert!(pass(&w.send("a@spfs.test", "a@spfs.test", &[]).await));
    let o = w.send("a@bounce.spfs.test", "a@spfs.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_4_2_spf_must_pass_to_align() {
    let w = World::new().await;
    w.dmarc("spffail.test", "v=DMARC1; p=reject");
    w.server
        .add_txt("spffail.test", "v=spf1 ip4:198.51.100.1 -all");
    w.server
        .add_txt("soft.spffail.test", "v=spf1 ip4:198.51.100.1 ~all");
    let o = w.send("a@spffail.test", "a@spffail.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
    let o = w.send("a@soft.spffail.test", "a@spffail.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_4_1_dkim_relaxed_alignment_parent_child_and_sibling() {
    let w = World::new().await;
    w.dmarc("dk.test", "v=DMARC1; p=reject");
    for d in [
        "dk.test",
        "a.dk.test",
        "b.dk.test",
        "deep.b.dk.test",
        "dk2.test",
    ] {
        w.key(d);
    }
    w.host("b.dk.test");
    // A parent, the domain itself, a sibling and a child all align.
    for signer in ["dk.test", "b.dk.test", "a.dk.test", "deep.b.dk.test"] {
        let o = w.send("a@other.test", "a@b.dk.test", &[signer]).await;
        assert_eq!(result(&o), "pass", "d={signer}: {:?}", dmarc(&o));
    }
    // Another organization does not.
    let o = w.send("a@other.test", "a@b.dk.test", &["dk2.test"]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_4_1_dkim_strict_alignment_needs_the_same_domain() {
    let w = World::new().await;
    w.dmarc("dks.test", "v=DMARC1; p=reject; adkim=s");
    w.key("dks.test");
    w.key("sub.dks.test");
    w.host("sub.dks.test");
    let o = w
        .send("a@other.test", "a@sub.dks.test", &["dks.test"])
        .await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
    let o = w
        .send("a@other.test", "a@sub.dks.test", &["sub.dks.test"])
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_4_1_any_aligned_signature_among_several_passes() {
    let w = World::new().await;
    w.dmarc("many.test", "v=DMARC1; p=reject");
    w.key("unrelated.test");
    w.key("many.test");
    let o = w
        .send(
            "a@other.test",
            "a@many.test",
            &["unrelated.test", "many.test"],
        )
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_4_1_a_signature_that_does_not_verify_does_not_align() {
    let w = World::new().await;
    w.dmarc("nokey.test", "v=DMARC1; p=reject");
    // No key published: the signature cannot verify.
    let o = w
        .send("a@other.test", "a@nokey.test", &["nokey.test"])
        .await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s4_4_domain_names_compare_without_case() {
    let w = World::new().await;
    w.dmarc("mixedcase.test", "v=DMARC1; p=reject; adkim=s; aspf=s");
    w.key("mixedcase.test");
    let o = w
        .send("a@other.test", "a@MixedCase.TEST", &["mixedcase.test"])
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
}

// ----- §5.3.1: the Author Domain -----

#[tokio::test]
async fn s5_3_1_a_u_label_is_looked_up_as_its_a_label() {
    let w = World::new().await;
    w.dmarc("xn--bcher-kva.test", "v=DMARC1; p=quarantine");
    let o = w.send("a@other.test", "a@bücher.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s5_3_1_several_addresses_of_one_domain_are_one_author_domain() {
    let w = World::new().await;
    w.dmarc("two.test", "v=DMARC1; p=reject");
    w.spf("two.test");
    let p = w.policy("");
    let o = w
        .send_with(&p, "a@two.test", &["a@two.test, b@Two.test"], &[])
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s5_3_1_several_author_domains_or_none_end_dmarc() {
    let w = World::new().await;
    w.dmarc("a.test", "v=DMARC1; p=reject");
    let p = w.policy("");
    for from in [
        &["a@a.test, b@b.test"][..],
        &["a@a.test", "a@a.test"][..],
        &["undisclosed-recipients:;"][..],
        &["alice"][..],
    ] {
        let o = w.send_with(&p, "a@a.test", from, &[]).await;
        assert_eq!(result(&o), "permerror", "{from:?}: {:?}", dmarc(&o));
        assert_eq!(ar(&o), "dmarc=permerror", "{from:?}");
    }
}

// ----- §5.3.6: DNS errors -----

#[tokio::test]
async fn s5_3_6_a_policy_lookup_that_times_out_is_temperror() {
    let w = World::new().await;
    w.dmarc("slow.test", "v=DMARC1; p=reject");
    w.server.set_failure("_dmarc.slow.test", Failure::Drop);
    let o = w.send("a@other.test", "a@slow.test", &[]).await;
    assert_eq!(result(&o), "temperror", "{:?}", dmarc(&o));
    assert_eq!(ar(&o), "dmarc=temperror header.from=slow.test");
    // A parent the walk needs, failing with SERVFAIL.
    w.dmarc("slowparent.test", "v=DMARC1; p=reject");
    w.server
        .set_failure("_dmarc.slowparent.test", Failure::ServFail);
    let o = w.send("a@other.test", "a@sub.slowparent.test", &[]).await;
    assert_eq!(result(&o), "temperror", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s5_3_6_a_walk_for_alignment_that_fails_is_temperror() {
    let w = World::new().await;
    w.dmarc("alignwalk.test", "v=DMARC1; p=reject");
    w.key("sub.alignwalk.test");
    w.server
        .set_failure("_dmarc.sub.alignwalk.test", Failure::ServFail);
    let o = w
        .send("a@other.test", "a@alignwalk.test", &["sub.alignwalk.test"])
        .await;
    assert_eq!(result(&o), "temperror", "{:?}", dmarc(&o));
    // Unless another identifier aligns without it.
    w.spf("alignwalk.test");
    let o = w
        .send(
            "a@alignwalk.test",
            "a@alignwalk.test",
            &["sub.alignwalk.test"],
        )
        .await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn s3_2_13_an_existence_lookup_that_fails_is_temperror_when_np_matters() {
    let w = World::new().await;
    w.dmarc("npslow.test", "v=DMARC1; p=reject; sp=none; np=reject");
    w.server.set_failure("ghost.npslow.test", Failure::ServFail);
    let o = w.send("a@other.test", "a@ghost.npslow.test", &[]).await;
    assert_eq!(result(&o), "temperror", "{:?}", dmarc(&o));
    // Not when sp and np say the same.
    w.dmarc("npsame.test", "v=DMARC1; p=reject; sp=quarantine");
    w.server.set_failure("ghost.npsame.test", Failure::ServFail);
    let o = w.send("a@other.test", "a@ghost.npsame.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
}

// ----- §4.7 t, Appendix A.6: pct -----

#[tokio::test]
async fn s4_7_t_y_applies_the_next_milder_policy() {
    let w = World::new().await;
    w.dmarc("ty.test", "v=DMARC1; p=reject; t=y");
    w.dmarc("tyq.test", "v=DMARC1; p=quarantine; t=y");
    w.dmarc("tn.test", "v=DMARC1; p=reject; t=n");
    let o = w.send("a@other.test", "a@ty.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
    assert_eq!(
        ar(&o),
        "dmarc=fail (p=reject t=y: quarantine dis=none) header.from=ty.test"
    );
    let o = w.send("a@other.test", "a@tyq.test", &[]).await;
    assert_eq!(result(&o), "neutral", "{:?}", dmarc(&o));
    let o = w.send("a@other.test", "a@tn.test", &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

#[tokio::test]
async fn a_6_legacy_pct() {
    let w = World::new().await;
    w.dmarc("pct0.test", "v=DMARC1; p=reject; pct=0");
    w.dmarc("pct100.test", "v=DMARC1; p=reject; pct=100");
    w.dmarc("pctbad.test", "v=DMARC1; p=reject; pct=250");
    w.dmarc("pct0t.test", "v=DMARC1; p=reject; pct=0; t=n");
    // pct=0 is what t=y replaced: the next milder policy.
    let o = w.send("a@other.test", "a@pct0.test", &[]).await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
    assert_eq!(
        ar(&o),
        "dmarc=fail (p=reject pct=0: quarantine dis=none) header.from=pct0.test"
    );
    for d in ["pct100.test", "pctbad.test", "pct0t.test"] {
        let o = w.send("a@other.test", &format!("a@{d}"), &[]).await;
        assert_eq!(result(&o), "fail", "{d}: {:?}", dmarc(&o));
    }
    // honour_pct = false: pct is ignored, as RFC 9989 receivers do.
    let p = w.policy("honour_pct = false");
    let o = w.send_with(&p, "a@other.test", &["a@pct0.test"], &[]).await;
    assert_eq!(result(&o), "fail", "{:?}", dmarc(&o));
}

// ----- RFC 8601, §5.4: what Authentication-Results says -----

#[tokio::test]
async fn s5_4_authentication_results_name_the_policy() {
    let w = World::new().await;
    w.dmarc("arp.test", "v=DMARC1; p=reject");
    w.spf("arp.test");
    let o = w.send("a@arp.test", "a@arp.test", &[]).await;
    assert_eq!(result(&o), "pass", "{:?}", dmarc(&o));
    assert_eq!(
        ar(&o),
        "dmarc=pass (p=reject dis=none) header.from=arp.test"
    );
    w.dmarc("arn.test", "v=DMARC1; p=none");
    let o = w.send("a@other.test", "a@arn.test", &[]).await;
    assert_eq!(ar(&o), "dmarc=fail (p=none dis=none) header.from=arn.test");
    let o = w.send("a@other.test", "a@nothing.test", &[]).await;
    assert_eq!(result(&o), "none");
    assert_eq!(ar(&o), "dmarc=none header.from=nothing.test");
}

/// The comment ends with what became of the message, as OpenDMARC writes
/// it: `dis=quarantine` when the policy put it on hold, `dis=none` when it
/// was delivered, here because the local policy lets p=quarantine through
/// (and in dry run, whatever the policy would have done).
#[tokio::test]
async fn s5_4_authentication_results_name_the_disposition() {
    let w = World::new().await;
    w.dmarc("disq.test", "v=DMARC1; p=quarantine");
    let quarantine = w.policy_with("on_softfail = \"quarantine\"", "");
    let o = w
        .send_with(&quarantine, "a@other.test", &["a@disq.test"], &[])
        .await;
    assert_eq!(result(&o), "softfail", "{:?}", dmarc(&o));
    assert_eq!(o.decision.verdict(), Verdict::Quarantine);
    assert_eq!(
        ar(&o),
        "dmarc=fail (p=quarantine dis=quarantine) header.from=disq.test"
    );
    let let_through = w.policy_with("on_softfail = \"ignore\"", "");
    let o = w
        .send_with(&let_through, "a@other.test", &["a@disq.test"], &[])
        .await;
    assert_eq!(o.decision.verdict(), Verdict::Accept);
    assert_eq!(
        ar(&o),
        "dmarc=fail (p=quarantine dis=none) header.from=disq.test"
    );
    let dry_run = w.policy_with("on_softfail = \"quarantine\"", "dry_run = true");
    let o = w
        .send_with(&dry_run, "a@other.test", &["a@disq.test"], &[])
        .await;
    assert_eq!(
        ar(&o),
        "dmarc=fail (p=quarantine dis=none) header.from=disq.test"
    );
}
