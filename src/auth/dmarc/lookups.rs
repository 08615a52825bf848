//! The DMARC evaluation's DNS: one store per message (in its evidence) of the
//! `_dmarc` TXT answers, raw, through the shared resolver (`Dns::txt`).
//!
//! The names of a tree walk are known long before end of message (the MAIL
//! FROM domain at MAIL FROM, the author domain when the From: header
//! arrives), so [`DmarcDns::prefetch`] asks for all of a walk's names at
//! once in the background; the evaluation then reads the answers, or waits
//! for the lookup in flight, instead of asking again (single flight per
//! name within the message). A temporary failure that came in during the
//! dialogue is asked once more at end of message; one that came in while
//! the evaluation waited stands (asking again would double the wait).
//! Background lookups stop when the message ends.

use super::evaluate::{Lookup, Temporary, walk_domains};
use crate::dns::{Dns, DnsError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Most names one message asks for early: two walks (MAIL FROM and From:
/// domains) of at most eight names each. Past it, lookups wait for the
/// evaluation, whose own walks are bounded.
const EARLY_NAMES: usize = 16;

type TxtAnswer = Result<Vec<String>, Temporary>;
type Cell = Arc<tokio::sync::OnceCell<(TxtAnswer, Instant)>>;

/// The per-message store (see the module documentation).
#[derive(Default)]
pub struct DmarcDns {
    txt: Mutex<HashMap<Box<str>, Cell>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// When the evaluation started waiting for answers.
    since: Mutex<Option<Instant>>,
}

impl Drop for DmarcDns {
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

/// Names compare without case and without the final dot.
fn key_of(name: &str) -> Box<str> {
    name.trim_end_matches('.')
        .to_ascii_lowercase()
        .into_boxed_str()
}

async fn fetch(dns: &Dns, name: &str) -> (TxtAnswer, Instant) {
    let answer = match dns.txt(name).await {
        Ok(records) => Ok(records),
        // NXDOMAIN or no TXT record: no DMARC record here, an answer.
        Err(DnsError::NotFound) => Ok(Vec::new()),
        Err(DnsError::Temporary(e)) => Err(Temporary(e)),
    };
    (answer, Instant::now())
}

impl DmarcDns {
    /// Start asking for every name of the tree walk from `domain` (a
    /// normalised domain), in the background. Outside a tokio runtime the
    /// evaluation asks itself.
    pub fn prefetch(&self, dns: &Arc<Dns>, domain: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for d in walk_domains(domain) {
            let key = key_of(&format!("_dmarc.{d}"));
            let cell = {
                let mut txt = lock(&self.txt);
                if txt.contains_key(&key) || txt.len() >= EARLY_NAMES {
                    continue;
                }
                let cell = Cell::default();
                txt.insert(key.clone(), cell.clone());
                cell
            };
            let dns = dns.clone();
            let task = runtime.spawn(async move {
                cell.get_or_init(|| fetch(&dns, &key)).await;
            });
            lock(&self.tasks).push(task.abort_handle());
        }
    }

    /// The TXT records at `name`, asked for at most once per message (see
    /// the module documentation for temporary failures).
    async fn txt(&self, dns: &Dns, name: &str) -> TxtAnswer {
        let since = *lock(&self.since).get_or_insert_with(Instant::now);
        let key = key_of(name);
        let cell = lock(&self.txt).entry(key.clone()).or_default().clone();
        let (answer, at) = cell.get_or_init(|| fetch(dns, &key)).await.clone();
        if answer.is_err() && at < since {
            let fresh = Cell::default();
            lock(&self.txt).insert(key.clone(), fresh.clone());
            return fresh.get_or_init(|| fetch(dns, &key)).await.0.clone();
        }
        answer
    }

    /// How many names this message has asked for.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.txt).len()
    }
}

/// The evaluation's view: the message's store and the shared resolver.
pub struct MessageDns<'a> {
    /// The answers this message has already had, so one name is asked once.
    pub store: &'a DmarcDns,
    /// The shared resolver that asks for the rest.
    pub dns: &'a Dns,
}

impl Lookup for MessageDns<'_> {
    async fn txt(&self, name: &str) -> Result<Vec<String>, Temporary> {
        self.store.txt(self.dns, name).await
    }

    async fn exists(&self, domain: &str) -> Result<bool, Temporary> {
        match self.dns.exists(domain).await {
            Ok(exists) => Ok(exists),
            Err(DnsError::Temporary(e)) => Err(Temporary(e)),
            // `exists` does not answer NotFound; were it to, the name
            // would have answered something, so it exists.
            Err(DnsError::NotFound) => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefetch_asks_each_walk_name_once_and_is_capped() {
        let dns = crate::dns::unreachable_for_tests();
        let store = DmarcDns::default();
        store.prefetch(&dns, "mail.example.org");
        store.prefetch(&dns, "example.org");
        assert_eq!(store.len(), 3);
        store.prefetch(&dns, "a.b.c.d.e.f.g.h.i.example.net");
        store.prefetch(&dns, "a.b.c.d.e.f.g.h.i.example.com");
        assert_eq!(store.len(), EARLY_NAMES);
    }

    #[test]
    fn names_compare_without_case_or_final_dot() {
        assert_eq!(&*key_of("_DMARC.Example.ORG."), "_dmarc.example.org");
    }
}
