//! Lookups started before the check that needs them can run.
//!
//! DKIM, DMARC and ARC can only be evaluated at end of message, but most of
//! the DNS records they will ask for are known much earlier: the DMARC
//! policy records of the MAIL FROM domain at MAIL FROM, those of the From:
//! domain and the DKIM and ARC keys as soon as those headers arrive. Asked
//! for then, and all at once instead of one after another, they are usually
//! in hand when end of message comes, so the message waits for at most one
//! DNS round trip instead of a chain of them.
//!
//! Each message has one [`TxtPrefetch`] in its memo. It is single-flight per
//! name: a name is looked up once per message however many checks want it,
//! and a check that needs the answer while the lookup is in flight waits for
//! that lookup instead of sending another query. mail-auth reads it through
//! its `ResolverCache` interface, so its DMARC tree walk and key fetches are
//! answered from here.
//!
//! Only definite answers are kept: a record, "no such record" or "not a
//! record of that kind". A temporary failure (timeout, SERVFAIL) is not
//! remembered, so the check at end of message asks again and reports its
//! own result.

use super::Memo;
use crate::dns::{Dns, DnsError};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::{ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// What kind of record a name holds, so the answer can be parsed the way
/// mail-auth would parse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Dmarc,
    DomainKey,
}

/// A definite answer for one name.
#[derive(Clone)]
pub struct Fetched {
    /// As mail-auth's own lookup would have cached it.
    pub txt: Txt,
    /// The TXT records as published, each with its strings joined: the DMARC
    /// check reads `pct=` from here, a tag mail-auth no longer parses.
    pub raw: Vec<String>,
}

struct Entry {
    kind: Option<RecordKind>,
    /// `Some(None)`: looked up, the answer was a temporary failure.
    answer: tokio::sync::OnceCell<Option<Fetched>>,
}

/// The per-message store of early lookups (see the module documentation).
#[derive(Default)]
pub struct TxtPrefetch {
    entries: Mutex<HashMap<Box<str>, Arc<Entry>>>,
}

/// Names end with a dot, as mail-auth spells them. They are otherwise kept
/// as given: the callers build them the way mail-auth does (lower-case
/// A-labels for DMARC, selector and domain as written in the signature for
/// keys), so mail-auth's own requests find them.
fn key_of(name: &str) -> Box<str> {
    if name.ends_with('.') {
        name.into()
    } else {
        format!("{name}.").into_boxed_str()
    }
}

/// The names mail-auth's DMARC tree walk (RFC 9989 §4.10.1) asks for, in
/// its order: the domain itself, then, for long names, the name cut to
/// seven labels, then one label less each time down to the top level.
pub fn dmarc_tree(domain: &str) -> Vec<String> {
    let domain = domain.trim_end_matches('.');
    let labels: Vec<&str> = domain.split('.').collect();
    let total = labels.len();
    if total < 2 || labels.iter().any(|l| l.is_empty()) {
        return Vec::new();
    }
    let mut names = Vec::new();
    let mut count = total;
    loop {
        names.push(format!("_dmarc.{}.", labels[total - count..].join(".")));
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
    names
}

/// The key record name of a signature (`s._domainkey.d.`).
pub fn domain_key_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{}.", domain.trim_end_matches('.'))
}

/// The DKIM key a `DKIM-Signature` header names, looked up early.
pub fn dkim_key(store: &TxtPrefetch, dns: &Arc<Dns>, name: &str, value: &str) {
    if name.eq_ignore_ascii_case("DKIM-Signature")
        && let Ok(sig) = mail_auth::dkim::Signature::parse(value.as_bytes())
    {
        store.start(dns, &domain_key_name(&sig.s, &sig.d), RecordKind::DomainKey);
    }
}

/// The keys an `ARC-Message-Signature` or `ARC-Seal` header names.
pub fn arc_keys(store: &TxtPrefetch, dns: &Arc<Dns>, name: &str, value: &str) {
    let key = if name.eq_ignore_ascii_case("ARC-Message-Signature") {
        mail_auth::arc::Signature::parse(value.as_bytes())
            .ok()
            .map(|s| domain_key_name(&s.s, &s.d))
    } else if name.eq_ignore_ascii_case("ARC-Seal") {
        mail_auth::arc::Seal::parse(value.as_bytes())
            .ok()
            .map(|s| domain_key_name(&s.s, &s.d))
    } else {
        None
    };
    if let Some(key) = key {
        store.start(dns, &key, RecordKind::DomainKey);
    }
}

/// The DMARC records mail-auth's tree walk will want for `domain`.
pub fn dmarc_records(store: &TxtPrefetch, dns: &Arc<Dns>, domain: &str) {
    for name in dmarc_tree(domain) {
        store.start(dns, &name, RecordKind::Dmarc);
    }
}

/// One lookup, its answer parsed into what mail-auth expects.
async fn lookup(dns: &Dns, name: &str, kind: RecordKind) -> Option<Fetched> {
    fn parse<T: TxtRecordParser>(records: &[String], wrap: fn(Arc<T>) -> Txt) -> Txt {
        records
            .iter()
            .find_map(|r| T::parse(r.as_bytes()).ok())
            .map(|t| wrap(Arc::new(t)))
            .unwrap_or(Txt::Error(mail_auth::Error::Dns(
                mail_auth::DnsError::InvalidRecordType,
            )))
    }
    match dns.txt(name).await {
        Ok(raw) => {
            let txt = match kind {
                RecordKind::Dmarc => parse::<Dmarc>(&raw, Txt::Dmarc),
                RecordKind::DomainKey => parse::<DomainKey>(&raw, Txt::DomainKey),
            };
            Some(Fetched { txt, raw })
        }
        // NXDOMAIN or no TXT record: to mail-auth both are "not found".
        Err(DnsError::NotFound) => Some(Fetched {
            txt: Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
                ResponseCode::NXDomain,
            ))),
            raw: Vec::new(),
        }),
        Err(DnsError::Temporary(_)) => None,
    }
}

