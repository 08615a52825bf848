//! Waiting in tests: on a condition, with a deadline, never a bare sleep.
//!
//! [`until`] and [`within`] return as soon as what the test waits for has
//! happened and fail (or say so) only after a generous limit, so a slow
//! machine makes a test slower, not red. [`holds_for`] is the one way a test
//! waits out a period on purpose: to show that something does *not* happen,
//! which no event can tell; it stops early if it does.
//!
//! Deadlines are on the real clock (`std::time::Instant`), so these work
//! under `tokio::time::pause` too, where the tokio clock jumps ahead
//! whenever the runtime is idle and would run out a limit at once.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How long a test waits for something that should happen at once: long
/// enough for a loaded machine, short enough to fail a hung test readably.
pub const WAIT: Duration = Duration::from_secs(10);

/// The first pause between two looks at a condition; it doubles up to
/// [`POLL_MAX`], so a quick event is seen quickly and a slow one (a queue
/// listed by running a command) is not asked about a thousand times.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(100);

fn next_poll(poll: Duration) -> Duration {
    (poll * 2).min(POLL_MAX)
}

/// Waits until `done` holds, for at most `limit`; whether it did.
pub async fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    within_async(limit, async || done()).await
}

/// [`within`] for a condition that must itself await (a connection attempt,
/// a command's output).
pub async fn within_async(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let mut poll = POLL_MIN;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
        poll = next_poll(poll);
    }
}

/// Waits until `done` holds; fails the test naming `what` after `limit`.
pub async fn until(limit: Duration, what: &str, done: impl FnMut() -> bool) {
    assert!(within(limit, done).await, "{what}: not within {limit:?}");
}

/// [`within`] for code outside a runtime (a plain thread, `Drop`).
pub fn within_blocking(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let mut poll = POLL_MIN;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(poll);
        poll = next_poll(poll);
    }
}

/// Whether `still` holds for the whole of `period` (false as soon as it
/// does not). This is a deliberate wait: the absence of an event (a
/// delivery, an exit, one lookup too many) can only be shown by watching for
/// it for a while, so `period` is as long as the thing would take to happen
/// if it were going to, and no longer.
pub async fn holds_for(period: Duration, mut still: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + period;
    let mut poll = POLL_MIN;
    loop {
        if !still() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        tokio::time::sleep(poll.min(end - now)).await;
        poll = next_poll(poll);
    }
}

/// Fail the test if `fut` takes longer than `limit` (guards run on unwind):
/// the bound on a whole test or a whole command, not a wait for an event.
pub async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {limit:?}"),
    }
}
