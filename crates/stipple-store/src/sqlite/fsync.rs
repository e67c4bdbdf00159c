//! Making committed appends durable (with [`Synchronous::Full`](super::Synchronous::Full)):
//! one fsync of the write-ahead log for every group committed since the last, then the
//! answers those groups hold back.
//!
//! Who runs the fsync. The writer hands each committed group with an append here
//! ([`Durability::hand_over`]) and goes on to gather the next (see `writer`). One of the
//! requests waiting for an answer then runs the fsync on its own thread, a tokio worker
//! (it *leads*), and answers every group it covers; the syncer thread runs it when no
//! waiting request can, and for groups of few requests or many rows, where a leader
//! would spare few wake-ups for a worker held long (see [`MAX_LED_ROWS`]). A leader
//! wakes the requests it answers on its own worker, where a thread outside the runtime
//! wakes each of them through the runtime's shared queue and often a parked worker too: measured on `/v1/track` at 256 connections,
//! leading cut the server's CPU per request from 28 to 26 µs by median and raised the
//! rate from 0.44 to 0.48 of the bare handler's (docs/operations.md, Sizing).
//!
//! What keeps a leader from hurting the runtime:
//! - A request leads only on a multi-threaded runtime of at least two workers: an fsync
//!   blocks its thread, and another worker must be left to serve everything else.
//! - At most one fsync runs at a time (the `fsync` lock). A leader that finds one
//!   running leaves the groups to it, and whoever ends an fsync looks again and hands on
//!   what came meanwhile; so at most one worker is ever blocked, even on a stalled disk.
//! - Nothing waits for a leader that is not there: a group handed over while no request
//!   that could lead is waiting, and the groups left when the last such request stops
//!   waiting (answered, or dropped by a client that went away), go to the syncer thread.
//!
//! A failed fsync makes every later request fail (`broken`), and the appends of groups
//! already waiting for a later fsync too, even when that fsync succeeds (Linux reports a
//! lost write-back once, and their frames follow the lost ones in the log). Fsyncs run
//! one at a time, so that "later" is well defined.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::Instant;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{Notify, oneshot};

use super::writer::{Answers, BROKEN, Shared};

/// A group is led only when it holds at least [`MIN_LED_REQUESTS`] requests waiting for
/// the fsync and wrote at most this many rows; the syncer thread takes the others. What
/// a leader spares is a wake-up from outside the runtime per request it answers, and
/// what it costs is a worker held for the fsync: at about 1 KiB a row, a group of more
/// rows would hold it for a millisecond or more (a few `/v1/batch` requests), for few
/// wake-ups spared. Single-event requests at 256 connections commit 20-80 a group.
pub(super) const MAX_LED_ROWS: usize = 256;
/// See [`MAX_LED_ROWS`].
const MIN_LED_REQUESTS: usize = 4;

/// Runs the fsyncs of one store and answers the groups they make durable.
pub(super) struct Durability {
    /// The write-ahead log, for the log line of a failure.
    wal: PathBuf,
    /// The write-ahead log (SQLite keeps reusing this one file until it closes).
    file: File,
    /// Held while an fsync runs and its groups are answered.
    fsync: Mutex<()>,
    /// Groups committed and waiting for an fsync, oldest first.
    waiting: Mutex<Vec<Answers>>,
    /// Wakes a waiting request to lead.
    leaders: Notify,
    /// Requests waiting for an answer that may lead.
    candidates: AtomicUsize,
    /// The syncer thread, for groups no request leads.
    syncer: OnceLock<Thread>,
    /// Set once the writer has stopped: the syncer ends after the groups left.
    closed: AtomicBool,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("wal", &self.wal)
            .field("candidates", &self.candidates)
            .finish_non_exhaustive()
    }
}

impl Durability {
    /// Fsyncs `file`, the log at `wal`, with the syncer thread started.
    pub(super) fn start(
        wal: PathBuf,
        file: File,
        shared: Arc<Shared>,
    ) -> std::io::Result<Arc<Self>> {
        let durability = Arc::new(Self {
            wal,
            file,
            fsync: Mutex::new(()),
            waiting: Mutex::new(Vec::new()),
            leaders: Notify::new(),
            candidates: AtomicUsize::new(0),
            syncer: OnceLock::new(),
            closed: AtomicBool::new(false),
            shared,
        });
        let syncer = Arc::clone(&durability);
        let thread = std::thread::Builder::new()
            .name("stipple-store-sync".into())
            .spawn(move || syncer.run_syncer())?;
        let _ = durability.syncer.set(thread.thread().clone());
        Ok(durability)
    }

    /// Takes a committed group whose answers wait for an fsync (the writer's call), of
    /// about `rows` rows written. Only a group of many small requests is led (see
    /// [`MAX_LED_ROWS`]); others go to the syncer thread.
    pub(super) fn hand_over(&self, answers: Answers, rows: usize) {
        let lead = answers.waiting() >= self.min_led_requests() && rows <= MAX_LED_ROWS;
        // Counted now, not once an fsync starts: the writer gathers the appends that
        // come meanwhile into its next group instead of committing them alone.
        self.shared.syncing.fetch_add(1, Ordering::SeqCst);
        lock(&self.waiting).push(answers);
        if lead {
            self.wake_one();
        } else {
            self.wake_syncer();
        }
    }

