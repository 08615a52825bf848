//! The DKIM and ARC keys of one message, looked up early.
//!
//! DKIM and ARC can only be evaluated at end of message, but the keys they
//! will ask for are known much earlier: as soon as the DKIM-Signature and
//! ARC headers arrive. (DMARC's policy records have their own store,
//! `auth::dmarc::lookups`.) Asked for then, and all at once instead of one
//! after another, they are usually in hand when end of message comes, so
//! the message waits for at most one DNS round trip instead of a chain of
//! them.
//!
//! Each message's [`Evidence`](super::Evidence) has one [`KeyStore`]. It is
//! single-flight per name: a name is looked up once per message however
//! many checks want it, and a check that needs the answer while the lookup
//! is in flight waits for that lookup instead of sending another query.
//! mail-auth reads it through its `ResolverCache` interface, so its key
//! fetches are answered from here.
//!
//! Answers are parsed by mail-auth's own parser, choosing among several
//! records as its lookup does, so what a check sees is what mail-auth would
//! have found. A temporary failure (timeout, SERVFAIL) that a check waited
//! for at end of message stands as the answer; one that came in earlier,
//! during the dialogue, is asked again. Each message asks for at most
//! `EARLY_KEYS` keys early, and its lookups stop when the message ends.

use crate::dns::{Dns, DnsError};
use hickory_resolver::proto::op::ResponseCode;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The most keys one message may ask for early; past it, the lookups are
/// left to end of message. A message rarely has more than a few signatures
/// and ARC sets, and a forged message with thousands of DKIM-Signature
/// headers must not turn into thousands of queries.
const EARLY_KEYS: usize = 8;

/// One lookup's outcome.
#[derive(Clone)]
enum Answer {
    /// A record, or what mail-auth would have cached for the name: "no
    /// such record", or the error of a record that does not parse.
    Definite(Txt),
    /// Timeout, SERVFAIL, no server: when it came in, and mail-auth's error.
    Temporary { at: Instant, error: Txt },
}

struct Entry {
    /// Asked for by this store (early or at end of message), as opposed to
    /// looked up by mail-auth itself and stored here.
    ours: bool,
    answer: tokio::sync::OnceCell<Answer>,
    /// mail-auth's own answer after a temporary failure here.
    later: Mutex<Option<Txt>>,
}

impl Entry {
    /// An answer known without asking this message's resolver: what
    /// mail-auth looked up itself, or a name that cannot exist.
    fn definite(txt: Txt) -> Arc<Entry> {
        Arc::new(Entry {
            ours: false,
            answer: tokio::sync::OnceCell::new_with(Some(Answer::Definite(txt))),
            later: Mutex::new(None),
        })
    }
}

/// The per-message store of key lookups (see the module documentation).
#[derive(Default)]
pub struct KeyStore {
    entries: Mutex<HashMap<Box<str>, Arc<Entry>>>,
    /// The lookups in the background, stopped when the message ends.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// When a check first waited for early answers. A temporary failure
    /// that came in after that was waited for, and stands as the answer
    /// (asking again would double the wait and outlast the check's
    /// timeout); one from earlier in the dialogue is asked again.
    waiting_since: Mutex<Option<Instant>>,
}

impl Drop for KeyStore {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Names as mail-auth asks for them: lower case, ending with a dot.
fn key_of(name: &str) -> Box<str> {
    let mut key = name.to_ascii_lowercase();
    if !key.ends_with('.') {
        key.push('.');
    }
    key.into_boxed_str()
}

/// The key record name of a signature (`s._domainkey.d.`).
pub fn domain_key_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{}.", domain.trim_end_matches('.'))
}

/// The first record that parses as `T`, or the error of the last one
/// tried: the choice mail-auth's own lookup makes, so a check sees what
/// mail-auth would have found.
fn parse_first<T: TxtRecordParser + Into<Txt>>(records: &[Vec<u8>]) -> Txt {
    let mut parsed = Err(mail_auth::Error::Dns(
        mail_auth::DnsError::InvalidRecordType,
    ));
    for record in records {
        parsed = T::parse(record);
        if parsed.is_ok() {
            break;
        }
    }
    match parsed {
        Ok(record) => record.into(),
        Err(error) => Txt::Error(error),
    }
}

