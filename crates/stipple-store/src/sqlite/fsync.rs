//! Making committed appends durable (with [`Synchronous::Full`](super::Synchronous::Full)):
//! one fsync of the write-ahead log for every group committed since the last, then the
//! answers those groups hold back.
//!
//! The writer hands each committed group with an append here ([`Durability::hand_over`])
//! and goes on to gather the next (see `writer`); the syncer thread (`stipple-store-sync`)
//! fsyncs once for every group waiting and answers them, so fsyncs run one at a time and
//! in order, and no async worker ever blocks in one.
//!
//! Why not have one of the waiting requests run the fsync on its own tokio worker and
//! wake the others there, as this store did for a while: that paid on a multi-threaded
//! runtime, but the ingress now serves its connections on single-threaded runtimes
//! (stipple-ingress `threads.rs`), where a request that runs the fsync blocks every
//! connection of its thread. Measured there, leading cut `/v1/track` at 256 connections
//! from 0.43-0.45 of the bare handler's rate to 0.40-0.41 (docs/operations.md, Sizing).
//!
//! A failed fsync makes every later request fail (`broken`), and the appends of groups
//! already waiting for a later fsync too, even when that fsync succeeds (Linux reports a
//! lost write-back once, and their frames follow the lost ones in the log). Fsyncs run
//! one at a time, so that "later" is well defined.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::Instant;

use super::writer::{Answers, BROKEN, Shared};

/// Runs the fsyncs of one store and answers the groups they make durable.
pub(super) struct Durability {
    /// The write-ahead log, for the log line of a failure.
    wal: PathBuf,
    /// The write-ahead log (SQLite keeps reusing this one file until it closes).
    file: File,
    /// Groups committed and waiting for an fsync, oldest first.
    waiting: Mutex<Vec<Answers>>,
    /// The syncer thread.
    syncer: OnceLock<Thread>,
    /// Set once the writer has stopped: the syncer ends after the groups left.
    closed: AtomicBool,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("wal", &self.wal)
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
            waiting: Mutex::new(Vec::new()),
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

    /// Takes a committed group whose answers wait for an fsync (the writer's call).
    pub(super) fn hand_over(&self, answers: Answers) {
        // Counted now, not once an fsync starts: the writer gathers the appends that
        // come meanwhile into its next group instead of committing them alone.
        self.shared.syncing.fetch_add(1, Ordering::SeqCst);
        lock(&self.waiting).push(answers);
        self.wake_syncer();
    }

    /// Tells the syncer that no group will come any more: it ends once it has made the
    /// groups left durable (the writer's call, as it stops).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake_syncer();
    }

    fn wake_syncer(&self) {
        if let Some(syncer) = self.syncer.get() {
            syncer.unpark();
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

    /// The syncer thread's loop: fsyncs once for every group waiting and answers them,
    /// until closed.
    fn run_syncer(&self) {
        loop {
            let closing = self.closed.load(Ordering::SeqCst);
            let pending = std::mem::take(&mut *lock(&self.waiting));
            if !pending.is_empty() {
                self.sync_and_answer(pending);
            }
            if closing {
                break;
            }
            if lock(&self.waiting).is_empty() {
                std::thread::park();
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Holds the fsync back while a test sets `hold`.
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test's hold, on the syncer's own thread
fn wait_while(hold: &AtomicBool) {
    while hold.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