    /// [`MIN_LED_REQUESTS`], or 1 while a test sets `lead_groups_of_one`.
    fn min_led_requests(&self) -> usize {
        #[cfg(test)]
        if self.shared.lead_groups_of_one.load(Ordering::Relaxed) {
            return 1;
        }
        MIN_LED_REQUESTS
    }

    /// Tells the syncer that no group will come any more: it ends once it has made the
    /// groups left durable (the writer's call, as it stops).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake_syncer();
    }

    /// Waits for `answer`, leading the fsync when asked to and this thread may.
    pub(super) async fn wait<T>(
        &self,
        answer: oneshot::Receiver<T>,
    ) -> Result<T, oneshot::error::RecvError> {
        if !may_lead() {
            return answer.await;
        }
        let _candidate = Candidate::new(self);
        tokio::pin!(answer);
        loop {
            tokio::select! {
                biased;
                answered = &mut answer => return answered,
                () = self.leaders.notified() => self.sync(false),
            }
        }
    }

    /// A waiting request to lead, or the syncer when none is there.
    fn wake_one(&self) {
        if self.candidates.load(Ordering::SeqCst) > 0 {
            self.leaders.notify_one();
        } else {
            self.wake_syncer();
        }
    }

    fn wake_syncer(&self) {
        if let Some(syncer) = self.syncer.get() {
            syncer.unpark();
        }
    }

    /// Fsyncs once for every group waiting and answers them. With `block` false (a
    /// leader) it leaves them to the fsync already running, if one is.
    fn sync(&self, block: bool) {
        let running = if block {
            Some(lock(&self.fsync))
        } else {
            match self.fsync.try_lock() {
                Ok(running) => Some(running),
                Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        };
        let Some(running) = running else {
            return;
        };
        let pending = std::mem::take(&mut *lock(&self.waiting));
        if !pending.is_empty() {
            #[cfg(test)]
            if !block {
                self.shared.led.fetch_add(1, Ordering::Relaxed);
            }
            self.sync_and_answer(pending);
        }
        drop(running);
        // Groups that came while this fsync ran, whose leader found it running.
        if !lock(&self.waiting).is_empty() {
            self.wake_one();
        }
    }

    fn sync_and_answer(&self, pending: Vec<Answers>) {
        let shared = &*self.shared;
        #[cfg(test)]
        wait_while(&shared.hold_syncs);
        let started = Instant::now();
        #[cfg(test)]
        let synced = if shared.fail_next_sync.swap(false, Ordering::AcqRel) {
            Err(std::io::Error::other("injected fsync failure"))
        } else {
            self.file.sync_data()
        };
        #[cfg(not(test))]
        let synced = self.file.sync_data();
        #[cfg(test)]
        wait_while(&shared.hold_after_sync);
        let error = match synced {
            // An fsync that succeeds after one failed proves nothing: Linux reports a
            // lost write-back once per file, and these frames follow the lost ones in
            // the log, which recovery stops reading at the first bad frame.
            Ok(()) if shared.broken.load(Ordering::Acquire) => Some(BROKEN),
            Ok(()) => {
                metrics::histogram!(crate::FSYNC_SECONDS).record(started.elapsed());
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::error!(error = %e, wal = %self.wal.display(), "store fsync failed");
                // After a failed fsync the kernel may have dropped the dirty pages:
                // nothing written since can be promised durable.
                shared.broken.store(true, Ordering::Release);
                Some(BROKEN)
            }
        };
        let ended = pending.len();
        for answers in pending {
            answers.send(error);
        }
        shared.syncing.fetch_sub(ended, Ordering::SeqCst);
        // The writer may be gathering appends until this fsync ends.
        if let Some(writer) = shared.writer.get() {
            writer.unpark();
        }
    }

    /// The syncer thread's loop: makes durable what no request leads, until closed.
    fn run_syncer(&self) {
        loop {
            let closing = self.closed.load(Ordering::SeqCst);
            self.sync(true);
            if closing {
                break;
            }
            std::thread::park();
        }
    }
}

/// Whether a request waiting on this thread may lead: only on a multi-threaded runtime
/// of two workers or more, so that a worker blocked in an fsync leaves another free.
fn may_lead() -> bool {
    Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == RuntimeFlavor::MultiThread
            && runtime.metrics().num_workers() >= 2
    })
}

/// A request counted among those that may lead, while it waits.
struct Candidate<'a>(&'a Durability);

impl<'a> Candidate<'a> {
    fn new(durability: &'a Durability) -> Self {
        durability.candidates.fetch_add(1, Ordering::SeqCst);
        Self(durability)
    }
}

impl Drop for Candidate<'_> {
    fn drop(&mut self) {
        let durability = self.0;
        // The last one out leaves the groups still waiting to the syncer. (Against the
        // writer's `hand_over`: it counts the group before it looks for candidates, this
        // stops being one before it looks for groups, so one of the two sees the other.)
        if durability.candidates.fetch_sub(1, Ordering::SeqCst) == 1
            && durability.shared.syncing.load(Ordering::SeqCst) > 0
        {
            durability.wake_syncer();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Holds the fsync back while a test sets `hold`.
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test's hold, on whichever thread runs the fsync
fn wait_while(hold: &AtomicBool) {
    while hold.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
