//! The writer thread: it owns the SQLite connection and runs every request sent to it,
//! committing all requests that are waiting together in one transaction (group commit),
//! so concurrent HTTP requests share one fsync. Appends are answered only once the
//! commit is durable; every other request as soon as its transaction has committed (see
//! [`Reply`]).
//!
//! A request that fails is undone alone: the group's transaction is rolled back and run
//! again without it, so the others still commit. What the requests changed in the
//! in-memory leases and dedup keys is rolled back with it (see `Leases::begin`,
//! `DedupIndex::rollback`); the dedup keys a group claimed are written as one row just
//! before it commits (`DedupIndex::flush`). (Not a savepoint per request: those
//! cost a statement journal and two statements each, a third of the writer's time on
//! single-event appends, to guard against failures that in practice come from the disk
//! and fail every request alike. A second failure in one group therefore fails the rest
//! of the group with it rather than trying each request alone.) Each transaction also
//! adds what it changed to the `counts` row and reads it back, for `stats`.
//!
//! SQLite itself runs with `synchronous=NORMAL` (no fsync on commit). With
//! [`Synchronous::Full`](super::Synchronous::Full) the writer fsyncs the write-ahead log
//! itself after each commit that holds an append ([`Log::sync`]), and only then answers
//! the group's appends; the requests that need no fsync are answered before it. What
//! arrives during the fsync waits in the channel and forms the next group, so one commit
//! and one fsync serve every append that came meanwhile: fsync latency costs answer
//! time, and no async worker ever blocks in an fsync. The WAL holds every committed
//! frame in order and recovery keeps each transaction whose frames are all on disk, so an
//! fsync of the WAL after COMMIT makes that commit as durable as SQLite's own
//! `synchronous=FULL` would.
//!
//! Why the writer fsyncs small groups itself, and not a thread of its own beside it:
//! the commit, the fsync and the answers follow one another on every group either way,
//! and the hand-off to a syncer and back cost two thread wake-ups per group on that
//! path, each waiting for a core under load. Measured on `/v1/track` at 256 connections
//! with delivery paused, in alternated runs, the writer fsyncing itself served 4-6% more
//! requests (16% more at 32 connections); the price is that a lease or an ack arriving
//! during an fsync waits for it to end (docs/performance.md).
//!
//! Big groups (of [`SYNC_ASIDE_WEIGHT`] rows or more: batches) are the exception: their
//! commit and their fsync each take milliseconds, so the writer hands the fsync and the
//! group's durable answers to the syncer thread ([`Syncer`]) and commits the next group
//! while the disk writes this one. So does every group committed while the syncer still
//! has an fsync to run, so that fsyncs never overlap and run in commit order: an fsync
//! covers every commit before it, and none runs after one failed. Measured with
//! `/v1/batch` on a day of slow fsyncs (6 ms for a group's 0.8 MB, its commit 8 ms),
//! alternated runs: a median of 107,000 events/s against 94,000 with delivery paused,
//! 73,000 against 64,000 with it running; `/v1/track` unchanged (docs/performance.md).
//!
//! Why not have one of the waiting requests run the fsync on its own tokio worker and
//! wake the others there, as this store did for a while: that paid on a multi-threaded
//! runtime, but the ingress serves its connections on single-threaded runtimes
//! (stipple-ingress `threads.rs`), where a request that runs the fsync blocks every
//! connection of its thread. Measured there, it cut `/v1/track` at 256 connections from
//! 0.43-0.45 of the bare handler's rate to 0.40-0.41 (docs/performance.md).
//!
//! Why a writer thread, and not the callers themselves taking turns at committing on
//! their own tokio workers, which spares a hand-off: built in full and measured against
//! this design in the same runs, that store did better with delivery paused and worse
//! with delivery running. The figures are in docs/performance.md.
//!
//! Why only appends wait for an fsync (the others may wait for one in progress, never
//! for one of their own). Recovery after a power loss keeps a *prefix* of
//! the committed transactions (WAL frames are checksummed in a chain, and SQLite fsyncs
//! the WAL before each checkpoint even at `synchronous=NORMAL`): a transaction that
//! survives brings every earlier one with it, and the next fsync (of a later append, or
//! the checkpoint's) makes every earlier commit durable too. So for each request
//! answered without an fsync, losing it means:
//! - `lease`: nothing; leases are not written at all (they live in memory).
//! - `ack`: the event is delivered again (delivery is at-least-once).
//! - `retry`: the event is due at once after the restart, one attempt less counted
//!   (the retry horizon counts from when it was queued, so this cannot go on forever).
//! - `release`: nothing; it writes nothing.
//! - `dead_letter`: the event is queued again and tried again.
//! - `requeue_dead_letters`: the dead letters stay dead letters; requeue them again.
//! - `expire_dedup`: the keys are back in the table and the index rebuilt at open;
//!   the next expiry takes them.
//! - reads (listings): they may show a commit that is then lost.
//!
//! A failed fsync makes every later request fail (`broken`): after it, even an fsync
//! that succeeds proves nothing (Linux reports a lost write-back once, and later frames
//! follow the lost ones in the log); requests answered at commit before it are like
//! those lost to a power loss above.
//!
//! Ordering: a lease in the group of an append is answered before that append's fsync,
//! and may hand out the event whose append has committed but is not yet durable; that event
//! may be delivered and even acknowledged before its append is answered. If
//! that append is then lost (power loss) or fails (fsync error), its caller never got a
//! 200 and sends it again: Pointillist sees it twice, which at-least-once allows; and by
//! the prefix rule the lease and ack of a lost append are lost with it, so no state on
//! disk ever refers to an event that is not there. The reverse, an append answered
//! before a commit it depends on is durable, cannot happen: appends depend on no other
//! request, and the fsync that answers an append covers every commit before it.

