//! DMARC evaluation (RFC 9989 §4.10, §5.3): policy discovery by the DNS
//! tree walk, the Organizational Domain, identifier alignment and the
//! policy that applies to a failing message. A pure function of its inputs
//! and a [`Lookup`], so tests feed it zone data.
//!
//! Owned here instead of mail-auth 0.13's `verify_dmarc`, which this code
//! replaces for these reasons: its record parser (see `record`), several
//! records at one name taken as the first, an existence lookup that fails
//! counted as "exists" (so `sp` silently replaces `np`), and no way to apply
//! a legacy `pct` or report which tag applied. Its tree walk and
//! Organizational Domain selection were right; this is the same algorithm,
//! written from the RFC.
//!
//! Bounded: each walk asks for at most eight names (§4.10), a name is asked
//! for once per evaluation however many walks pass through it, and only
//! identifiers that can align (the Author Domain's Organizational Domain or
//! a name below it) get a walk of their own, at most [`MAX_IDENTIFIER_WALKS`].

use super::record::{Alignment, Policies, Psd, Record, Request, select};
use std::collections::HashMap;
use std::future::Future;

/// A lookup that did not complete (timeout, SERVFAIL, ...). "No such
/// record" and NXDOMAIN are answers, not this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Temporary(pub String);

/// The DNS as evaluation sees it.
pub trait Lookup: Sync {
    /// The TXT records at `name` (`_dmarc.` and a domain, no final dot),
    /// each with its strings joined; empty for NXDOMAIN or no TXT record.
    fn txt(&self, name: &str) -> impl Future<Output = Result<Vec<String>, Temporary>> + Send;
    /// Whether `domain` exists (§3.2.13, RFC 8020: NXDOMAIN means it and
    /// every name below it do not).
    fn exists(&self, domain: &str) -> impl Future<Output = Result<bool, Temporary>> + Send;
}

/// Most identifiers (the SPF domain and distinct DKIM signing domains)
/// that get a tree walk of their own: a message with many signatures must
/// not turn into many walks. Legitimate mail has one to three.
pub const MAX_IDENTIFIER_WALKS: usize = 8;

/// What one identifier brings: its domain and whether it authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identifier {
    /// Lower case A-labels, no final dot.
    pub domain: String,
    /// Whether the identifier authenticated (SPF pass, a valid DKIM signature).
    pub state: Authenticated,
}

/// Whether an identifier authenticated, as far as DMARC is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authenticated {
    /// It authenticated (SPF pass, or a DKIM signature that verified).
    Pass,
    /// Unknown for now (a DNS failure while verifying): it might pass.
    Temporary,
    /// Anything else: never aligns.
    No,
}

/// The inputs of one evaluation.
pub struct Message<'a> {
    /// The Author Domain: lower case A-labels, no final dot.
    pub author: &'a str,
    /// The SPF-authenticated identifier candidate (the MAIL FROM domain,
    /// or HELO for `<>`), if SPF was evaluated for a domain.
    pub spf: Option<Identifier>,
    /// One per DKIM signature.
    pub dkim: Vec<Identifier>,
}

/// Where the applying record was found and which tag applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// `p`: the Author Domain has a record of its own.
    P,
    /// `sp`: the record is a parent domain's, and the Author Domain exists.
    Sp,
    /// `np`: the record is a parent domain's, and the Author Domain does not exist.
    Np,
}

impl Tag {
    /// The tag's name as written in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::P => "p",
            Tag::Sp => "sp",
            Tag::Np => "np",
        }
    }
}

/// The outcome of one evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No DMARC policy record applies (§4.10.1: DMARC does not apply).
    NoPolicy,
    /// A record applies but is unusable (§4.10.1: an invalid policy tag
    /// and no valid `rua`): no DMARC processing either.
    Unusable {
        /// The domain whose record applies.
        policy_domain: String,
    },
    /// The message passes: an aligned identifier authenticated.
    Pass {
        /// The domain whose record applies.
        policy_domain: String,
        /// An aligned SPF identifier passed.
        spf: bool,
        /// An aligned DKIM signature passed.
        dkim: bool,
        /// The tag that would apply (`p`, or `sp` for a subdomain;
        /// existence is not looked up for a pass) and its policy.
        tag: Tag,
        /// What the domain owner asks for failing mail.
        policy: Request,
    },
    /// No aligned identifier authenticated.
    Fail {
        /// The domain whose record applies.
        policy_domain: String,
        /// The tag that applies and its policy, before `t` and `pct`.
        tag: Tag,
        /// What the domain owner asks for such mail.
        policy: Request,
        /// The record's `t` and legacy `pct`, for the caller to apply.
        test: Option<bool>,
        /// The legacy percentage of failing mail the policy is to be applied to.
        pct: Option<u8>,
    },
    /// A lookup needed for the result did not complete (§5.3.6).
    TempError(String),
}

