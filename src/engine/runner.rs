//! Runs checks as tokio tasks: each under its own timeout, a panic caught and
//! turned into temperror, results collected by check id, and every task still
//! running aborted when its message ends or its session is dropped.
//!
//! Checks the caller waits for at once (those that decide at the stage
//! that starts them, and everything at end of message) can instead run
//! inline: polled together inside the waiting task, still concurrently,
//! without a task, a channel hop and a wakeup of another worker thread
//! each. Inline checks make progress only while someone waits, which is
//! why a check that a later stage waits for runs as a task.

use crate::checks::{Check, CheckInput, CheckResult};
use crate::policy::{CheckId, CheckInstance};
use crate::stage::Stage;
use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Whether a result outlives the message it was started for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Inputs are connection facts only (client, HELO, TLS): reused by every
    /// message of the session.
    Connection,
    Message,
}

/// How a check runs: as a task of its own, or inline, polled by whoever
/// waits for it (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A tokio task of its own, which makes progress while nobody waits for it.
    Task,
    /// Polled inside the task that waits for it, with no spawn or channel hop.
    Inline,
}

/// A finished check.
#[derive(Clone, Debug)]
pub(crate) struct Finished {
    pub id: CheckId,
    pub result: CheckResult,
    pub elapsed: Duration,
    pub started_at: Stage,
}

enum State {
    Idle,
    Running {
        token: u64,
        /// `None` for an inline check, whose future is in `Runner::inline`.
        abort: Option<AbortHandle>,
        started_at: Stage,
    },
    Done(Finished),
}

struct Slot {
    state: State,
    scope: Scope,
}

struct Message {
    token: u64,
    id: CheckId,
    result: CheckResult,
    elapsed: Duration,
}

type InlineRun = (CheckId, Pin<Box<dyn Future<Output = Message> + Send>>);

pub(crate) struct Runner {
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Message>,
    /// Inline checks, polled by `wait_for`.
    inline: Vec<InlineRun>,
    slots: Vec<Slot>,
    next_token: u64,
    /// The largest number of checks seen running at once (for tests and the
    /// report: proof that checks overlap).
    in_flight_peak: usize,
}

impl Runner {
    pub fn new(check_count: usize) -> Runner {
        let (tx, rx) = mpsc::unbounded_channel();
        Runner {
            tx,
            rx,
            inline: Vec::new(),
            slots: (0..check_count)
                .map(|_| Slot {
                    state: State::Idle,
                    scope: Scope::Message,
                })
                .collect(),
            next_token: 0,
            in_flight_peak: 0,
        }
    }

    pub(crate) fn is_idle(&self, id: CheckId) -> bool {
        matches!(self.slots[id].state, State::Idle)
    }

    pub fn finished(&self, id: CheckId) -> Option<&Finished> {
        match &self.slots[id].state {
            State::Done(f) => Some(f),
            _ => None,
        }
    }