use std::fs::File;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rusqlite::{CachedStatement, Connection};
use tokio::sync::{mpsc, oneshot, watch};

use super::dedup::DedupIndex;
use crate::clock::Clock;
use crate::time::{Micros, to_micros};
use crate::{STORE_WARNINGS_EVERY, StoreError, Throttle};

/// At most this many requests share one transaction.
const MAX_GROUP_REQUESTS: usize = 1024;
/// A group stops taking requests once their weights (≈ rows written) reach this.
const MAX_GROUP_WEIGHT: usize = 20_000;
/// A group of this weight or more has its fsync run by the [`Syncer`] (see the module
/// docs): several batches, never the single-event requests of even 256 connections.
pub(super) const SYNC_ASIDE_WEIGHT: usize = 512;

/// What a request changed in the row counts, added to the `counts` row at commit.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Delta {
    pub(super) queued: i64,
    pub(super) dead_letters: i64,
    pub(super) rejected: i64,
    /// Whether one of the requests added together queued events (`queued` may still
    /// fall, with acks in the same group).
    pub(super) grew: bool,
}

impl Delta {
    fn add(&mut self, other: Self) {
        self.grew |= other.grew || other.queued > 0;
        self.queued += other.queued;
        self.dead_letters += other.dead_letters;
        self.rejected += other.rejected;
    }

    fn is_zero(&self) -> bool {
        self.queued == 0 && self.dead_letters == 0 && self.rejected == 0
    }
}

/// What the store handle and the writer thread share: counts mirrored from the `counts`
/// row after each commit, so that `stats` costs nothing whatever the queue length.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) queued: AtomicI64,
    pub(super) dead_letters: AtomicI64,
    pub(super) rejected: AtomicI64,
    pub(super) commits: AtomicU64,
    pub(super) syncs: AtomicU64,
    /// Counts the commits that queued events ([`crate::Store::queued_signal`]).
    pub(super) queued_signal: watch::Sender<u64>,
    /// Set when an fsync failed: from then on every request fails.
    pub(super) broken: AtomicBool,
    /// While set, the next fsync waits before it runs (to test who waits for it).
    #[cfg(test)]
    pub(super) hold_syncs: AtomicBool,
    /// While set, an fsync waits after it ran, before it tells anyone how it went.
    #[cfg(test)]
    pub(super) hold_after_sync: AtomicBool,
    /// When set, the syncer thread panics on the next group handed to it.
    #[cfg(test)]
    pub(super) panic_syncer: AtomicBool,
    /// When set, the next fsync fails (to test what follows).
    #[cfg(test)]
    pub(super) fail_next_sync: AtomicBool,
}

impl Shared {
    pub(super) fn publish(&self, (queued, dead_letters, rejected): (i64, i64, i64)) {
        self.queued.store(queued, Ordering::Relaxed);
        self.dead_letters.store(dead_letters, Ordering::Relaxed);
        self.rejected.store(rejected, Ordering::Relaxed);
    }
}

/// What the writer thread owns: the connection, the in-memory dedup index and leases.
/// The connection is shared (`Rc`) with the statements a group prepares once for its
/// transaction ([`Prepared`]), which borrow it while the group's requests get `&mut Db`.
#[derive(Debug)]
pub(super) struct Db {
    pub(super) conn: Rc<Connection>,
    pub(super) dedup: DedupIndex,
    pub(super) leases: super::leases::Leases,
    /// The store's clock: leases are measured on its monotonic time.
    pub(super) clock: Arc<dyn Clock>,
    /// Pokes the checkpointer thread (a service's store only).
    pub(super) checkpoints: Option<super::checkpoint::Trigger>,
    /// A service's hold on the store's lock file, kept for as long as the writer runs;
    /// let go last, once `conn` has closed.
    pub(super) _service_lock: Option<Connection>,
}

/// Statements prepared once for a group's transaction and shared by its requests: one
/// `INSERT` statement for every append of the group, where preparing it from rusqlite's
/// cache for each append (hashing its text to find it, then resetting it and putting it
/// back) cost about 1,400 instructions a single-event append, a tenth of the writer's work
/// for it (docs/performance.md).
pub(super) struct Prepared<'c> {
    conn: &'c Connection,
    insert_event: Option<CachedStatement<'c>>,
}

impl<'c> Prepared<'c> {
    pub(super) fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            insert_event: None,
        }
    }

    /// The statement that queues an event ([`super::ops::INSERT_EVENT`]).
    pub(super) fn insert_event(&mut self) -> rusqlite::Result<&mut CachedStatement<'c>> {
        match &mut self.insert_event {
            Some(statement) => Ok(statement),
            empty => Ok(empty.insert(self.conn.prepare_cached(super::ops::INSERT_EVENT)?)),
        }
    }
}