/// The labels of `domain` from the right, as the walk counts them.
fn label_count(domain: &str) -> usize {
    domain.split('.').count()
}

/// `domain` without its `n` leftmost labels.
fn strip_labels(domain: &str, n: usize) -> &str {
    let mut rest = domain;
    for _ in 0..n {
        match rest.split_once('.') {
            Some((_, r)) => rest = r,
            None => return "",
        }
    }
    rest
}

/// The domains a tree walk from `domain` asks about, in order (§4.10
/// steps 1 to 7): the domain itself, then, if it has eight labels or more,
/// its last seven, then one label less each time down to the top-level
/// domain. Never more than eight.
pub fn walk_domains(domain: &str) -> Vec<&str> {
    let total = label_count(domain);
    let mut out = vec![domain];
    let mut count = total;
    while count > 1 {
        count = if count >= 8 { 7 } else { count - 1 };
        out.push(strip_labels(domain, total - count));
    }
    out
}

/// Whether `name` is `ancestor` or a name below it.
fn is_at_or_below(name: &str, ancestor: &str) -> bool {
    name == ancestor
        || name
            .strip_suffix(ancestor)
            .is_some_and(|prefix| prefix.ends_with('.'))
}

/// The records found by a walk, longest name first.
type Found<'d> = Vec<(&'d str, Record)>;

/// One evaluation's DNS answers, so no name is asked twice.
struct Walker<'l, L: Lookup> {
    lookup: &'l L,
    records: HashMap<String, Option<Record>>,
}

impl<L: Lookup> Walker<'_, L> {
    /// The one usable DMARC record at `_dmarc.<domain>`, if any.
    async fn record_at(&mut self, domain: &str) -> Result<Option<Record>, Temporary> {
        if let Some(r) = self.records.get(domain) {
            return Ok(r.clone());
        }
        let txt = self.lookup.txt(&format!("_dmarc.{domain}")).await?;
        let record = select(&txt);
        self.records.insert(domain.to_string(), record.clone());
        Ok(record)
    }

    /// The whole tree walk from `domain` (§4.10): the names with a record,
    /// stopping after one that says `psd=y` or `psd=n`.
    async fn walk<'d>(&mut self, domain: &'d str) -> Result<Found<'d>, Temporary> {
        let mut found = Vec::new();
        for name in walk_domains(domain) {
            if let Some(record) = self.record_at(name).await? {
                let stop = record.psd != Psd::Unknown;
                found.push((name, record));
                if stop {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// The Organizational Domain of `domain` (§4.10.2).
    async fn organizational_domain<'d>(&mut self, domain: &'d str) -> Result<&'d str, Temporary> {
        let found = self.walk(domain).await?;
        Ok(organizational_domain(domain, &found))
    }
}

/// §4.10.2's selection over the records a walk from `start` found.
fn organizational_domain<'d>(start: &'d str, found: &Found<'d>) -> &'d str {
    for (name, record) in found {
        match record.psd {
            Psd::No => return name,
            Psd::Yes if *name != start => {
                // The name one label below the PSD, on the way to start.
                let below = label_count(name) + 1;
                return strip_labels(start, label_count(start).saturating_sub(below));
            }
            _ => {}
        }
    }
    found.last().map_or(start, |(name, _)| *name)
}

/// Whether an identifier aligns with the Author Domain (§4.4): the same
/// domain, or, in relaxed mode, the same Organizational Domain.
async fn aligned<L: Lookup>(
    walker: &mut Walker<'_, L>,
    id: &str,
    author: &str,
    author_org: Option<&str>,
    mode: Alignment,
) -> Result<bool, Temporary> {
    if id == author {
        return Ok(true);
    }
    let (Alignment::Relaxed, Some(org)) = (mode, author_org) else {
        return Ok(false);
    };
    // An Organizational Domain is its domain or an ancestor of it, so an
    // identifier outside the author's Organizational Domain cannot align
    // and needs no walk.
    if !is_at_or_below(id, org) {
        return Ok(false);
    }
    Ok(walker.organizational_domain(id).await? == org)
}

/// Evaluates DMARC for one message (§5.3.2 to §5.3.6). `policy` of the
/// outcome is what the record asks for; `t` and `pct` are left to the
/// caller, which decides how to apply them.
pub async fn evaluate<L: Lookup>(lookup: &L, message: &Message<'_>) -> Outcome {
    match run(lookup, message).await {
        Ok(outcome) => outcome,
        Err(Temporary(e)) => Outcome::TempError(e),
    }
}