    fn running_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, State::Running { .. }))
            .count()
    }

    pub(crate) fn in_flight_peak(&self) -> usize {
        self.in_flight_peak
    }

    /// Start a check unless it already ran or runs. `Mode::Inline` only
    /// for a check the caller waits for next (see the module documentation).
    pub fn start(
        &mut self,
        id: CheckId,
        instance: &CheckInstance,
        input: &Arc<CheckInput>,
        scope: Scope,
        mode: Mode,
    ) {
        if self.is_idle(id) {
            self.spawn(id, instance, input, scope, mode);
        }
    }

    /// Start a check afresh, dropping an earlier run (a second EHLO after
    /// STARTTLS changes what the TLS checks see).
    pub fn restart(
        &mut self,
        id: CheckId,
        instance: &CheckInstance,
        input: &Arc<CheckInput>,
        scope: Scope,
    ) {
        self.abort(id);
        self.spawn(id, instance, input, scope, Mode::Task);
    }

    fn abort(&mut self, id: CheckId) {
        if let State::Running { abort, .. } = &self.slots[id].state {
            match abort {
                Some(task) => task.abort(),
                None => self.inline.retain(|(inline, _)| *inline != id),
            }
        }
        self.slots[id].state = State::Idle;
    }

    fn spawn(
        &mut self,
        id: CheckId,
        instance: &CheckInstance,
        input: &Arc<CheckInput>,
        scope: Scope,
        mode: Mode,
    ) {
        self.next_token += 1;
        let token = self.next_token;
        let check = instance.check.clone();
        let timeout = instance.timeout;
        let started_at = input.stage;
        let input = input.clone();
        let name = instance.name.clone();
        let run = async move {
            let started = Instant::now();
            let result = run_guarded(check, input, timeout, &name).await;
            Message {
                token,
                id,
                result,
                elapsed: started.elapsed(),
            }
        };
        let abort = match mode {
            Mode::Inline => {
                self.inline.push((id, Box::pin(run)));
                None
            }
            Mode::Task => {
                let tx = self.tx.clone();
                let task = tokio::spawn(async move {
                    // The receiver is gone only when the session ended;
                    // nothing to do.
                    let _ = tx.send(run.await);
                });
                Some(task.abort_handle())
            }
        };
        self.slots[id] = Slot {
            state: State::Running {
                token,
                abort,
                started_at,
            },
            scope,
        };
        self.in_flight_peak = self.in_flight_peak.max(self.running_count());
    }

    /// Wait until none of `ids` is running, or until `stop` says a finished
    /// check makes waiting for the others pointless, or until `deadline`:
    /// then the checks still running are aborted and count as temperror.
    /// Checks never started are not waited for.
    pub async fn wait_for(
        &mut self,
        ids: &[CheckId],
        stop: impl Fn(&Finished) -> bool,
        deadline: tokio::time::Instant,
    ) {
        if tokio::time::timeout_at(deadline, self.wait_inner(ids, stop))
            .await
            .is_err()
        {
            for &id in ids {
                if let State::Running { started_at, .. } = &self.slots[id].state {
                    let started_at = *started_at;
                    self.abort(id);
                    self.slots[id].state = State::Done(Finished {
                        id,
                        result: CheckResult::temperror("no answer within the stage deadline"),
                        elapsed: Duration::ZERO,
                        started_at,
                    });
                }
            }
        }
    }

    async fn wait_inner(&mut self, ids: &[CheckId], stop: impl Fn(&Finished) -> bool) {
        loop {
            let pending = ids
                .iter()
                .any(|id| matches!(self.slots[*id].state, State::Running { .. }));
            if !pending {
                return;
            }
            // The runner holds a sender itself, so `recv` cannot return None.
            let Some(msg) = self.next_result().await else {
                return;
            };
            self.accept(msg);
            // Results that are already in count before deciding to stop.
            while let Ok(msg) = self.rx.try_recv() {
                self.accept(msg);
            }
            if self.settled(ids, &stop) {
                return;
            }
        }
    }

    /// The next result: from a task, or from an inline check, polled here.
    /// Tasks first: a check that finished in its task before an inline one
    /// that depends on it (DMARC reads SPF's result) is heard first, so a
    /// reject from the inline one does not cancel what already finished.
    async fn next_result(&mut self) -> Option<Message> {
        let (inline, rx) = (&mut self.inline, &mut self.rx);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(msg) = rx.poll_recv(cx) {
                return Poll::Ready(msg);
            }
            for i in 0..inline.len() {
                if let Poll::Ready(msg) = inline[i].1.as_mut().poll(cx) {
                    // Order does not matter: results are kept by check id.
                    drop(inline.swap_remove(i));
                    return Poll::Ready(Some(msg));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Whether waiting longer is pointless: a finished check asks to stop (a
    /// reject). The checks still running are then cancelled, as the design
    /// asks, even one earlier in the config: the verdict is the same, and
    /// among the finished checks the earliest in the config gives the reply.
    fn settled(&self, ids: &[CheckId], stop: &impl Fn(&Finished) -> bool) -> bool {
        ids.iter()
            .any(|&id| matches!(&self.slots[id].state, State::Done(f) if stop(f)))
    }

    /// Record a result, unless it belongs to a run that was dropped since.
    fn accept(&mut self, msg: Message) {
        let slot = &mut self.slots[msg.id];
        let State::Running {
            token, started_at, ..
        } = slot.state
        else {
            return;
        };
        if token == msg.token {
            slot.state = State::Done(Finished {
                id: msg.id,
                result: msg.result,
                elapsed: msg.elapsed,
                started_at,
            });
        }
    }

    /// Abort every message-scoped check still running and forget all
    /// message-scoped results; connection-scoped ones stay.
    pub(crate) fn end_message(&mut self) {
        for id in 0..self.slots.len() {
            if self.slots[id].scope == Scope::Message {
                self.abort(id);
            }
        }
        while let Ok(msg) = self.rx.try_recv() {
            self.accept(msg);
        }
    }

    /// Abort the message-scoped checks still running, keeping finished results.
    /// Returns the ids that were cancelled.
    pub(crate) fn cancel_running(&mut self) -> Vec<CheckId> {
        let mut cancelled = Vec::new();
        for id in 0..self.slots.len() {
            if self.slots[id].scope == Scope::Message
                && matches!(self.slots[id].state, State::Running { .. })
            {
                self.abort(id);
                cancelled.push(id);
            }
        }
        cancelled
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Inline checks go with `self.inline`; tasks must be told.
        for slot in &self.slots {
            if let State::Running {
                abort: Some(task), ..
            } = &slot.state
            {
                task.abort();
            }
        }
    }
}

/// Run one check with its timeout; a panic, in `run` itself or in its future,
/// becomes temperror.
async fn run_guarded(
    check: Arc<dyn Check>,
    input: Arc<CheckInput>,
    timeout: Duration,
    name: &str,
) -> CheckResult {
    let future = match std::panic::catch_unwind(AssertUnwindSafe(|| check.run(input))) {
        Ok(f) => f,
        Err(panic) => return panicked(name, panic),
    };
    // Each poll of the check's future inside catch_unwind, so a panicking
    // check fails alone.
    match tokio::time::timeout(timeout, AssertUnwindSafe(future).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => panicked(name, panic),
        Err(_) => CheckResult::temperror(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        )),
    }
}

fn panicked(name: &str, panic: Box<dyn std::any::Any + Send>) -> CheckResult {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    tracing::error!(check = name, panic = %what, "check panicked; treating it as temperror");
    CheckResult::temperror("internal error in check")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::BoxFuture;
    use crate::checks::action::Action;
    use crate::reply::Reply;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts how often it was polled; passes after `delay`.
    struct Polled {
        polls: Arc<AtomicUsize>,
        delay: Duration,
    }

    impl Check for Polled {
        fn inputs(&self) -> Stage {
            Stage::Connect
        }

        fn run(self: Arc<Self>, _input: Arc<CheckInput>) -> BoxFuture<CheckResult> {
            Box::pin(async move {
                self.polls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                CheckResult::pass()
            })
        }
    }

    fn instance(polls: &Arc<AtomicUsize>) -> CheckInstance {
        CheckInstance {
            name: "polled".into(),
            kind: "test".into(),
            check: Arc::new(Polled {
                polls: polls.clone(),
                delay: Duration::from_millis(20),
            }),
            timeout: Duration::from_secs(5),
            actions: [Action::Ignore; 7],
            reject_reply: Reply::default_reject(),
            tempfail_reply: Reply::default_tempfail(),
            inputs: Stage::Connect,
            decides: Stage::Connect,
        }
    }

    fn input() -> Arc<CheckInput> {
        Arc::new(CheckInput {
            stage: Stage::Connect,
            connection: Arc::default(),
            envelope: None,
            message: None,
            queue_id: None,
            evidence: Arc::default(),
        })
    }

    #[tokio::test]
    async fn an_inline_check_runs_only_while_waited_for_and_a_task_runs_alone() {
        let (inline_polls, task_polls) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut runner = Runner::new(2);
        runner.start(
            0,
            &instance(&inline_polls),
            &input(),
            Scope::Message,
            Mode::Inline,
        );
        runner.start(
            1,
            &instance(&task_polls),
            &input(),
            Scope::Message,
            Mode::Task,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            task_polls.load(Ordering::SeqCst),
            1,
            "the task ran on its own"
        );
        assert_eq!(inline_polls.load(Ordering::SeqCst), 0, "nobody waited yet");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        runner.wait_for(&[0, 1], |_| false, deadline).await;
        assert_eq!(inline_polls.load(Ordering::SeqCst), 1);
        for id in [0, 1] {
            let finished = runner.finished(id).map(|f| f.result.status);
            assert_eq!(finished, Some(crate::checks::Status::Pass), "check {id}");
        }
    }

    #[tokio::test]
    async fn ending_the_message_drops_an_inline_check() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut runner = Runner::new(1);
        runner.start(0, &instance(&polls), &input(), Scope::Message, Mode::Inline);
        assert_eq!(runner.inline.len(), 1);
        runner.end_message();
        assert!(runner.inline.is_empty());
        assert!(runner.is_idle(0));
    }
}