impl TxtPrefetch {
    /// The message's store, created on first use.
    pub fn of(memo: &Memo) -> Arc<TxtPrefetch> {
        memo.get_or_default::<TxtPrefetch>()
    }

    fn entry(&self, key: Box<str>, kind: Option<RecordKind>) -> (Arc<Entry>, bool) {
        let mut entries = match self.entries.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut created = false;
        let entry = entries
            .entry(key)
            .or_insert_with(|| {
                created = true;
                Arc::new(Entry {
                    kind,
                    answer: tokio::sync::OnceCell::new(),
                })
            })
            .clone();
        (entry, created)
    }

    /// Start looking `name` up in the background, unless this message
    /// already did. Outside a tokio runtime (nothing to run it on) the
    /// lookup is left to the check itself.
    pub fn start(&self, dns: &Arc<Dns>, name: &str, kind: RecordKind) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = key_of(name);
        let (entry, created) = self.entry(key.clone(), Some(kind));
        if !created {
            return;
        }
        let dns = dns.clone();
        runtime.spawn(async move {
            entry.answer.get_or_init(|| lookup(&dns, &key, kind)).await;
        });
    }

    /// Wait for the lookups of `kind` started so far. One whose task went
    /// away unfinished (the runtime shutting down) is done here instead.
    pub async fn settled(&self, dns: &Dns, kind: RecordKind) {
        let pending: Vec<(Box<str>, Arc<Entry>)> = {
            let entries = match self.entries.lock() {
                Ok(e) => e,
                Err(poisoned) => poisoned.into_inner(),
            };
            entries
                .iter()
                .filter(|(_, e)| e.kind == Some(kind) && !e.answer.initialized())
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        };
        for (key, entry) in pending {
            if let Some(kind) = entry.kind {
                entry.answer.get_or_init(|| lookup(dns, &key, kind)).await;
            }
        }
    }

    /// The definite answer for `name`, if one is in.
    pub fn answer(&self, name: &str) -> Option<Fetched> {
        self.answer_for(&*key_of(name))
    }

    fn answer_for<Q>(&self, key: &Q) -> Option<Fetched>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = match self.entries.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.get(key)?.answer.get()?.clone()
    }

    /// How many names this message has asked for (for tests and logs).
    pub fn len(&self) -> usize {
        match self.entries.lock() {
            Ok(e) => e.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// mail-auth reads and fills the store through this interface. What it
/// looks up itself is kept too, so a second check of the same message (DKIM
/// and ARC share keys; DMARC and the key size check reread them) does not
/// ask again.
impl ResolverCache<Box<str>, Txt> for TxtPrefetch {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.answer_for(name).map(|f| f.txt)
    }

    fn remove<Q>(&self, _name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // A message's answers stay for the whole message.
        None
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: std::time::Instant) {
        let (entry, _) = self.entry(key_of(&key), None);
        let _ = entry.answer.set(Some(Fetched {
            txt: value,
            raw: Vec::new(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_walk_names_match_mail_auths_order() {
        assert_eq!(
            dmarc_tree("example.org"),
            ["_dmarc.example.org.", "_dmarc.org."]
        );
        assert_eq!(
            dmarc_tree("mail.example.org."),
            [
                "_dmarc.mail.example.org.",
                "_dmarc.example.org.",
                "_dmarc.org."
            ]
        );
        // Eight labels or more: the name itself, then straight to seven.
        let long = dmarc_tree("a.b.c.d.e.f.g.h.example.org");
        assert_eq!(long.len(), 8);
        assert_eq!(long[0], "_dmarc.a.b.c.d.e.f.g.h.example.org.");
        assert_eq!(long[1], "_dmarc.d.e.f.g.h.example.org.");
        assert_eq!(long[7], "_dmarc.org.");
        assert!(dmarc_tree("localhost").is_empty());
        assert!(dmarc_tree("a..b").is_empty());
        assert_eq!(
            domain_key_name("sel", "Example.org."),
            "sel._domainkey.Example.org."
        );
    }

    #[test]
    fn what_mail_auth_stores_it_finds_again() {
        let store = TxtPrefetch::default();
        assert!(store.is_empty());
        let record = Dmarc::parse(b"v=DMARC1; p=reject").map(Arc::new);
        let Ok(record) = record else {
            panic!("a valid record")
        };
        store.insert(
            "_dmarc.example.org.".into(),
            Txt::Dmarc(record),
            std::time::Instant::now(),
        );
        assert!(matches!(
            ResolverCache::get::<str>(&store, "_dmarc.example.org."),
            Some(Txt::Dmarc(_))
        ));
        assert!(store.answer("_dmarc.example.org").is_some());
        assert!(ResolverCache::get::<str>(&store, "_dmarc.org.").is_none());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn the_memo_hands_out_one_store_per_message() {
        let memo = Memo::default();
        let a = TxtPrefetch::of(&memo);
        let b = TxtPrefetch::of(&memo);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &TxtPrefetch::of(&Memo::default())));
    }
}