async fn run<L: Lookup>(lookup: &L, message: &Message<'_>) -> Result<Outcome, Temporary> {
    let author = message.author;
    let mut walker = Walker {
        lookup,
        records: HashMap::new(),
    };

    // §4.10.1: the Author Domain's own record, else the Organizational
    // Domain's, else the PSD's.
    let (policy_domain, record, own) = match walker.record_at(author).await? {
        Some(record) => (author.to_string(), record, true),
        None => {
            let found = walker.walk(author).await?;
            let org = organizational_domain(author, &found);
            let chosen = found
                .iter()
                .find(|(name, _)| *name == org)
                .or_else(|| found.iter().find(|(_, r)| r.psd == Psd::Yes));
            match chosen {
                Some((name, record)) => (name.to_string(), record.clone(), false),
                None => return Ok(Outcome::NoPolicy),
            }
        }
    };
    let Some(Policies { p, sp, np }) = record.policies() else {
        return Ok(Outcome::Unusable { policy_domain });
    };

    // Identifiers that authenticated or might have; the Author Domain's
    // Organizational Domain is only needed (and its walk only made) when a
    // relaxed comparison has something to compare.
    let candidates = message
        .spf
        .iter()
        .map(|id| (id, record.aspf, true))
        .chain(message.dkim.iter().map(|id| (id, record.adkim, false)))
        .filter(|(id, _, _)| id.state != Authenticated::No);
    let mut author_org: Option<Result<&str, Temporary>> = None;
    let mut walks = 0;
    let mut seen: Vec<&str> = Vec::new();
    let (mut spf_pass, mut dkim_pass) = (false, false);
    let mut temporary: Option<Temporary> = None;
    for (id, mode, is_spf) in candidates {
        // One aligned signature settles DKIM (§4.4.1); the SPF identifier
        // comes first, so the reason can name both.
        if !is_spf && dkim_pass {
            break;
        }
        let needs_org = id.domain != author && mode == Alignment::Relaxed;
        let org = if needs_org {
            let org = match &author_org {
                Some(org) => org.clone(),
                None => {
                    let org = walker.organizational_domain(author).await;
                    author_org = Some(org.clone());
                    org
                }
            };
            match org {
                Ok(org) => Some(org),
                Err(e) => {
                    temporary.get_or_insert(e);
                    continue;
                }
            }
        } else {
            None
        };
        let first_time = !seen.contains(&id.domain.as_str());
        if needs_org && first_time && org.is_some_and(|o| is_at_or_below(&id.domain, o)) {
            if walks == MAX_IDENTIFIER_WALKS {
                continue;
            }
            walks += 1;
            seen.push(&id.domain);
        }
        match aligned(&mut walker, &id.domain, author, org, mode).await {
            Ok(true) if id.state == Authenticated::Pass => {
                if is_spf {
                    spf_pass = true;
                } else {
                    dkim_pass = true;
                }
            }
            Ok(true) => {
                temporary.get_or_insert(Temporary(format!(
                    "{} result for {} unknown",
                    if is_spf { "SPF" } else { "DKIM" },
                    id.domain
                )));
            }
            Ok(false) => {}
            Err(e) => {
                temporary.get_or_insert(e);
            }
        }
    }

    let (tag, policy) = if own { (Tag::P, p) } else { (Tag::Sp, sp) };
    if spf_pass || dkim_pass {
        return Ok(Outcome::Pass {
            policy_domain,
            spf: spf_pass,
            dkim: dkim_pass,
            tag,
            policy,
        });
    }
    if let Some(e) = temporary {
        return Err(e);
    }
    // A subdomain of the policy domain: sp if it exists, np if not; the
    // lookup is only made when they differ.
    let (tag, policy) = if own || sp == np {
        (tag, policy)
    } else if lookup.exists(author).await? {
        (Tag::Sp, sp)
    } else {
        (Tag::Np, np)
    };
    Ok(Outcome::Fail {
        policy_domain,
        tag,
        policy,
        test: record.test,
        pct: record.pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// Zone data: TXT records by name, names that exist, names that fail.
    #[derive(Default)]
    struct Zone {
        txt: HashMap<String, Vec<String>>,
        hosts: BTreeSet<String>,
        failing: BTreeSet<String>,
        asked: Mutex<Vec<String>>,
    }

    impl Zone {
        fn record(mut self, domain: &str, text: &str) -> Zone {
            self.txt
                .entry(format!("_dmarc.{domain}"))
                .or_default()
                .push(text.into());
            self
        }
        fn host(mut self, domain: &str) -> Zone {
            self.hosts.insert(domain.into());
            self
        }
        fn failing(mut self, name: &str) -> Zone {
            self.failing.insert(name.into());
            self
        }
        fn asked(&self) -> Vec<String> {
            self.asked.lock().map(|a| a.clone()).unwrap_or_default()
        }
    }

    impl Lookup for Zone {
        async fn txt(&self, name: &str) -> Result<Vec<String>, Temporary> {
            if let Ok(mut a) = self.asked.lock() {
                a.push(name.to_string());
            }
            if self.failing.contains(name) {
                return Err(Temporary(format!("{name} timed out")));
            }
            Ok(self.txt.get(name).cloned().unwrap_or_default())
        }
        async fn exists(&self, domain: &str) -> Result<bool, Temporary> {
            if self.failing.contains(domain) {
                return Err(Temporary(format!("{domain} timed out")));
            }
            Ok(self
                .hosts
                .iter()
                .chain(self.txt.keys())
                .any(|h| is_at_or_below(h, domain)))
        }
    }

    fn id(domain: &str, state: Authenticated) -> Identifier {
        Identifier {
            domain: domain.into(),
            state,
        }
    }

    fn eval(zone: &Zone, author: &str, spf: Option<&str>, dkim: &[&str]) -> Outcome {
        let message = Message {
            author,
            spf: spf.map(|d| id(d, Authenticated::Pass)),
            dkim: dkim.iter().map(|d| id(d, Authenticated::Pass)).collect(),
        };
        futures_lite_block_on(evaluate(zone, &message))
    }

    /// A tiny executor: the zone never awaits anything real.
    fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
        match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt.block_on(f),
            Err(e) => panic!("runtime: {e}"),
        }
    }

    fn fail(domain: &str, tag: Tag, policy: Request) -> Outcome {
        Outcome::Fail {
            policy_domain: domain.into(),
            tag,
            policy,
            test: None,
            pct: None,
        }
    }

    #[test]
    fn s4_10_walk_names() {
        assert_eq!(walk_domains("example.com"), ["example.com", "com"]);
        assert_eq!(walk_domains("com"), ["com"]);
        let long = walk_domains("a.b.c.d.e.f.g.h.i.j.mail.example.com");
        assert_eq!(
            long,
            [
                "a.b.c.d.e.f.g.h.i.j.mail.example.com",
                "g.h.i.j.mail.example.com",
                "h.i.j.mail.example.com",
                "i.j.mail.example.com",
                "j.mail.example.com",
                "mail.example.com",
                "example.com",
                "com"
            ]
        );
        assert_eq!(walk_domains("a.b.c.d.e.f.g.h").len(), 8);
        assert_eq!(walk_domains("a.b.c.d.e.f.g.h")[1], "b.c.d.e.f.g.h");
        for n in 1..40 {
            let d = vec!["x"; n].join(".");
            assert!(walk_domains(&d).len() <= 8);
        }
    }

    #[test]
    fn b_4_1_simple_organizational_and_policy_example() {
        let zone = Zone::default()
            .record("example.com", "v=DMARC1; p=reject")
            .record("signing.example.com", "v=DMARC1; p=none");
        let out = eval(
            &zone,
            "example.com",
            Some("example.com"),
            &["signing.example.com"],
        );
        assert!(
            matches!(
                out,
                Outcome::Pass {
                    spf: true,
                    dkim: true,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn b_4_2_deep_tree_walk_example() {
        let zone = Zone::default()
            .record("example.com", "v=DMARC1; p=reject")
            .record("signing.example.com", "v=DMARC1; p=none");
        let author = "a.b.c.d.e.f.g.h.i.j.k.example.com";
        let out = eval(&zone, author, Some("example.com"), &["signing.example.com"]);
        assert!(
            matches!(&out, Outcome::Pass { policy_domain, .. } if policy_domain == "example.com"),
            "{out:?}"
        );
        let asked = zone.asked();
        let unique: BTreeSet<&String> = asked.iter().collect();
        assert_eq!(unique.len(), asked.len(), "no name asked twice: {asked:?}");
        assert!(asked.len() <= 9, "{asked:?}");
    }

    #[test]
    fn b_4_3_psd_example() {
        let zone = Zone::default()
            .record("bank.example", "v=DMARC1; p=reject; psd=y")
            .record("giant.bank.example", "v=DMARC1; p=quarantine");
        let out = eval(
            &zone,
            "giant.bank.example",
            Some("mail.giant.bank.example"),
            &[],
        );
        assert!(matches!(out, Outcome::Pass { spf: true, .. }), "{out:?}");
        let out = eval(
            &zone,
            "giant.bank.example",
            None,
            &["mail.mega.bank.example"],
        );
        assert_eq!(out, fail("giant.bank.example", Tag::P, Request::Quarantine));
    }

    #[test]
    fn s4_10_1_discovery_and_subdomain_policies() {
        let zone = Zone::default()
            .record("example.com", "v=DMARC1; p=reject; sp=quarantine; np=none")
            .host("www.example.com");
        assert_eq!(
            eval(&zone, "example.com", None, &[]),
            fail("example.com", Tag::P, Request::Reject)
        );
        assert_eq!(
            eval(&zone, "www.example.com", None, &[]),
            fail("example.com", Tag::Sp, Request::Quarantine)
        );
        assert_eq!(
            eval(&zone, "ghost.example.com", None, &[]),
            fail("example.com", Tag::Np, Request::None)
        );
        assert_eq!(eval(&zone, "example.org", None, &[]), Outcome::NoPolicy);
        let zone = Zone::default().record("example.com", "v=DMARC1; p=bogus");
        assert_eq!(
            eval(&zone, "example.com", None, &[]),
            Outcome::Unusable {
                policy_domain: "example.com".into()
            }
        );
    }

    #[test]
    fn s4_10_2_psd_n_and_fewest_labels() {
        let zone = Zone::default()
            .record("corp.example", "v=DMARC1; p=reject")
            .record("dept.corp.example", "v=DMARC1; p=quarantine; psd=n");
        assert_eq!(
            eval(&zone, "x.dept.corp.example", None, &["corp.example"]),
            fail("dept.corp.example", Tag::Sp, Request::Quarantine)
        );
        let zone = Zone::default()
            .record("corp.example", "v=DMARC1; p=reject")
            .record("dept.corp.example", "v=DMARC1; p=quarantine");
        assert!(matches!(
            eval(&zone, "dept.corp.example", None, &["corp.example"]),
            Outcome::Pass { dkim: true, .. }
        ));
        assert_eq!(
            eval(&zone, "x.dept.corp.example", None, &[]),
            fail("corp.example", Tag::Sp, Request::Reject)
        );
    }

    #[test]
    fn s5_3_6_temporary_failures() {
        let zone = Zone::default()
            .record("example.com", "v=DMARC1; p=reject")
            .failing("_dmarc.sub.example.com");
        // Needed for the policy: temperror.
        assert!(matches!(
            eval(&zone, "sub.example.com", None, &[]),
            Outcome::TempError(_)
        ));
        // Needed only for an alignment another identifier settles: pass.
        assert!(matches!(
            eval(
                &zone,
                "example.com",
                Some("example.com"),
                &["sub.example.com"]
            ),
            Outcome::Pass {
                spf: true,
                dkim: false,
                ..
            }
        ));
        assert!(matches!(
            eval(&zone, "example.com", None, &["sub.example.com"]),
            Outcome::TempError(_)
        ));
        // An identifier that might pass and would align.
        let message = Message {
            author: "example.com",
            spf: Some(id("example.com", Authenticated::Temporary)),
            dkim: vec![],
        };
        assert!(matches!(
            futures_lite_block_on(evaluate(&zone, &message)),
            Outcome::TempError(_)
        ));
        // One that would not align changes nothing.
        let message = Message {
            author: "example.com",
            spf: Some(id("other.example", Authenticated::Temporary)),
            dkim: vec![id("example.com", Authenticated::No)],
        };
        assert_eq!(
            futures_lite_block_on(evaluate(&zone, &message)),
            fail("example.com", Tag::P, Request::Reject)
        );
    }

    #[test]
    fn identifier_walks_are_bounded() {
        let zone = Zone::default().record("example.com", "v=DMARC1; p=reject");
        let signers: Vec<String> = (0..50).map(|i| format!("s{i}.x.example.com")).collect();
        let signers: Vec<&str> = signers.iter().map(String::as_str).collect();
        let out = eval(&zone, "example.com", None, &signers);
        // All of them align (example.com is their Organizational Domain)...
        assert!(matches!(out, Outcome::Pass { .. }), "{out:?}");
        // ...and not one walk per signature: the first settles it, and
        // outside the author's organization nothing is walked at all.
        let others: Vec<String> = (0..50).map(|i| format!("s{i}.example.net")).collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        let zone = Zone::default().record("example.com", "v=DMARC1; p=reject");
        let out = eval(&zone, "example.com", None, &others);
        assert_eq!(out, fail("example.com", Tag::P, Request::Reject));
        assert!(zone.asked().len() <= 2, "{:?}", zone.asked());
    }
}