/// What a request does in its group's transaction: returns its value and what it changed
/// in the counts. Closures over the `Db` are jobs; so is an append, which takes its group's
/// prepared statement.
pub(super) trait Job<T>: Send {
    fn run(
        &mut self,
        db: &mut Db,
        prepared: &mut Prepared<'_>,
        now: Micros,
    ) -> rusqlite::Result<(T, Delta)>;
}

impl<T, F> Job<T> for F
where
    F: FnMut(&mut Db, Micros) -> rusqlite::Result<(T, Delta)> + Send,
{
    fn run(
        &mut self,
        db: &mut Db,
        _: &mut Prepared<'_>,
        now: Micros,
    ) -> rusqlite::Result<(T, Delta)> {
        self(db, now)
    }
}

/// When a request is answered (the module docs explain which need which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// Once its commit is durable: after an fsync with
    /// [`Synchronous::Full`](super::Synchronous::Full). Appends (the ingress answers 200
    /// on them) and the readiness check.
    Durable,
    /// As soon as its transaction has committed, before its group's fsync (it may have
    /// waited in the channel for the last group's fsync to end): losing the commit to a
    /// power loss costs at most a redelivery or a repeated step.
    Committed,
}

/// A request to the writer thread.
pub(super) trait Work: Send {
    /// Roughly how many rows it writes, to bound the size of a group.
    fn weight(&self) -> usize;
    /// When it is answered.
    fn reply(&self) -> Reply;
    /// Runs it inside the group's transaction; returns what it changed, or why it failed.
    /// It may run again in a later transaction when this one is rolled back because
    /// another request failed: it must then do the same again.
    fn run(
        &mut self,
        db: &mut Db,
        prepared: &mut Prepared<'_>,
        now: Micros,
    ) -> Result<Delta, String>;
    /// Answers it once its group has ended (`Err` with why the group failed): with what
    /// its last run returned, or with the error. The request itself waits for this, not a
    /// closure made of its answer: one allocation a request fewer on the writer.
    fn answer(self: Box<Self>, ended: Result<(), &str>);
    /// Answers with an error (without running, or after a failed run).
    fn fail(self: Box<Self>, error: &str);
}

/// A request: a job over the connection and the current time, and where to answer.
pub(super) struct Call<T, F> {
    pub(super) weight: usize,
    pub(super) reply_when: Reply,
    pub(super) f: F,
    pub(super) reply: oneshot::Sender<Result<T, StoreError>>,
    /// What the last run returned.
    pub(super) value: Option<T>,
}

