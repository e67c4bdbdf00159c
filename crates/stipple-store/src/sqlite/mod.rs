//! [`SqliteStore`]: the embedded durable store, one SQLite file in WAL mode.
//!
//! One writer thread owns the connection and runs every operation; appends waiting at
//! the same time commit in one transaction (group commit, see `writer`), and a second
//! thread fsyncs the log before appends are answered (every other request is answered
//! at commit, see `writer` for why that is safe), and a third copies the log back into
//! the database on its own connection (see `checkpoint`), so that no request waits for
//! a checkpoint's fsyncs. One service at a time holds a store,
//! through a lock file: that is what lets it keep its leases and the dedup index in
//! memory (a crashed service's leases die with it). Admin commands open it beside the service
//! ([`Role::Admin`]); the row counts live in the database so both see the same.
//!
//! The connection writes the log through a VFS of the store's own (`vfs`), which merges a
//! commit's frame writes into one system call.

mod checkpoint;
mod dedup;
mod leases;
mod ops;
mod schema;
mod vfs;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use self::writer::{Call, Db, Delta, Job, Reply, Shared, Work};
use crate::clock::{Clock, SystemClock};
use crate::time::{Micros, duration_micros, purge_cutoff, to_micros};
use crate::{
    Append, Appended, DeadLetter, DeadLetterReason, EventId, Leased, Stats, Store, StoreError,
    StoredRejection,
};

/// Requests waiting for the writer thread before callers wait to send theirs.
const CHANNEL_CAPACITY: usize = 4096;
/// WAL pages written before SQLite copies them back into the database file, on an admin
/// connection (a service leaves that to its checkpointer thread, see `checkpoint`).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4000;

/// When an answer waits for the disk (in the spirit of SQLite's `PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// An append is answered only once the write-ahead log holding it is fsynced, so it
    /// survives a power loss. The writer thread runs the fsync after the group's commit;
    /// what arrives meanwhile forms the next group. Leases, acks, retries, releases,
    /// dead-lettering, requeues and dedup expiry are answered at commit either way: a
    /// power loss can undo the last of them, which costs at most a redelivery (see the
    /// crate's invariants). The default.
    #[default]
    Full,
    /// Answered once committed, without waiting for an fsync (SQLite's own
    /// `synchronous=NORMAL`): an answered append survives the process crashing, but the
    /// last ones can be lost if the machine loses power.
    Normal,
}

impl fmt::Display for Synchronous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "full",
            Self::Normal => "normal",
        })
    }
}

/// A `synchronous` setting that is neither `full` nor `normal`.
#[derive(Debug, thiserror::Error)]
#[error("unknown synchronous setting {0:?}: use \"full\" or \"normal\"")]
pub struct UnknownSynchronous(String);

impl FromStr for Synchronous {
    type Err = UnknownSynchronous;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            _ => Err(UnknownSynchronous(s.to_owned())),
        }
    }
}

/// What a process opening a [`SqliteStore`] does with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// The one process that appends and delivers: it holds the store's lock file (a
    /// second service is refused) and keeps its leases in memory, so they end with it.
    #[default]
    Service,
    /// An admin command next to a running service, or alone: it lists, counts and
    /// requeues, and may neither append (the service's dedup index would not see those
    /// keys) nor lease (the service would not see those leases).
    Admin,
}

/// How to open a [`SqliteStore`]. Build it with `..Default::default()`.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// When to fsync. Default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// How long `open` waits for another holder of the file (a store being dropped, or
    /// another process) to let go of it. Default 5 s.
    pub busy_timeout: Duration,
    /// SQLite's page cache, in KiB. Default 16 MiB.
    pub cache_size_kib: u32,
    /// Where the store reads the time. Default the system clock.
    pub clock: Arc<dyn Clock>,
    /// What the opening process does with the store. Default [`Role::Service`].
    pub role: Role,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            cache_size_kib: 16 * 1024,
            clock: Arc::new(SystemClock),
            role: Role::Service,
        }
    }
}