/// "No such record", as mail-auth's resolver reports NXDOMAIN.
fn no_such_record() -> Txt {
    Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
        ResponseCode::NXDomain,
    )))
}

/// One lookup: a single question to the resolver, parsed by mail-auth's
/// parser, and shared with later messages for as long as the answer may be
/// kept: a record (or one that does not parse) for its TTL, "no such
/// record" for the negative TTL of the zone's SOA. A temporary failure is
/// never kept.
async fn lookup(dns: &Dns, name: &str) -> Answer {
    let answer = dns.txt_answer(name).await;
    let txt = match &answer.records {
        Ok(records) => parse_first::<DomainKey>(records),
        Err(DnsError::NotFound) => no_such_record(),
        Err(DnsError::Temporary(why)) => {
            return Answer::Temporary {
                at: Instant::now(),
                error: Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::Resolver(
                    why.clone(),
                ))),
            };
        }
    };
    if dns.settings().cache_size > 0
        && let Some(until) = answer.valid_until
    {
        dns.parsed_txt().put(name, txt.clone(), until);
    }
    Answer::Definite(txt)
}

impl KeyStore {
    // `dkim_key` and `arc_keys` are called for every header of every
    // message: they look at the header name first and only then reach the
    // store.

    /// The DKIM key a `DKIM-Signature` header names, looked up early.
    pub fn dkim_key(&self, dns: &Arc<Dns>, name: &str, value: &str) {
        if name.eq_ignore_ascii_case("DKIM-Signature")
            && let Ok(sig) = mail_auth::dkim::Signature::parse(value.as_bytes())
        {
            self.start(dns, &domain_key_name(&sig.s, &sig.d));
        }
    }

    /// The keys an `ARC-Message-Signature` or `ARC-Seal` header names.
    pub fn arc_keys(&self, dns: &Arc<Dns>, name: &str, value: &str) {
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
            self.start(dns, &key);
        }
    }

    /// Start looking the key `name` up in the background, unless this
    /// message already did or has asked for as many keys as it may.
    /// Outside a tokio runtime (nothing to run it on) the lookup is left to
    /// the check itself.
    pub fn start(&self, dns: &Arc<Dns>, name: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = key_of(name);
        let entry = {
            let mut entries = lock(&self.entries);
            if entries.contains_key(&key)
                || entries.values().filter(|e| e.ours).count() >= EARLY_KEYS
            {
                return;
            }
            let entry = Arc::new(Entry {
                ours: true,
                answer: tokio::sync::OnceCell::new(),
                later: Mutex::new(None),
            });
            entries.insert(key.clone(), entry.clone());
            // Parsed for an earlier message and still within its TTL: no
            // lookup, no task.
            if let Some(txt) = dns.parsed_txt().get(&key) {
                let _ = entry.answer.set(Answer::Definite(txt));
                return;
            }
            entry
        };
        let dns = dns.clone();
        let task = runtime.spawn(async move {
            entry.answer.get_or_init(|| lookup(&dns, &key)).await;
        });
        lock(&self.tasks).push(task.abort_handle());
    }

    /// Wait for the early lookups of `names` (those this message started;
    /// others are left to mail-auth). One whose task was stopped unfinished
    /// is done here instead.
    ///
    /// A name that cannot be a DNS name (a label over 63 octets: a hostile
    /// `s=` or `d=`) is answered "no such record" here, whether or not it
    /// was asked for early: mail-auth's own lookup would call it a resolver
    /// error, a temperror that could turn a DKIM or DMARC failure into a
    /// tempfail.
    pub async fn settled(&self, dns: &Dns, names: &[String]) {
        lock(&self.waiting_since).get_or_insert_with(Instant::now);
        let pending: Vec<(Box<str>, Arc<Entry>)> = {
            let mut entries = lock(&self.entries);
            for name in names {
                let key = key_of(name);
                if !entries.contains_key(&key) && !crate::dns::can_exist(name) {
                    entries.insert(key, Entry::definite(no_such_record()));
                }
            }
            names
                .iter()
                .filter_map(|n| {
                    let key = key_of(n);
                    let entry = entries.get(&key).filter(|e| e.ours)?;
                    (!entry.answer.initialized()).then(|| (key, entry.clone()))
                })
                .collect()
        };
        // The lookups run in their own tasks: waiting for one after the
        // other takes as long as the slowest.
        for (key, entry) in pending {
            entry.answer.get_or_init(|| lookup(dns, &key)).await;
        }
    }

    fn answer_for<Q>(&self, key: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = lock(&self.entries).get(key)?.clone();
        if let Some(txt) = lock(&entry.later).clone() {
            return Some(txt);
        }
        match entry.answer.get()? {
            Answer::Definite(txt) => Some(txt.clone()),
            Answer::Temporary { at, error } => {
                let since = (*lock(&self.waiting_since))?;
                (*at >= since).then(|| error.clone())
            }
        }
    }

    /// The answer for `name` as mail-auth will see it, if one is in.
    #[cfg(test)]
    pub fn answer(&self, name: &str) -> Option<Txt> {
        self.answer_for(&*key_of(name))
    }

    /// How many names this message has asked for.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether this message has asked for no names yet.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// mail-auth reads and fills the store through this interface. What it
