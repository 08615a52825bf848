//! Several futures run at once inside the task that awaits them, with no
//! task spawned for each. A check that asks DNS several questions (a DNSBL
//! with three lists, iprev with two PTR names) wants them in flight
//! together, but nearly every answer comes from a cache: a spawned task per
//! question cost an allocation, a trip through the scheduler and, with two
//! worker threads, often a wakeup of the other thread, which was more than
//! the cached lookup itself.
//!
//! Dropping a [`Concurrent`] drops the futures still running, which cancels
//! them, as dropping a `JoinSet` aborts its tasks. A panic in one of them
//! is not caught here: it unwinds into the awaiting check, whose runner
//! turns it into the check's error outcome.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

/// Futures polled together by whoever awaits [`Concurrent::next`].
pub struct Concurrent<F: Future> {
    /// `None` once a future has finished.
    running: Vec<Option<Pin<Box<F>>>>,
    left: usize,
}

impl<F: Future> Concurrent<F> {
    pub fn new() -> Concurrent<F> {
        Concurrent {
            running: Vec::new(),
            left: 0,
        }
    }

    /// Adds a future; it first runs at the next [`Concurrent::next`].
    pub fn push(&mut self, future: F) {
        self.running.push(Some(Box::pin(future)));
        self.left += 1;
    }

    /// How many futures have not finished yet.
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// The output of the next future to finish, or `None` when all have.
    /// Every unfinished future is polled on each wakeup: meant for a
    /// handful of futures, not thousands.
    pub async fn next(&mut self) -> Option<F::Output> {
        poll_fn(|cx| {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            for slot in self.running.iter_mut() {
                let Some(future) = slot else { continue };
                if let Poll::Ready(output) = future.as_mut().poll(cx) {
                    *slot = None;
                    self.left -= 1;
                    return Poll::Ready(Some(output));
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl<F: Future> Default for Concurrent<F> {
    fn default() -> Self {
        Concurrent::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn outputs_come_in_the_order_the_futures_finish() {
        let mut set = Concurrent::new();
        for (i, ms) in [(0, 60u64), (1, 0), (2, 30)] {
            set.push(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                i
            });
        }
        assert_eq!(set.len(), 3);
        let mut order = Vec::new();
        while let Some(i) = set.next().await {
            order.push(i);
        }
        assert_eq!(order, [1, 2, 0]);
        assert!(set.is_empty());
        assert_eq!(set.next().await, None, "done stays done");
    }

    /// The first future can only finish once the second has run: they
    /// make progress together in one task, not one after the other.
    #[tokio::test(flavor = "current_thread")]
    async fn the_futures_run_at_the_same_time_in_one_task() {
        let (tx, rx) = oneshot::channel::<u32>();
        let mut tx = Some(tx);
        let mut set: Concurrent<Pin<Box<dyn Future<Output = u32>>>> = Concurrent::new();
        set.push(Box::pin(async move { rx.await.unwrap_or(0) + 1 }));
        set.push(Box::pin(async move {
            tokio::task::yield_now().await;
            if let Some(tx) = tx.take() {
                let _ = tx.send(41);
            }
            7
        }));
        let limit = Duration::from_secs(5);
        let first = tokio::time::timeout(limit, set.next())
            .await
            .expect("no deadlock");
        let second = tokio::time::timeout(limit, set.next())
            .await
            .expect("no deadlock");
        assert_eq!((first, second), (Some(7), Some(42)));
    }

    #[tokio::test]
    async fn dropping_the_set_cancels_what_is_still_running() {
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let mut set: Concurrent<Pin<Box<dyn Future<Output = u8>>>> = Concurrent::new();
        set.push(Box::pin(async { 1 }));
        let (guard, done) = (SetOnDrop(dropped.clone()), finished.clone());
        set.push(Box::pin(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            done.store(true, Ordering::SeqCst);
            2
        }));
        assert_eq!(set.next().await, Some(1));
        assert!(!dropped.load(Ordering::SeqCst), "still running");
        drop(set);
        assert!(dropped.load(Ordering::SeqCst), "cancelled on drop");
        assert!(!finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn an_empty_set_is_done_at_once() {
        let mut set: Concurrent<std::future::Ready<()>> = Concurrent::default();
        assert!(set.is_empty());
        assert_eq!(set.next().await, None);
    }
}
