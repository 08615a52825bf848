//! Sender authentication: SPF, DKIM, ARC and DMARC, and the per-message
//! [`Evidence`] through which their results reach each other.
//!
//! The checks (crate::checks) decide what a result is worth and report it;
//! establishing the result is done here, once per message however many
//! checks want it. DMARC needs the SPF and DKIM results, and an ARC chain
//! to honour a trusted sealer: it awaits them from the evidence instead of
//! establishing them again, and whichever check asks first does the work
//! while later askers wait for it.
//!
//! The evidence also holds the lookups started early, before the check
//! that needs them can run (the DKIM and ARC keys as their headers arrive,
//! the DMARC policy records at MAIL FROM and when From: arrives): the
//! engine hands it to every check's `prefetch`, and the lookups stop when
//! the evidence is dropped with its message.

pub mod arc;
pub mod dkim;
pub mod dmarc;
pub mod keys;
pub mod spf;

use crate::address::Address;
use crate::dns::Dns;
use crate::message::{ConnectionFacts, Message};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// What is established about one message (or, for the checks that start
/// at connect or HELO, one connection), each slot filled at most once.
#[derive(Default)]
pub struct Evidence {
    /// The SPF evaluation of the HELO identity (RFC 7208 §2.3).
    helo_spf: OnceCell<Arc<spf::SpfOutcome>>,
    /// The SPF evaluation of the MAIL FROM identity (§2.4).
    mail_from_spf: OnceCell<Arc<spf::SpfOutcome>>,
    /// Every DKIM signature verified (RFC 6376).
    dkim: OnceCell<Arc<dkim::DkimFacts>>,
    /// The ARC chain validated (RFC 8617).
    arc: OnceCell<Arc<arc::ArcFacts>>,
    /// The DKIM and ARC keys, asked for early.
    keys: keys::KeyStore,
    /// The DMARC policy records, asked for early.
    dmarc_records: dmarc::lookups::DmarcDns,
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evidence")
            .field("helo_spf", &self.helo_spf.get())
            .field("mail_from_spf", &self.mail_from_spf.get())
            .field("dkim", &self.dkim.get().map(|d| d.signatures.len()))
            .field("arc", &self.arc.get())
            .finish_non_exhaustive()
    }
}

impl Evidence {
    /// The SPF evaluation of the client's HELO name.
    pub async fn helo_spf(&self, dns: &Dns, connection: &ConnectionFacts) -> Arc<spf::SpfOutcome> {
        self.helo_spf
            .get_or_init(|| async { Arc::new(spf::evaluate_helo(dns, connection).await) })
            .await
            .clone()
    }

    /// The SPF evaluation of the envelope sender; for `<>` (or before MAIL
    /// FROM) the HELO evaluation, which is also the identity DMARC aligns
    /// (RFC 7208 §2.4, RFC 7489 §3.1.2).
    pub async fn mail_from_spf(
        &self,
        dns: &Dns,
        connection: &ConnectionFacts,
        sender: Option<&Address>,
    ) -> Arc<spf::SpfOutcome> {
        self.mail_from_spf
            .get_or_init(|| async {
                match sender {
                    Some(sender) if !sender.is_null() => {
                        Arc::new(spf::evaluate_mail_from(dns, connection, sender).await)
                    }
                    _ => self.helo_spf(dns, connection).await,
                }
            })
            .await
            .clone()
    }

    /// The DKIM verification of the message (empty before end of message).
    pub async fn dkim(&self, dns: &Dns, message: Option<&Message>) -> Arc<dkim::DkimFacts> {
        self.dkim
            .get_or_init(|| async { Arc::new(dkim::verify(dns, &self.keys, message).await) })
            .await
            .clone()
    }

    /// The ARC validation of the message (`none` before end of message).
    pub async fn arc(&self, dns: &Dns, message: Option<&Message>) -> Arc<arc::ArcFacts> {
        self.arc
            .get_or_init(|| async { Arc::new(arc::validate(dns, &self.keys, message).await) })
            .await
            .clone()
    }

    /// The message's DKIM and ARC keys, for lookups started early.
    pub fn keys(&self) -> &keys::KeyStore {
        &self.keys
    }

    /// The message's DMARC policy records, for lookups started early.
    pub fn dmarc_records(&self) -> &dmarc::lookups::DmarcDns {
        &self.dmarc_records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many checks ask, and whichever asks first, a fact is
    /// established once: the second asker gets the first one's result.
    #[tokio::test]
    async fn each_fact_is_established_once_and_shared() {
        let dns = crate::dns::unreachable_for_tests();
        let evidence = Evidence::default();
        // No client address: SPF is not evaluated, no query is sent.
        let connection = ConnectionFacts::default();
        let helo = evidence.helo_spf(&dns, &connection).await;
        // `<>` is the HELO identity: the same evaluation, not a second one.
        let null = Address::Null;
        let mail = evidence.mail_from_spf(&dns, &connection, Some(&null)).await;
        assert!(Arc::ptr_eq(&helo, &mail));
        let dkim = evidence.dkim(&dns, None).await;
        assert!(Arc::ptr_eq(&dkim, &evidence.dkim(&dns, None).await));
        assert!(dkim.signatures.is_empty());
        let arc = evidence.arc(&dns, None).await;
        assert_eq!(arc.status, crate::auth_results::Status::None);
        // A fresh message has evidence of its own.
        assert!(!Arc::ptr_eq(
            &dkim,
            &Evidence::default().dkim(&dns, None).await
        ));
        // Concurrent askers wait for the one evaluation in flight.
        let fresh = Evidence::default();
        let (a, b) = tokio::join!(fresh.dkim(&dns, None), fresh.dkim(&dns, None));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