impl<T, F> Work for Call<T, F>
where
    T: Send + 'static,
    F: Job<T>,
{
    fn weight(&self) -> usize {
        self.weight
    }

    fn reply(&self) -> Reply {
        self.reply_when
    }

    fn run(
        &mut self,
        db: &mut Db,
        prepared: &mut Prepared<'_>,
        now: Micros,
    ) -> Result<Delta, String> {
        let (value, delta) = self.f.run(db, prepared, now).map_err(|e| e.to_string())?;
        self.value = Some(value);
        Ok(delta)
    }

    fn answer(self: Box<Self>, ended: Result<(), &str>) {
        let Call { reply, value, .. } = *self;
        let answer = match (ended, value) {
            (Ok(()), Some(value)) => Ok(value),
            (Ok(()), None) => Err(StoreError::Database("the request never ran".into())),
            (Err(e), _) => Err(StoreError::Database(e.to_owned())),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = reply.send(answer);
    }

    fn fail(self: Box<Self>, error: &str) {
        let _ = self.reply.send(Err(StoreError::Database(error.to_owned())));
    }
}

/// A committed group's answers: those sent at once, and those sent once the commit is
/// durable.
pub(super) struct Answers {
    /// [`Reply::Committed`] requests (and, without fsyncs, all of them).
    committed: Vec<Box<dyn Work>>,
    /// [`Reply::Durable`] requests.
    durable: Vec<Box<dyn Work>>,
    commit_error: Option<String>,
}

impl Answers {
    /// Answers every caller; `error` overrides success.
    fn send(self, error: Option<&str>) {
        let ended = match error.or(self.commit_error.as_deref()) {
            Some(e) => Err(e),
            None => Ok(()),
        };
        for work in self.committed.into_iter().chain(self.durable) {
            work.answer(ended);
        }
    }

    /// Answers the callers that need not wait for an fsync; keeps the others.
    fn send_committed(&mut self) {
        let ended = match self.commit_error.as_deref() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        for work in self.committed.drain(..) {
            work.answer(ended);
        }
    }
}

/// The writer thread's loop: ends when every store handle is gone. With `log`, appends
/// are answered once it is fsynced; without, every answer goes out once SQLite has
/// committed.
pub(super) fn run(
    mut db: Db,
    clock: Arc<dyn Clock>,
    mut requests: mpsc::Receiver<Box<dyn Work>>,
    shared: Arc<Shared>,
    log: Option<Log>,
) {
    let mut group: Vec<Box<dyn Work>> = Vec::with_capacity(MAX_GROUP_REQUESTS);
    let syncer = log
        .as_ref()
        .and_then(|log| match Syncer::start(log, &shared) {
            Ok(syncer) => Some(syncer),
            Err(error) => {
                tracing::warn!(%error, "cannot start the store's syncer thread: the writer runs every fsync");
                None
            }
        });
    while let Some(first) = requests.blocking_recv() {
        let mut weight = first.weight();
        group.push(first);
        // Everything that came during the last commit and fsync.
        weight = take_waiting(&mut requests, &mut group, weight);
        if shared.broken.load(Ordering::Acquire) {
            for work in group.drain(..) {
                work.fail(BROKEN);
            }
            continue;
        }
        let started = Instant::now();
        let mut answers = commit_group(&mut db, &*clock, &mut group, &shared);
        metrics::histogram!(crate::COMMIT_SECONDS).record(started.elapsed());
        if let (None, Some(checkpoints)) = (&answers.commit_error, &mut db.checkpoints) {
            checkpoints.wrote(weight);
        }
        match &log {
            Some(log) if answers.commit_error.is_none() => {
                // Committed: leases, acks and the like go out now, before any fsync.
                answers.send_committed();
                // Only a group with an append (or readiness check) needs the fsync; a
                // later one covers this group's frames too (the WAL is written in order).
                if answers.durable.is_empty() {
                    answers.send(None);
                } else if let Some(answers) = match &syncer {
                    Some(syncer) => syncer.take(weight, answers),
                    None => Some(answers),
                } {
                    let error = log.sync(&shared);
                    answers.send(error);
                }
            }
            _ => answers.send(None),
        }
        if let Some(checkpoints) = &db.checkpoints {
            checkpoints.restart_if_asked(&db.conn);
        }
    }
    if let Some(syncer) = syncer {
        syncer.stop();
    }
    tracing::debug!("store writer stopping: no handle left");
}

/// Moves the requests waiting in the channel into `group` (of weight `weight`), up to
/// the group limits; returns the group's new weight.
fn take_waiting(
    requests: &mut mpsc::Receiver<Box<dyn Work>>,
    group: &mut Vec<Box<dyn Work>>,
    mut weight: usize,
) -> usize {
    while group.len() < MAX_GROUP_REQUESTS && weight < MAX_GROUP_WEIGHT {
        match requests.try_recv() {
            Ok(next) => {
                weight += next.weight();
                group.push(next);
            }
            Err(_) => break,
        }
    }
    weight
}

/// The writer's failures to begin or commit: one logged per interval (a full disk fails
/// every group), with how many like it were held back.
static FAILURES: Throttle = Throttle::new(STORE_WARNINGS_EVERY);

/// The answer to every request once an fsync has failed.
pub(super) const BROKEN: &str = "an fsync of the store's write-ahead log failed, so what it holds is \
                      uncertain: check the disk and restart stipple";

/// The write-ahead log, open for the writer's fsyncs ([`Synchronous::Full`](super::Synchronous::Full)).
/// SQLite keeps reusing this one file until the connection closes.
#[derive(Debug)]
pub(super) struct Log {
    pub(super) path: PathBuf,
    pub(super) file: File,
}

impl Log {
    /// Fsyncs the log: every group committed so far is then durable. Answers the error
    /// every request of the group is to get, if any.
    fn sync(&self, shared: &Shared) -> Option<&'static str> {
        // Set by a failed fsync on the other thread (see below).
        if shared.broken.load(Ordering::Acquire) {
            return Some(BROKEN);
        }
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
        // No fsync follows a failed one (one that succeeded after it would prove
        // nothing: Linux reports a lost write-back once per file, and later frames
        // follow the lost ones in the log, which recovery stops reading at the first
        // bad frame): `run` fails every group once `broken` is set, before committing
        // it, and a group committed before that, handed to the syncer while this fsync
        // ran, meets the check at the top.
        match synced {
            Ok(()) => {
                metrics::histogram!(crate::FSYNC_SECONDS).record(started.elapsed());
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::error!(error = %e, wal = %self.path.display(), "store fsync failed");
                // After a failed fsync the kernel may have dropped the dirty pages:
                // nothing written since can be promised durable.
                shared.broken.store(true, Ordering::Release);
                Some(BROKEN)
            }
        }
    }
}

