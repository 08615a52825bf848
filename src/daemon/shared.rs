//! State shared by every connection of the daemon: the current policy (swapped
//! whole on reload; a session keeps the one it started with), the metrics,
//! and the count of messages in flight that graceful shutdown waits for.

use super::metrics::Metrics;
use crate::policy::Policy;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;

/// What every connection of the daemon shares: the current policy, the metrics
/// and the count of messages in flight.
pub struct Shared {
    policy: RwLock<Arc<Policy>>,
    /// The daemon's counters and histograms.
    pub metrics: Arc<Metrics>,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Shared {
    /// Shared state that starts with `policy` and no message in flight.
    pub fn new(policy: Arc<Policy>, metrics: Arc<Metrics>) -> Shared {
        Shared {
            policy: RwLock::new(policy),
            metrics,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// The policy new sessions get.
    pub fn current(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Make `policy` the one new sessions get; sessions already open keep theirs.
    pub fn replace(&self, policy: Arc<Policy>) {
        match self.policy.write() {
            Ok(mut p) => *p = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }

    /// A message started (MAIL FROM accepted). The guard ends it when dropped:
    /// at end of message, abort, or when the connection goes away.
    pub(crate) fn message_started(self: &Arc<Self>) -> MessageGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        MessageGuard(self.clone())
    }

    /// How many messages are between MAIL FROM and their end right now.
    pub fn messages_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Wait until no message is in flight.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.messages_in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub(crate) struct MessageGuard(Arc<Shared>);

impl Drop for MessageGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