/// looks up itself is kept too, so a second look at the same message (DKIM
/// and ARC share keys; the header hash and key size checks reread them)
/// does not ask again.
impl ResolverCache<Box<str>, Txt> for KeyStore {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.answer_for(name)
    }

    fn remove<Q>(&self, _name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // A message's answers stay for the whole message.
        None
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: Instant) {
        let mut entries = lock(&self.entries);
        match entries.get(&key) {
            // Asked for early and failed for the time being, or still in
            // flight: mail-auth's own answer replaces it.
            Some(entry) => *lock(&entry.later) = Some(value),
            None => {
                entries.insert(key, Entry::definite(value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::dmarc::Dmarc;

    #[test]
    fn key_names_are_spelled_as_mail_auth_asks() {
        assert_eq!(
            domain_key_name("sel", "example.org."),
            "sel._domainkey.example.org."
        );
        // Looked up as mail-auth spells names: lower case, final dot.
        assert_eq!(
            &*key_of("Sel._DomainKey.Example.ORG"),
            "sel._domainkey.example.org."
        );
    }

    #[test]
    fn what_mail_auth_stores_it_finds_again() {
        let store = KeyStore::default();
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
        assert!(store.answer("_dmarc.Example.org").is_some());
        assert!(ResolverCache::get::<str>(&store, "_dmarc.org.").is_none());
        assert_eq!(store.len(), 1);
    }

    /// A key name with a 64-octet label is "no such record" without a
    /// query, even when it was never asked for early; a name that can
    /// exist but was not asked for early is left to mail-auth.
    #[tokio::test]
    async fn a_name_that_cannot_exist_is_settled_as_not_found() {
        let dns = crate::dns::unreachable_for_tests();
        let store = KeyStore::default();
        let impossible = domain_key_name(&"a".repeat(64), "example.org");
        let possible = domain_key_name("sel", "example.org");
        store
            .settled(&dns, &[impossible.clone(), possible.clone()])
            .await;
        assert!(matches!(
            store.answer(&impossible),
            Some(Txt::Error(mail_auth::Error::Dns(
                mail_auth::DnsError::RecordNotFound(ResponseCode::NXDomain)
            )))
        ));
        assert!(store.answer(&possible).is_none());
        assert!(crate::dns::can_exist(&possible));
        assert!(!crate::dns::can_exist(&impossible));
        assert!(!crate::dns::can_exist("a..example.org"));
    }
}