/// The embedded durable store: a SQLite file served by one writer thread.
///
/// Dropping every handle stops the writer once the requests already sent are done.
pub struct SqliteStore {
    path: PathBuf,
    synchronous: Synchronous,
    role: Role,
    requests: mpsc::Sender<Box<dyn Work>>,
    shared: Arc<Shared>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The name of the VFS that gathers the log's writes (`vfs.rs`), registered on first
/// use; `None` where it cannot stand (SQLite's default VFS is not `unix`).
fn gathering_vfs() -> Option<&'static str> {
    gathering_counts().map(|_| GATHERING_VFS)
}

const GATHERING_VFS: &str = "stipple-gather";

/// What the store's VFS did, once registered.
fn gathering_counts() -> Option<&'static vfs::Counts> {
    static REGISTERED: OnceLock<Option<&'static vfs::Counts>> = OnceLock::new();
    *REGISTERED.get_or_init(|| match vfs::register(GATHERING_VFS) {
        Ok(counts) => Some(counts),
        Err(reason) => {
            tracing::info!(%reason, "the store writes its log through SQLite's default VFS");
            None
        }
    })
}

impl SqliteStore {
    /// Opens the store at `path`, creating its directory and schema on first start.
    ///
    /// As [`Role::Service`] (the default) it takes the store's lock file, failing if
    /// another service holds it, and ends every lease left by a previous service (those
    /// events are due at once). As [`Role::Admin`] it does neither and can run next to
    /// a service, but refuses appends; it creates no directory or database, writes
    /// nothing at open, does not checkpoint at close, and refuses a file that holds no
    /// store (an empty one, another program's database) without changing it.
    ///
    /// This does blocking file I/O: call it at startup, or inside `spawn_blocking`.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let service = options.role == Role::Service;
        // An admin creates nothing: it opens a store a service made.
        if let Some(parent) = path
            .parent()
            .filter(|p| service && !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                use std::io::ErrorKind::{AlreadyExists, NotADirectory};
                StoreError::Open(if matches!(e.kind(), AlreadyExists | NotADirectory) {
                    format!(
                        "cannot create the directory {}: a file, not a directory, is on that \
                         path (or on the way to it)",
                        parent.display()
                    )
                } else {
                    format!("cannot create the directory {}: {e}", parent.display())
                })
            })?;
        }
        let service_lock = match options.role {
            Role::Service => Some(take_service_lock(path, options.busy_timeout)?),
            Role::Admin => None,
        };
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if service {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut conn = match gathering_vfs() {
            Some(vfs) => Connection::open_with_flags_and_vfs(path, flags, vfs),
            None => Connection::open_with_flags(path, flags),
        }
        .map_err(|e| open_error(path, e))?;
        if !service {
            // Closing as the last connection would otherwise checkpoint the log into the
            // database: another program's too, when the file turns out not to be a store.
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
                .map_err(|e| open_error(path, e))?;
            schema::check_is_store(&conn, path)?;
        }
        configure(path, &conn, &options)?;
        schema::migrate(&mut conn, options.role == Role::Service)?;
        if options.role == Role::Service {
            // A first write, so that the write-ahead log exists for the writer to open.
            // Not an admin's: it writes only when asked to, so that it can still list
            // and purge on a full disk.
            let now = to_micros(options.clock.now());
            ops::touch(&conn, now).map_err(|e| open_error(path, e))?;
        }
        let counts = conn
            .query_row(writer::SELECT_COUNTS, [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .map_err(|e| open_error(path, e))?;
        // Only a service appends, so only a service needs the dedup index.
        let dedup = match options.role {
            Role::Service => dedup::DedupIndex::load(&conn).map_err(|e| open_error(path, e))?,
            Role::Admin => dedup::DedupIndex::empty(),
        };
        let (queued, dead_letters, rejected) = counts;
        tracing::info!(
            path = %path.display(),
            role = ?options.role,
            queued,
            dead_letters,
            rejected,
            dedup_keys = dedup.len(),
            "store opened"
        );
        let shared = Arc::new(Shared::default());
        shared.publish(counts);

        // An admin never appends: nothing it does waits for an fsync of its own.
        let log = match (options.synchronous, options.role) {
            (Synchronous::Normal, _) | (_, Role::Admin) => None,
            (Synchronous::Full, Role::Service) => {
                let path = wal_path(path);
                // Opened for writing only because some systems refuse to fsync otherwise.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        StoreError::Open(format!("cannot open the log {}: {e}", path.display()))
                    })?;
                Some(writer::Log { path, file })
            }
        };
        let checkpoints = match options.role {
            Role::Service => Some(
                checkpoint::Trigger::start(path, options.busy_timeout)
                    .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?,
            ),
            Role::Admin => None,
        };
        let (requests, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let clock = options.clock;
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("stipple-store-writer".into())
            .spawn(move || {
                let db = Db {
                    conn: std::rc::Rc::new(conn),
                    dedup,
                    leases: leases::Leases::new(),
                    clock: Arc::clone(&clock),
                    checkpoints,
                    _service_lock: service_lock,
                };
                writer::run(db, clock, receiver, thread_shared, log);
            })
            .map_err(|e| StoreError::Open(format!("cannot start the store writer thread: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            synchronous: options.synchronous,
            role: options.role,
            requests,
            shared,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many transactions the writer has committed since open. Appends made at the
    /// same time share one, so this grows slower than the number of appends under load.
    pub fn commit_count(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// How many fsyncs of the write-ahead log answered appends since open (with
    /// [`Synchronous::Full`]): one covers every group committed while the previous ran.
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Refuses `what` to an admin.
    fn service_only(&self, what: &str) -> Result<(), StoreError> {
        match self.role {
            Role::Service => Ok(()),
            Role::Admin => Err(StoreError::Database(format!(
                "this store was opened for administration (Role::Admin): {what} go through the service"
            ))),
        }
    }

    /// Runs `f` on the writer thread inside the current group's transaction and returns
    /// its value once that transaction has committed and, for [`Reply::Durable`], is
    /// durable. `f` runs again if the transaction is rolled back for another request.
    async fn call<T, F>(&self, weight: usize, reply_when: Reply, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut Db, Micros) -> rusqlite::Result<(T, Delta)> + Send + 'static,
    {
        self.call_job(weight, reply_when, f).await
    }

    /// [`call`](Self::call) for any [`Job`] (an append, which takes its group's prepared
    /// statement).
    async fn call_job<T, J>(&self, weight: usize, reply_when: Reply, f: J) -> Result<T, StoreError>
    where
        T: Send + 'static,
        J: Job<T> + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let work: Box<dyn Work> = Box::new(Call {
            weight: weight.max(1),
            reply_when,
            f,
            reply,
            value: None,
        });
        self.requests
            .send(work)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes the rows of `kept` from `older_than` ago or earlier, a transaction of
    /// [`ops::CHUNK`] rows at a time (so appends are not held up meanwhile); returns how
    /// many went. A lost chunk leaves its rows, for the next purge.
    async fn purge(&self, kept: ops::Kept, older_than: Duration) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = self
                .call(ops::CHUNK, Reply::Committed, move |db, now| {
                    let delta =
                        ops::purge(&db.conn, kept, purge_cutoff(now, older_than), ops::CHUNK)?;
                    let deleted = -(delta.rejected + delta.dead_letters);
                    Ok((u64::try_from(deleted).unwrap_or(0), delta))
                })
                .await?;
            total += deleted;
            if deleted < ops::CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

/// Takes the lock file next to the store (`PATH.lock`), held until the store closes: a
/// SQLite file opened in exclusive locking mode, so the lock goes with the process even
/// if it is killed, and needs no platform code.
fn take_service_lock(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let take = |busy_timeout: Duration| -> rusqlite::Result<Connection> {
        let lock = Connection::open(&lock_path)?;
        lock.busy_timeout(busy_timeout)?;
        lock.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        lock.pragma_update(None, "journal_mode", "MEMORY")?;
        // A write takes the exclusive lock, kept until the connection closes.
        lock.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS holder (pid INTEGER NOT NULL);
             DELETE FROM holder;
             INSERT INTO holder (pid) VALUES ({});",
            std::process::id()
        ))?;
        Ok(lock)
    };
    // Held: say so before waiting, rather than wait in silence. A service that is
    // stopping (a restart) lets go within the wait.
    let taken = match take(Duration::ZERO) {
        Err(e) if is_busy(&e) && !busy_timeout.is_zero() => {
            tracing::warn!(
                path = %path.display(),
                wait = ?busy_timeout,
                "the store is held by another stipple service; waiting for it to stop"
            );
            take(busy_timeout)
        }
        taken => taken,
    };
    taken.map_err(|e| {
        if is_busy(&e) {
            StoreError::Open(format!(
                "{} is in use by another stipple service: one service at a time serves a store, \
                 stop the other one (the admin commands, such as `stipple status`, run beside it)",
                path.display()
            ))
        } else {
            StoreError::Open(format!("{}: {e}", lock_path.display()))
        }
    })
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn configure(path: &Path, conn: &Connection, options: &SqliteOptions) -> Result<(), StoreError> {
    let error = |e| open_error(path, e);
    conn.busy_timeout(options.busy_timeout).map_err(error)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open(format!(
            "{}: SQLite kept journal mode {mode}, and the store needs WAL: is the file system local?",
            path.display()
        )));
    }
    // Full durability comes from the writer's own fsyncs (see `writer`), not from SQLite.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(error)?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_size_kib))
        .map_err(error)?;
    // A log that grew (a long read kept it from restarting) is cut back when it restarts.
    conn.pragma_update(None, "journal_size_limit", checkpoint::LOG_SIZE_LIMIT)
        .map_err(error)?;
    // Statement journals (of statements that may write several rows) stay in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(error)?;
    let autocheckpoint = match options.role {
        Role::Service => 0,
        Role::Admin => WAL_AUTOCHECKPOINT_PAGES,
    };
    conn.pragma_update(None, "wal_autocheckpoint", autocheckpoint)
        .map_err(error)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// SQLite's write-ahead log next to the database file.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Open(format!("{}: {e}", path.display()))
}

fn no_delta<T>(value: T) -> (T, Delta) {
    (value, Delta::default())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn append(&self, append: Append, dedup_window: Duration) -> Result<Appended, StoreError> {
        self.service_only("appends")?;
        let window = duration_micros(dedup_window);
        let weight = append.events.len() + append.rejected.len();
        // The ingress answers 200 on this: it waits for the fsync.
        self.call_job(weight, Reply::Durable, ops::AppendJob { append, window })
            .await
    }

    async fn lease(&self, max: usize, lease_for: Duration) -> Result<Vec<Leased>, StoreError> {
        self.service_only("leases")?;
        let lease_for = duration_micros(lease_for);
        // Leases are kept in memory by the writer: nothing to commit, nothing to lose.
        // (They follow its transaction: a rollback undoes them, see `Leases`.)
        self.call(max, Reply::Committed, move |db, now| {
            // Leases are measured on the monotonic clock; retry times on the wall clock.
            let lease_now = db.clock.monotonic_micros();
            let until = lease_now.saturating_add(lease_for);
            let leased = ops::lease(&db.conn, &mut db.leases, now, lease_now, max, until)?;
            Ok((leased, Delta::default()))
        })
        .await
    }

    async fn ack(&self, ids: &[EventId]) -> Result<(), StoreError> {
        // Sorted here, off the writer thread, for `ops::ack`'s runs.
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        // A lost ack only means a redelivery (at-least-once).
        self.call(ids.len(), Reply::Committed, move |db, _| {
            Ok(((), ops::ack(&db.conn, &mut db.leases, &ids)?))
        })
        .await
    }

    async fn retry(&self, id: EventId, not_before: DateTime<Utc>) -> Result<(), StoreError> {
        let not_before = to_micros(not_before);
        // A lost retry only means the event is tried again sooner.
        self.call(1, Reply::Committed, move |db, _| {
            ops::retry(&db.conn, &mut db.leases, id, not_before).map(no_delta)
        })
        .await
    }

    async fn release(&self, ids: &[EventId]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        // Only the in-memory leases change.
        self.call(ids.len(), Reply::Committed, move |db, _| {
            for id in &ids {
                db.leases.release(*id);
            }
            Ok(no_delta(()))
        })
        .await
    }

    async fn dead_letter(&self, id: EventId, reason: DeadLetterReason) -> Result<(), StoreError> {
        // A lost dead letter leaves the event queued: it is tried again.
        self.call(1, Reply::Committed, move |db, now| {
            Ok((
                (),
                ops::dead_letter(&db.conn, &mut db.leases, now, id, &reason)?,
            ))
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        // A read: nothing to make durable.
        self.call(limit, Reply::Committed, move |db, _| {
            ops::dead_letters(&db.conn, limit).map(no_delta)
        })
        .await
    }

    async fn requeue_dead_letters(&self, ids: Option<&[EventId]>) -> Result<u64, StoreError> {
        let moved = |delta: Delta| u64::try_from(delta.queued).unwrap_or(0);
        // A lost requeue leaves the dead letters where they were, to requeue again.
        if let Some(ids) = ids {
            let ids = ids.to_vec();
            return self
                .call(ids.len(), Reply::Committed, move |db, now| {
                    let delta = ops::requeue(&db.conn, now, &ids)?;
                    Ok((moved(delta), delta))
                })
                .await;
        }
        // All of them, a chunk per transaction so appends are not held up meanwhile.
        let mut total = 0;
        loop {
            let chunk = self
                .call(ops::CHUNK, Reply::Committed, move |db, now| {
                    let delta = ops::requeue_oldest(&db.conn, now, ops::CHUNK)?;
                    Ok((moved(delta), delta))
                })
                .await?;
            total += chunk;
            if chunk < ops::CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn rejected(&self, limit: usize) -> Result<Vec<StoredRejection>, StoreError> {
        // A read: nothing to make durable.
        self.call(limit, Reply::Committed, move |db, _| {
            ops::rejected(&db.conn, limit).map(no_delta)
        })
        .await
    }

    async fn purge_rejected(&self, older_than: Duration) -> Result<u64, StoreError> {
        self.purge(ops::Kept::Rejected, older_than).await
    }

    async fn purge_dead_letters(&self, older_than: Duration) -> Result<u64, StoreError> {
        self.purge(ops::Kept::DeadLetters, older_than).await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let count = |n: &std::sync::atomic::AtomicI64| {
            u64::try_from(n.load(Ordering::Relaxed)).unwrap_or(0)
        };
        Ok(Stats {
            queued: count(&self.shared.queued),
            dead_letters: count(&self.shared.dead_letters),
            rejected: count(&self.shared.rejected),
        })
    }

    async fn expire_dedup(&self, dedup_window: Duration) -> Result<u64, StoreError> {
        let window = duration_micros(dedup_window);
        // A chunk per transaction so appends are not held up meanwhile. A lost expiry
        // leaves the keys in the table (the index is rebuilt from it at open): the next
        // expiry takes them.
        let mut total = 0;
        loop {
            let chunk = self
                .call(ops::CHUNK, Reply::Committed, move |db, now| {
                    let Db { conn, dedup, .. } = db;
                    dedup
                        .expire(conn, now.saturating_sub(window), ops::CHUNK)
                        .map(no_delta)
                })
                .await?;
            total += chunk.deleted;
            if !chunk.more {
                return Ok(total);
            }
        }
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        // Waits for the fsync like an append, so readiness also covers a stalled disk.
        self.call(1, Reply::Durable, move |db, now| {
            ops::touch(&db.conn, now).map(no_delta)
        })
        .await
    }

    fn fatal(&self) -> Option<String> {
        self.shared
            .broken
            .load(Ordering::Acquire)
            .then(|| writer::BROKEN.to_owned())
    }

    fn activity(&self) -> Option<crate::Activity> {
        Some(crate::Activity {
            commits: self.commit_count(),
            syncs: self.sync_count(),
        })
    }

    fn queued_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.shared.queued_signal.subscribe())
    }
}

#[cfg(test)]
mod tests {
    //! Checks on the SQL itself that the shared suite cannot see from outside.

    use super::*;

    fn plan(sql: &str) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            SqliteStore::open(&dir.path().join("plan.db"), SqliteOptions::default()).expect("open");
        drop(store);
        let mut conn = Connection::open(dir.path().join("plan.db")).expect("reopen");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        schema::migrate(&mut conn, true).expect("schema");
        ops::query_plan(&conn, sql).expect("plan").join("\n")
    }

    #[test]
    fn lease_reads_due_retries_off_the_partial_index_without_sorting() {
        let plan = plan(&ops::SELECT_RETRY_DUE.replace("?1", "0"));
        assert!(plan.contains("USING INDEX queue_retry"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn lease_reads_new_events_straight_off_the_table() {
        let plan = plan(&ops::SELECT_NEW.replace("?1", "0"));
        assert!(
            plan.contains("USING INTEGER PRIMARY KEY (rowid>?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    /// Waits up to `millis` for `task`; None when it has not finished by then.
    async fn within<T>(millis: u64, task: &mut tokio::task::JoinHandle<T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(millis), task)
            .await
            .ok()
            .map(|joined| joined.expect("task"))
    }

    /// An append of one event from "web" with this `messageId`.
    fn one(id: &str) -> Append {
        Append {
            events: vec![crate::NewEvent {
                source: "web".into(),
                message_id: id.into(),
                payload: b"{}".to_vec(),
            }],
            rejected: Vec::new(),
        }
    }

    /// An append of `n` events from "web", with `messageId`s `prefix-0`, `prefix-1`….
    fn events(prefix: &str, n: usize) -> Append {
        Append {
            events: (0..n)
                .map(|i| crate::NewEvent {
                    source: "web".into(),
                    message_id: format!("{prefix}-{i}"),
                    payload: b"{}".to_vec(),
                })
                .collect(),
            rejected: Vec::new(),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    /// A store of the default options in a new temporary directory, which must be kept
    /// for as long as the store.
    fn temp_store() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default()).expect("open");
        (dir, Arc::new(store))
    }

    /// Appends `one(id)` on a task of its own.
    fn spawn_append(
        store: &Arc<SqliteStore>,
        id: &str,
    ) -> tokio::task::JoinHandle<Result<crate::Appended, StoreError>> {
        spawn(store, one(id))
    }

    /// Appends `append` on a task of its own.
    fn spawn(
        store: &Arc<SqliteStore>,
        append: Append,
    ) -> tokio::task::JoinHandle<Result<crate::Appended, StoreError>> {
        let store = Arc::clone(store);
        tokio::spawn(async move { store.append(append, DAY).await })
    }

    /// Appends a group big enough to have its fsync run by the syncer thread, on a task
    /// of its own.
    fn spawn_big_append(
        store: &Arc<SqliteStore>,
        prefix: &str,
    ) -> tokio::task::JoinHandle<Result<crate::Appended, StoreError>> {
        spawn(store, events(prefix, writer::SYNC_ASIDE_WEIGHT))
    }

    /// Waits up to 10 s for `done`; fails with `what` if it never is.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        for _ in 0..2000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{what} never came");
    }

    /// Waits until the writer has committed `n` transactions since open.
    async fn committed(store: &SqliteStore, n: u64) {
        eventually(&format!("commit {n}"), || store.commit_count() >= n).await;
    }

    /// Appends `n` events at once, each from a task of its own; fails unless all are
    /// answered stored.
    async fn append_at_once(store: &Arc<SqliteStore>, prefix: &str, n: usize) {
        let tasks: Vec<_> = (0..n)
            .map(|i| spawn_append(store, &format!("{prefix}-{i}")))
            .collect();
        for task in tasks {
            task.await.expect("task").expect("append");
        }
    }

    #[tokio::test]
    async fn the_store_writes_its_log_through_its_own_vfs() {
        let (_dir, store) = temp_store();
        let counts = gathering_counts().expect("SQLite's default VFS here is unix");
        let before = counts.log_writes.load(Ordering::Relaxed);
        store.append(one("through"), DAY).await.expect("append");
        assert!(counts.log_writes.load(Ordering::Relaxed) > before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_made_at_once_share_fsyncs() {
        let (_dir, store) = temp_store();
        append_at_once(&store, "a", 200).await;
        let syncs = store.sync_count();
        assert!(
            (1..100).contains(&syncs),
            "{syncs} fsyncs for 200 appends made at once"
        );
        assert_eq!(store.stats().await.expect("stats").queued, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_whose_caller_went_away_is_still_stored_and_fsynced() {
        let (_dir, store) = temp_store();
        store.append(one("warm"), DAY).await.expect("append");
        store.shared.hold_syncs.store(true, Ordering::Release);
        let start = store.commit_count();
        let syncs = store.sync_count();
        // "a"'s fsync is held; "b" waits behind it for the next group.
        let a = spawn_append(&store, "a");
        committed(&store, start + 1).await;
        let b = spawn_append(&store, "b");
        // The writer is held in "a"'s fsync: "b" waits in its channel.
        eventually("b in the writer's channel", || {
            store.requests.capacity() < CHANNEL_CAPACITY
        })
        .await;
        // "b"'s client goes away: nobody waits for its answer any more.
        b.abort();
        let _ = b.await;
        store.shared.hold_syncs.store(false, Ordering::Release);
        a.await.expect("task").expect("append");
        // "b" is committed and fsynced all the same.
        eventually("b's fsync", || store.sync_count() >= syncs + 2).await;
        assert_eq!(store.stats().await.expect("stats").queued, 3);
    }

    #[tokio::test]
    async fn a_failed_fsync_fails_its_appends_and_every_later_request_for_good() {
        let (_dir, store) = temp_store();
        store.append(one("a"), DAY).await.expect("append");
        assert_eq!(store.fatal(), None);

        store.shared.fail_next_sync.store(true, Ordering::Release);
        let failed = store.append(one("b"), DAY).await;
        assert!(
            failed.is_err_and(|e| e.to_string().contains("fsync")),
            "the append its fsync covered is not answered as stored"
        );
        let fatal = store.fatal().expect("fatal after a failed fsync");
        assert!(fatal.contains("restart stipple"), "{fatal}");
        // Every later request fails too, though the next fsync would succeed.
        assert!(store.append(one("c"), DAY).await.is_err());
        assert!(store.check_writable().await.is_err());
        assert!(store.lease(10, Duration::from_secs(60)).await.is_err());
    }

    /// "a" (a group for the syncer when `big`) has its fsync fail, held before it tells
    /// anyone, while "b" arrives; checks that neither is answered as stored. Returns the
    /// store (with its directory) and its commit count before "a".
    async fn fsync_fails_while_b_waits(big: bool) -> (tempfile::TempDir, Arc<SqliteStore>, u64) {
        let (dir, store) = temp_store();
        store.shared.fail_next_sync.store(true, Ordering::Release);
        store.shared.hold_after_sync.store(true, Ordering::Release);
        let start = store.commit_count();
        let mut a = if big {
            spawn_big_append(&store, "a")
        } else {
            spawn_append(&store, "a")
        };
        committed(&store, start + 1).await;
        let mut b = spawn_append(&store, "b");
        if big {
            // The writer is free: "b" commits, and waits behind "a"'s fsync.
            committed(&store, start + 2).await;
        } else {
            // The writer is held in "a"'s fsync: "b" waits in its channel.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.shared.hold_after_sync.store(false, Ordering::Release);
        for (name, task) in [("a", &mut a), ("b", &mut b)] {
            let answer = within(10_000, task).await.expect("answered");
            assert!(
                answer.is_err_and(|e| e.to_string().contains("fsync")),
                "{name} is not answered as stored"
            );
        }
        (dir, store, start)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_waiting_while_an_fsync_fails_are_not_answered_stored() {
        let (_dir, store, start) = fsync_fails_while_b_waits(false).await;
        // "b" never committed: nothing written after the failed fsync.
        assert_eq!(store.commit_count(), start + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_group_is_fsynced_aside_while_the_writer_commits_the_next() {
        let (_dir, store) = temp_store();
        store.append(one("warm"), DAY).await.expect("append");
        let syncs = store.sync_count();
        store.shared.hold_syncs.store(true, Ordering::Release);
        let start = store.commit_count();
        let mut a = spawn_big_append(&store, "a");
        committed(&store, start + 1).await;
        // "a"'s fsync is held on the syncer thread; the writer goes on meanwhile.
        let leased = tokio::time::timeout(
            Duration::from_secs(10),
            store.lease(1, Duration::from_secs(60)),
        )
        .await
        .expect("a lease is answered while the big group's fsync runs")
        .expect("lease");
        assert_eq!(leased.len(), 1);
        // A small append committed meanwhile waits behind it: fsyncs never overlap.
        let mut b = spawn_append(&store, "b");
        committed(&store, start + 3).await;
        assert!(
            within(300, &mut a).await.is_none(),
            "a is answered only after its fsync"
        );
        assert!(
            within(100, &mut b).await.is_none(),
            "b is answered only after an fsync that began after its commit"
        );
        assert_eq!(
            store.sync_count(),
            syncs,
            "no fsync ran beside the held one"
        );
        store.shared.hold_syncs.store(false, Ordering::Release);
        within(10_000, &mut a)
            .await
            .expect("a answered")
            .expect("a stored");
        within(10_000, &mut b)
            .await
            .expect("b answered")
            .expect("b stored");
        assert!(store.sync_count() > syncs);
        let queued = store.stats().await.expect("stats").queued;
        assert_eq!(queued, 2 + writer::SYNC_ASIDE_WEIGHT as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fsync_aside_fails_every_group_waiting_for_it_and_every_later_request() {
        let (_dir, store, start) = fsync_fails_while_b_waits(true).await;
        assert!(store.fatal().is_some(), "fatal after a failed fsync");
        assert!(store.append(one("c"), DAY).await.is_err());
        // No fsync ran after the failed one, for "b" or anything later.
        assert_eq!(store.sync_count(), 0);
        assert_eq!(store.commit_count(), start + 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn once_the_syncer_is_gone_the_writer_runs_every_fsync() {
        let (_dir, store) = temp_store();
        store.shared.panic_syncer.store(true, Ordering::Release);
        // The group the syncer took when it panicked is lost with it: not answered stored.
        let lost = spawn_big_append(&store, "a").await.expect("task");
        assert!(
            lost.is_err(),
            "an append whose fsync never ran is not stored"
        );
        // Time for the thread to finish unwinding (it has dropped "a" already).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let syncs = store.sync_count();
        spawn_big_append(&store, "b")
            .await
            .expect("task")
            .expect("b stored, fsynced by the writer");
        store.append(one("c"), DAY).await.expect("c stored");
        assert_eq!(store.sync_count(), syncs + 2);
        assert_eq!(store.fatal(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_appends_wait_for_an_fsync() {
        let (_dir, store) = temp_store();
        store.append(events("a", 6), DAY).await.expect("append");
        let syncs = store.sync_count();
        assert!(syncs >= 1, "the append waited for an fsync");

        // Everything else is answered at commit, without an fsync of its own.
        let commits = store.commit_count();
        let hour = Duration::from_secs(3_600);
        let leased = store.lease(10, hour).await.expect("lease");
        assert_eq!(leased.len(), 6);
        let ids: Vec<EventId> = leased.iter().map(|e| e.id).collect();
        store.ack(&ids[..3]).await.expect("ack");
        store.retry(ids[3], Utc::now()).await.expect("retry");
        store.release(&ids[4..5]).await.expect("release");
        let reason = DeadLetterReason {
            status: Some(400),
            detail: "bad".into(),
        };
        store
            .dead_letter(ids[5], reason)
            .await
            .expect("dead letter");
        let dead = store.dead_letters(10).await.expect("dead letters");
        assert_eq!(
            store
                .requeue_dead_letters(Some(&[dead[0].id]))
                .await
                .expect("requeue"),
            1
        );
        store.requeue_dead_letters(None).await.expect("requeue");
        store.rejected(10).await.expect("rejected");
        store.expire_dedup(DAY).await.expect("expire");
        assert!(store.commit_count() >= commits + 9);
        assert_eq!(store.sync_count(), syncs, "no fsync ran for them");
        assert_eq!(store.stats().await.expect("stats").queued, 3);

        // An append is answered only after its fsync.
        store.shared.hold_syncs.store(true, Ordering::Release);
        let mut held = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.append(events("b", 2), DAY).await })
        };
        assert!(
            within(500, &mut held).await.is_none(),
            "an append is answered only after its fsync"
        );
        store.shared.hold_syncs.store(false, Ordering::Release);
        let appended = within(10_000, &mut held)
            .await
            .expect("answered once the fsync ran")
            .expect("append");
        assert_eq!(appended.duplicate, vec![false, false]);
        assert!(store.sync_count() > syncs);
        assert_eq!(store.stats().await.expect("stats").queued, 5);
    }

    #[test]
    fn synchronous_parses_from_config_words() {
        assert_eq!("FULL".parse::<Synchronous>().ok(), Some(Synchronous::Full));
        assert_eq!(
            "normal".parse::<Synchronous>().ok(),
            Some(Synchronous::Normal)
        );
        assert!("off".parse::<Synchronous>().is_err());
    }
}