/// The syncer thread: fsyncs the log for the groups the writer hands it, in the order
/// they committed (one fsync for all those waiting), then answers their appends.
struct Syncer {
    groups: std::sync::mpsc::Sender<Answers>,
    /// Groups handed over whose fsync has not returned yet: while there are any, the
    /// writer hands over every group, so that fsyncs never overlap.
    pending: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    fn start(log: &Log, shared: &Arc<Shared>) -> std::io::Result<Self> {
        let log = Log {
            path: log.path.clone(),
            file: log.file.try_clone()?,
        };
        let (groups, handed) = std::sync::mpsc::channel::<Answers>();
        let pending = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (shared, pending) = (Arc::clone(shared), Arc::clone(&pending));
            std::thread::Builder::new()
                .name("stipple-store-syncer".into())
                .spawn(move || {
                    while let Ok(first) = handed.recv() {
                        #[cfg(test)]
                        assert!(
                            !shared.panic_syncer.load(Ordering::Acquire),
                            "the syncer panics, as a test asked"
                        );
                        let mut waiting = vec![first];
                        waiting.extend(handed.try_iter());
                        let error = log.sync(&shared);
                        // Before the answers: the writer may run the next fsync itself.
                        pending.fetch_sub(waiting.len(), Ordering::AcqRel);
                        for answers in waiting {
                            answers.send(error);
                        }
                    }
                })?
        };
        Ok(Self {
            groups,
            pending,
            thread,
        })
    }

    /// Takes a committed group of `weight` whose durable answers wait for an fsync, if
    /// it is to have its fsync run here: a big one, or any while a group handed over
    /// still waits for its fsync. Gives it back for the writer to fsync otherwise, and
    /// always once the thread is gone (it panicked).
    fn take(&self, weight: usize, answers: Answers) -> Option<Answers> {
        if self.thread.is_finished()
            || (weight < SYNC_ASIDE_WEIGHT && self.pending.load(Ordering::Acquire) == 0)
        {
            return Some(answers);
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        let std::sync::mpsc::SendError(answers) = self.groups.send(answers).err()?;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        tracing::error!("the store's syncer thread is gone: the writer runs its fsyncs");
        Some(answers)
    }

    /// Lets the thread answer what it holds, and waits for it to end.
    fn stop(self) {
        drop(self.groups);
        if self.thread.join().is_err() {
            tracing::error!("the store's syncer thread panicked");
        }
    }
}

/// Holds the thread running an fsync (the writer or the syncer) while a test sets `hold`.
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the store's own threads, not tokio workers
fn wait_while(hold: &AtomicBool) {
    while hold.load(Ordering::Acquire) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Runs `group` in one transaction; returns the answers, to send once it is durable.
/// A request that fails is answered at once and the transaction run again without it;
/// a second failure fails every request left (see the module docs).
fn commit_group(
    db: &mut Db,
    clock: &dyn Clock,
    group: &mut Vec<Box<dyn Work>>,
    shared: &Shared,
) -> Answers {
    let mut retried = false;
    let total = loop {
        if let Err(e) = execute(&db.conn, "BEGIN IMMEDIATE") {
            let error = e.to_string();
            if let Some(held_back) = FAILURES.admit() {
                tracing::warn!(%error, held_back, "store transaction could not begin");
            }
            return fail_all(group, error);
        }
        db.leases.begin();
        db.dedup.rollback();
        match run_all(db, clock, group) {
            Ok(total) => break total,
            Err((at, error)) => {
                rollback(db);
                group.remove(at).fail(&error);
                if retried {
                    return fail_all(group, error);
                }
                retried = true;
            }
        }
    };
    // The counts row also picks up what other processes (admin commands) changed.
    let conn = &db.conn;
    let ended = db
        .dedup
        .flush(conn)
        .and_then(|()| update_counts(conn, total))
        .and_then(|counts| execute(conn, "COMMIT").map(|()| counts));
    let commit_error = match ended {
        Ok(counts) => {
            db.leases.commit();
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared.publish(counts);
            if total.grew {
                // Leasable now, before the fsync (see "Ordering" in the module docs).
                shared.queued_signal.send_modify(|commits| *commits += 1);
            }
            None
        }
        Err(e) => {
            let error = e.to_string();
            if let Some(held_back) = FAILURES.admit() {
                tracing::warn!(%error, held_back, "store commit failed");
            }
            rollback(db);
            Some(error)
        }
    };
    let mut committed = Vec::with_capacity(group.len());
    let mut durable = Vec::new();
    for work in group.drain(..) {
        match work.reply() {
            Reply::Durable => durable.push(work),
            Reply::Committed => committed.push(work),
        }
    }
    Answers {
        committed,
        durable,
        commit_error,
    }
}

/// Runs every request of `group` in the open transaction; returns their changes, or
/// where the first failure was and why.
fn run_all(
    db: &mut Db,
    clock: &dyn Clock,
    group: &mut [Box<dyn Work>],
) -> Result<Delta, (usize, String)> {
    let conn = Rc::clone(&db.conn);
    let mut prepared = Prepared::new(&conn);
    let mut total = Delta::default();
    for (at, work) in group.iter_mut().enumerate() {
        let now = to_micros(clock.now());
        total.add(work.run(db, &mut prepared, now).map_err(|e| (at, e))?);
    }
    Ok(total)
}

/// Answers every request of `group` with `error`.
fn fail_all(group: &mut Vec<Box<dyn Work>>, error: String) -> Answers {
    for work in group.drain(..) {
        work.fail(&error);
    }
    Answers {
        committed: Vec::new(),
        durable: Vec::new(),
        commit_error: Some(error),
    }
}

/// Ends the open transaction, if SQLite has not already ended it after an error, and
/// undoes what it changed in the leases.
fn rollback(db: &mut Db) {
    let conn = &db.conn;
    if !conn.is_autocommit() {
        if let Err(e) = execute(conn, "ROLLBACK") {
            tracing::warn!(error = %e, "store rollback failed");
        }
    }
    db.leases.rollback();
    db.dedup.rollback();
}

/// Adds `delta` to the `counts` row; returns the row.
fn update_counts(conn: &Connection, delta: Delta) -> rusqlite::Result<(i64, i64, i64)> {
    let counts = |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?, row.get(2)?));
    if delta.is_zero() {
        return conn.prepare_cached(SELECT_COUNTS)?.query_row([], counts);
    }
    conn.prepare_cached(UPDATE_COUNTS)?.query_row(
        rusqlite::params![delta.queued, delta.dead_letters, delta.rejected],
        counts,
    )
}

