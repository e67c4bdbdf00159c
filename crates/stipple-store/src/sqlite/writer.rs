//! The writer thread: it owns the SQLite connection and runs every request sent to it,
//! committing all requests that are waiting together in one transaction (group commit),
//! so concurrent HTTP requests share one fsync. Answers go back only after the commit.
//!
//! Each request runs inside its own savepoint, so a request that fails is undone alone
//! and the others of its group still commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;
use crate::clock::Clock;
use crate::time::{Micros, to_micros};

/// At most this many requests share one transaction.
const MAX_GROUP_REQUESTS: usize = 1024;
/// A group stops taking requests once their weights (≈ rows written) reach this.
const MAX_GROUP_WEIGHT: usize = 20_000;

/// Changes a request made to the counts of [`Shared`], applied once committed.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Delta {
    pub(super) queued: i64,
    pub(super) dead_letters: i64,
    pub(super) rejected: i64,
}

/// What the store handle and the writer thread share: counts kept in memory so that
/// `stats` costs nothing whatever the queue length.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) queued: AtomicI64,
    pub(super) dead_letters: AtomicI64,
    pub(super) rejected: AtomicI64,
    pub(super) commits: AtomicU64,
}

impl Shared {
    fn apply(&self, delta: Delta) {
        self.queued.fetch_add(delta.queued, Ordering::Relaxed);
        self.dead_letters
            .fetch_add(delta.dead_letters, Ordering::Relaxed);
        self.rejected.fetch_add(delta.rejected, Ordering::Relaxed);
    }
}

/// The result of running one request, held until its group commits.
type Finish = Box<dyn FnOnce(Option<&str>)>;

/// A request to the writer thread.
pub(super) trait Work: Send {
    /// Roughly how many rows it writes, to bound the size of a group.
    fn weight(&self) -> usize;
    /// Runs it inside the group's transaction. Returns whether it succeeded (else its
    /// savepoint is rolled back), what it changed, and how to answer once the group ends.
    fn run(self: Box<Self>, conn: &Connection, now: Micros) -> (bool, Delta, Finish);
    /// Answers with an error without running.
    fn fail(self: Box<Self>, error: &str);
}

/// A request: a function over the connection and the current time, and where to answer.
pub(super) struct Call<T, F> {
    pub(super) weight: usize,
    pub(super) f: F,
    pub(super) reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Work for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, Micros) -> rusqlite::Result<(T, Delta)> + Send,
{
    fn weight(&self) -> usize {
        self.weight
    }

    fn run(self: Box<Self>, conn: &Connection, now: Micros) -> (bool, Delta, Finish) {
        let Call { f, reply, .. } = *self;
        match f(conn, now) {
            Ok((value, delta)) => (
                true,
                delta,
                Box::new(move |commit_error: Option<&str>| {
                    let answer = match commit_error {
                        None => Ok(value),
                        Some(e) => Err(StoreError::Database(e.to_owned())),
                    };
                    // The caller may have given up waiting; nothing to do then.
                    let _ = reply.send(answer);
                }),
            ),
            Err(e) => {
                let message = e.to_string();
                (
                    false,
                    Delta::default(),
                    Box::new(move |_| {
                        let _ = reply.send(Err(StoreError::Database(message)));
                    }),
                )
            }
        }
    }

    fn fail(self: Box<Self>, error: &str) {
        let _ = self.reply.send(Err(StoreError::Database(error.to_owned())));
    }
}

/// The writer thread's loop: ends when every store handle is gone.
pub(super) fn run(
    conn: Connection,
    clock: Arc<dyn Clock>,
    mut requests: mpsc::Receiver<Box<dyn Work>>,
    shared: Arc<Shared>,
) {
    let mut group: Vec<Box<dyn Work>> = Vec::with_capacity(MAX_GROUP_REQUESTS);
    while let Some(first) = requests.blocking_recv() {
        let mut weight = first.weight();
        group.push(first);
        while group.len() < MAX_GROUP_REQUESTS && weight < MAX_GROUP_WEIGHT {
            match requests.try_recv() {
                Ok(next) => {
                    weight += next.weight();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        commit_group(&conn, &*clock, &mut group, &shared);
    }
    tracing::debug!("store writer stopping: no handle left");
}

/// Runs `group` in one transaction and answers every request in it.
fn commit_group(
    conn: &Connection,
    clock: &dyn Clock,
    group: &mut Vec<Box<dyn Work>>,
    shared: &Shared,
) {
    if let Err(e) = execute(conn, "BEGIN IMMEDIATE") {
        let error = e.to_string();
        tracing::warn!(%error, "store transaction could not begin");
        for work in group.drain(..) {
            work.fail(&error);
        }
        return;
    }
    let single = group.len() == 1;
    let mut done = Vec::with_capacity(group.len());
    for work in group.drain(..) {
        let now = to_micros(clock.now());
        // A lone request needs no savepoint: on failure the whole transaction goes.
        if !single {
            if let Err(e) = execute(conn, "SAVEPOINT request") {
                work.fail(&e.to_string());
                continue;
            }
        }
        let (ok, delta, finish) = work.run(conn, now);
        if !single {
            let end = if ok {
                execute(conn, "RELEASE request")
            } else {
                execute(conn, "ROLLBACK TO request").and_then(|()| execute(conn, "RELEASE request"))
            };
            if let Err(e) = end {
                tracing::warn!(error = %e, "store savepoint could not end");
            }
        }
        done.push((ok, delta, finish));
    }
    let all_ok = done.iter().all(|(ok, _, _)| *ok);
    let end = if single && !all_ok {
        execute(conn, "ROLLBACK")
    } else {
        execute(conn, "COMMIT")
    };
    let commit_error = match end {
        Ok(()) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(e) => {
            let error = e.to_string();
            tracing::warn!(%error, "store commit failed");
            if !conn.is_autocommit() {
                if let Err(e) = execute(conn, "ROLLBACK") {
                    tracing::warn!(error = %e, "store rollback failed");
                }
            }
            Some(error)
        }
    };
    for (ok, delta, finish) in done {
        if ok && commit_error.is_none() {
            shared.apply(delta);
        }
        finish(commit_error.as_deref());
    }
}

fn execute(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}