/// The `counts` row.
pub(super) const SELECT_COUNTS: &str =
    "SELECT queued, dead_letters, rejected FROM counts WHERE id = 1";

const UPDATE_COUNTS: &str = "
UPDATE counts SET queued = queued + ?1, dead_letters = dead_letters + ?2, rejected = rejected + ?3
WHERE id = 1 RETURNING queued, dead_letters, rejected";

fn execute(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

#[cfg(test)]
mod tests {
    //! How a group ends when some of its requests fail.

    use chrono::Utc;

    use super::*;
    use crate::clock::ManualClock;

    fn db() -> Db {
        let mut conn = Connection::open_in_memory().expect("open");
        super::super::schema::migrate(&mut conn, true).expect("schema");
        Db {
            conn: Rc::new(conn),
            dedup: DedupIndex::empty(),
            leases: Default::default(),
            clock: Arc::new(ManualClock::new(Utc::now())),
            checkpoints: None,
            _service_lock: None,
        }
    }

    /// A request for the writer, and where its answer comes.
    type Request = (Box<dyn Work>, oneshot::Receiver<Result<(), StoreError>>);

    /// A request that writes `key` into `meta`, then fails when `fails` says so.
    fn put(key: &'static str, fails: bool) -> Request {
        put_answered(key, fails, Reply::Committed)
    }

    /// [`put`], answered when `reply_when` says.
    fn put_answered(key: &'static str, fails: bool, reply_when: Reply) -> Request {
        let (reply, answer) = oneshot::channel();
        let f = move |db: &mut Db, _now: Micros| {
            db.conn
                .execute("INSERT INTO meta (key, value) VALUES (?1, 1)", [key])?;
            if fails {
                // A real failure of SQLite's, after this request has written.
                db.conn
                    .execute("INSERT INTO no_such_table VALUES (1)", [])?;
            }
            Ok(((), Delta::default()))
        };
        let work = Box::new(Call {
            weight: 1,
            reply_when,
            f,
            reply,
            value: None,
        });
        (work, answer)
    }

    fn keys(db: &Db) -> Vec<String> {
        let mut select = db
            .conn
            .prepare("SELECT key FROM meta ORDER BY key")
            .expect("prepare");
        select
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    fn run_group(db: &mut Db, requests: Vec<(&'static str, bool)>) -> Vec<Result<(), String>> {
        let clock = ManualClock::new(Utc::now());
        let shared = Shared::default();
        let (mut group, mut answers): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .map(|(key, fails)| put(key, fails))
            .unzip();
        commit_group(db, &clock, &mut group, &shared).send(None);
        answers
            .iter_mut()
            .map(|answer| {
                answer
                    .try_recv()
                    .expect("answered")
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    #[test]
    fn a_failing_request_is_undone_alone() {
        let mut db = db();
        let answers = run_group(&mut db, vec![("a", false), ("b", true), ("c", false)]);
        assert!(answers[0].is_ok(), "{answers:?}");
        assert!(
            answers[1]
                .as_ref()
                .is_err_and(|e| e.contains("no_such_table"))
        );
        assert!(answers[2].is_ok(), "{answers:?}");
        assert_eq!(keys(&db), ["a", "c"]);
        assert!(db.conn.is_autocommit(), "the transaction ended");
    }

    /// An append of events `ids` (message ids), dedup on.
    fn append(
        ids: &[&str],
    ) -> (
        Box<dyn Work>,
        oneshot::Receiver<Result<crate::Appended, StoreError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let events = ids
            .iter()
            .map(|id| crate::NewEvent {
                source: "web".into(),
                message_id: (*id).into(),
                payload: format!(r#"{{"messageId":"{id}"}}"#).into_bytes(),
            })
            .collect();
        let job = super::super::ops::AppendJob {
            append: crate::Append {
                events,
                rejected: Vec::new(),
            },
            window: 1_000_000,
        };
        let work = Box::new(Call {
            weight: ids.len(),
            reply_when: Reply::Durable,
            f: job,
            reply,
            value: None,
        });
        (work, answer)
    }

    /// The appends of a group share one prepared `INSERT` (`Prepared`), across the
    /// rollback and rerun a failing request causes too.
    #[test]
    fn the_appends_of_a_group_share_its_statement_through_a_rerun() {
        let mut db = db();
        let clock = ManualClock::new(Utc::now());
        let (a, mut a_answer) = append(&["m1", "m2"]);
        let (failing, mut failing_answer) = put("x", true);
        let (b, mut b_answer) = append(&["m3", "m1"]);
        let mut group = vec![a, failing, b];
        commit_group(&mut db, &clock, &mut group, &Shared::default()).send(None);
        let duplicates = |answer: &mut oneshot::Receiver<Result<crate::Appended, StoreError>>| {
            answer
                .try_recv()
                .expect("answered")
                .map(|appended: crate::Appended| appended.duplicate)
        };
        assert_eq!(duplicates(&mut a_answer).expect("a"), [false, false]);
        assert!(failing_answer.try_recv().expect("answered").is_err());
        assert_eq!(duplicates(&mut b_answer).expect("b"), [false, true]);
        let queued: Vec<String> = db
            .conn
            .prepare("SELECT message_id FROM queue ORDER BY id")
            .expect("prepare")
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(queued, ["m1", "m2", "m3"], "each event once, in order");
        assert!(db.conn.is_autocommit(), "the transaction ended");
    }

    /// A request that writes nothing and changes the counts by `delta` (acks do).
    fn counted(delta: Delta) -> Box<dyn Work> {
        let (reply, _) = oneshot::channel();
        Box::new(Call {
            weight: 1,
            reply_when: Reply::Committed,
            f: move |_: &mut Db, _: Micros| Ok(((), delta)),
            reply,
            value: None,
        })
    }

    #[test]
    fn a_group_that_queues_events_signals_them_even_when_its_acks_outnumber_them() {
        let mut db = db();
        let clock = ManualClock::new(Utc::now());
        let shared = Shared::default();
        let mut signal = shared.queued_signal.subscribe();
        let mut commit = |group: Vec<Box<dyn Work>>| {
            let mut group = group;
            commit_group(&mut db, &clock, &mut group, &shared).send(None);
            let changed = signal.has_changed().expect("open");
            signal.borrow_and_update();
            changed
        };
        assert!(commit(vec![append(&["m1", "m2", "m3"]).0]));
        let acks = Delta {
            queued: -3,
            ..Delta::default()
        };
        assert!(commit(vec![append(&["m4"]).0, counted(acks)]));
        assert!(!commit(vec![counted(acks), put("k", false).0]));
        assert!(!commit(vec![append(&["m4"]).0]), "a duplicate");
    }

    #[test]
    fn a_second_failure_fails_the_rest_of_the_group() {
        let mut db = db();
        let answers = run_group(
            &mut db,
            vec![("a", false), ("b", true), ("c", true), ("d", false)],
        );
        assert!(answers.iter().all(Result::is_err), "{answers:?}");
        assert!(keys(&db).is_empty());
        assert!(db.conn.is_autocommit(), "the transaction ended");
        // The writer goes on with the next group.
        let answers = run_group(&mut db, vec![("e", false)]);
        assert!(answers[0].is_ok());
        assert_eq!(keys(&db), ["e"]);
    }

    #[test]
    fn a_lone_failing_request_writes_nothing() {
        let mut db = db();
        let answers = run_group(&mut db, vec![("a", true)]);
        assert!(answers[0].is_err());
        assert!(keys(&db).is_empty());
    }

    /// A request that runs `f` (with the time at 0).
    fn request(f: impl FnMut(&mut Db) -> rusqlite::Result<()> + Send + 'static) -> Request {
        let mut f = f;
        let (reply, answer) = oneshot::channel();
        let work = Box::new(Call {
            weight: 1,
            reply_when: Reply::Committed,
            f: move |db: &mut Db, _now: Micros| f(db).map(|()| ((), Delta::default())),
            reply,
            value: None,
        });
        (work, answer)
    }

    /// Runs `group` and returns whether each request succeeded.
    fn run_requests(db: &mut Db, group: Vec<Request>) -> Vec<bool> {
        let clock = ManualClock::new(Utc::now());
        let (mut group, mut answers): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        commit_group(db, &clock, &mut group, &Shared::default()).send(None);
        answers
            .iter_mut()
            .map(|answer| answer.try_recv().expect("answered").is_ok())
            .collect()
    }

    /// Events 1 to 3 queued and leased until 100.
    fn leased_three() -> Db {
        let mut db = db();
        db.leases.advance(3);
        for id in 1..=3 {
            db.leases.hold(id, 100);
        }
        db
    }

    #[test]
    fn a_failing_request_leaves_the_leases_as_they_were() {
        let mut db = leased_three();
        let answers = run_requests(
            &mut db,
            vec![
                request(|db| {
                    db.leases.end(1);
                    Ok(())
                }),
                request(|db| {
                    db.leases.end(2);
                    db.conn
                        .execute("INSERT INTO no_such_table VALUES (1)", [])?;
                    Ok(())
                }),
            ],
        );
        assert_eq!(answers, [true, false]);
        assert!(!db.leases.is_live(1, 0), "the request that committed");
        assert!(
            db.leases.is_live(2, 0),
            "the failed request's change is undone"
        );
        assert!(db.leases.is_live(3, 0));
    }

    /// A request that succeeds but makes its group's COMMIT fail, as a COMMIT on a full
    /// disk does: it breaks a deferred foreign key of a table it adds to `db`.
    fn commit_failure(db: &Db) -> Request {
        db.conn
            .execute_batch(
                "PRAGMA foreign_keys = ON;
                 CREATE TABLE parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
            )
            .expect("schema");
        request(|db| {
            db.conn.execute("INSERT INTO child (p) VALUES (99)", [])?;
            Ok(())
        })
    }

    #[test]
    fn a_failed_commit_undoes_the_whole_group_s_leases() {
        let mut db = leased_three();
        let fails_the_commit = commit_failure(&db);
        let answers = run_requests(
            &mut db,
            vec![
                request(|db| {
                    db.leases.end(1);
                    db.leases.release(2);
                    Ok(())
                }),
                fails_the_commit,
            ],
        );
        assert_eq!(answers, [false, false], "the commit failed");
        assert!(db.conn.is_autocommit(), "the transaction ended");
        for id in 1..=3 {
            assert!(db.leases.is_live(id, 0), "event {id} is still leased");
        }
        assert!(db.leases.again().is_empty());
        // The writer goes on: the next group's changes stay.
        let answers = run_requests(
            &mut db,
            vec![request(|db| {
                db.leases.end(3);
                Ok(())
            })],
        );
        assert_eq!(answers, [true]);
        assert!(!db.leases.is_live(3, 0));
    }

    /// A request that claims the dedup key `key`, then fails when `fails` says so.
    fn claim(key: &'static str, fails: bool) -> Request {
        request(move |db| {
            let Db { conn, dedup, .. } = db;
            assert!(
                dedup.claimer(conn).claim("web", key, 0, -1)?,
                "{key} is new"
            );
            if fails {
                conn.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            }
            Ok(())
        })
    }

    /// Whether `key` is new to the dedup window (leaves it claimed, uncommitted).
    fn is_new(db: &mut Db, key: &str) -> bool {
        let Db { conn, dedup, .. } = db;
        let new = dedup.claimer(conn).claim("web", key, 0, -1).expect("claim");
        dedup.rollback();
        new
    }

    #[test]
    fn only_the_dedup_keys_of_requests_that_commit_are_kept() {
        let mut db = db();
        let answers = run_requests(
            &mut db,
            vec![claim("a", false), claim("b", true), claim("c", false)],
        );
        assert_eq!(answers, [true, false, true]);
        let rows: i64 = db
            .conn
            .query_row("SELECT COUNT(*) FROM dedup_keys", [], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, 1, "one row for the group");
        assert!(!is_new(&mut db, "a"));
        assert!(is_new(&mut db, "b"), "its request failed: a retry is new");
        assert!(!is_new(&mut db, "c"));
    }

    #[test]
    fn a_failed_commit_keeps_none_of_the_group_s_dedup_keys() {
        let mut db = db();
        let fails_the_commit = commit_failure(&db);
        let answers = run_requests(&mut db, vec![claim("a", false), fails_the_commit]);
        // After the keys' row was written, just before the COMMIT.
        assert_eq!(answers, [false, false], "the commit failed");
        assert!(is_new(&mut db, "a"), "never stored: a retry is new");
        // The next group's keys stay.
        assert_eq!(run_requests(&mut db, vec![claim("b", false)]), [true]);
        assert!(!is_new(&mut db, "b"));
        assert!(is_new(&mut db, "a"));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread, not a tokio worker
    fn a_group_s_appends_wait_for_its_fsync_and_the_rest_do_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log");
        std::fs::write(&path, b"").expect("log file");
        let file = std::fs::File::open(&path).expect("log file");
        let shared = Arc::new(Shared::default());
        // The fsync is held back until the test lets it go.
        shared.hold_syncs.store(true, Ordering::Release);
        let (requests, receiver) = mpsc::channel(16);
        // Both wait before the writer starts: they make one group.
        let (a, mut a_answer) = put_answered("a", false, Reply::Durable);
        let (b, b_answer) = put_answered("b", false, Reply::Committed);
        requests.blocking_send(a).expect("channel open");
        requests.blocking_send(b).expect("channel open");
        let writer = {
            let shared = Arc::clone(&shared);
            let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Utc::now()));
            let log = Log { path, file };
            std::thread::spawn(move || run(db(), clock, receiver, shared, Some(log)))
        };
        // "b" is answered at commit, while the fsync is held.
        assert!(matches!(b_answer.blocking_recv(), Ok(Ok(()))));
        assert_eq!(shared.commits.load(Ordering::Acquire), 1);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            a_answer.try_recv().is_err(),
            "an append is answered only after the fsync"
        );
        assert_eq!(shared.syncs.load(Ordering::Acquire), 0);

        shared.hold_syncs.store(false, Ordering::Release);
        assert!(matches!(a_answer.blocking_recv(), Ok(Ok(()))));
        assert_eq!(shared.syncs.load(Ordering::Acquire), 1, "one fsync a group");

        // A group without an append runs no fsync.
        let (c, c_answer) = put_answered("c", false, Reply::Committed);
        requests.blocking_send(c).expect("writer running");
        assert!(matches!(c_answer.blocking_recv(), Ok(Ok(()))));
        assert_eq!(shared.syncs.load(Ordering::Acquire), 1);
        drop(requests);
        writer.join().expect("writer ends with its last handle");
    }
}
