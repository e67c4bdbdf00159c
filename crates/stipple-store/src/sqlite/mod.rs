//! [`SqliteStore`]: the embedded durable store, one SQLite file in WAL mode.
//!
//! One writer thread owns the connection and runs every operation; appends waiting at
//! the same time commit in one transaction (group commit, see `writer`). The file is
//! opened in exclusive locking mode, so one process at a time holds a store: that is what
//! lets `open` end the leases a crashed process left behind and keep counts in memory.

mod ops;
mod schema;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use self::writer::{Call, Delta, Shared, Work};
use crate::clock::{Clock, SystemClock};
use crate::time::{Micros, duration_micros, to_micros};
use crate::{
    Append, Appended, DeadLetter, DeadLetterReason, EventId, Leased, Stats, Store, StoreError,
    StoredRejection,
};

/// Requests waiting for the writer thread before callers wait to send theirs.
const CHANNEL_CAPACITY: usize = 4096;
/// WAL pages written before SQLite copies them back into the database file.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4000;

/// When SQLite calls fsync (its `PRAGMA synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: an answered append survives a power loss. The default.
    #[default]
    Full,
    /// fsync only at checkpoints: an answered append survives the process crashing but
    /// the last commits can be lost if the machine loses power.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
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

/// How to open a [`SqliteStore`]. Build it with `..Default::default()`.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// When to fsync. Default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// How long to wait for a lock held by another connection. Default 5 s.
    pub busy_timeout: Duration,
    /// SQLite's page cache, in KiB. Default 16 MiB.
    pub cache_size_kib: u32,
    /// Where the store reads the time. Default the system clock.
    pub clock: Arc<dyn Clock>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            cache_size_kib: 16 * 1024,
            clock: Arc::new(SystemClock),
        }
    }
}

/// The embedded durable store: a SQLite file served by one writer thread.
///
/// Dropping every handle stops the writer once the requests already sent are done.
pub struct SqliteStore {
    path: PathBuf,
    synchronous: Synchronous,
    requests: mpsc::Sender<Box<dyn Work>>,
    shared: Arc<Shared>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating its directory and schema on first start, and
    /// ends every lease left by a previous process (those events are due at once).
    ///
    /// This does blocking file I/O: call it at startup, or inside `spawn_blocking`. It
    /// fails if another process holds the store open.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Open(format!(
                    "cannot create the directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(path, e))?;
        configure(&conn, &options).map_err(|e| open_error(path, e))?;
        schema::migrate(&mut conn)?;
        let now = to_micros(options.clock.now());
        let cleared = ops::clear_leases(&conn, now).map_err(|e| open_error(path, e))?;
        let (queued, dead_letters, rejected) =
            ops::counts(&conn).map_err(|e| open_error(path, e))?;
        tracing::info!(
            path = %path.display(),
            queued,
            dead_letters,
            rejected,
            leases_ended = cleared,
            "store opened"
        );
        let shared = Arc::new(Shared::default());
        shared.queued.store(queued, Ordering::Relaxed);
        shared.dead_letters.store(dead_letters, Ordering::Relaxed);
        shared.rejected.store(rejected, Ordering::Relaxed);

        let (requests, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let clock = options.clock;
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("stipple-store-writer".into())
            .spawn(move || writer::run(conn, clock, receiver, thread_shared))
            .map_err(|e| StoreError::Open(format!("cannot start the store writer thread: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            synchronous: options.synchronous,
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

    /// Runs `f` on the writer thread inside the current group's transaction and returns
    /// its value once that transaction has committed.
    async fn call<T, F>(&self, weight: usize, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Micros) -> rusqlite::Result<(T, Delta)> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let work: Box<dyn Work> = Box::new(Call {
            weight: weight.max(1),
            f,
            reply,
        });
        self.requests
            .send(work)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

fn configure(conn: &Connection, options: &SqliteOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    if let Ok(extra) = std::env::var("XX_PRAGMAS") {
        conn.execute_batch(&extra)?;
    } // XXTEMP
    // Before the first read: one process owns the file, and WAL needs no shared memory.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode stayed {mode}, WAL is needed"
        )));
    }
    conn.pragma_update(None, "synchronous", options.synchronous.pragma())?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_size_kib))?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    let busy = matches!(
        &e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    if busy {
        StoreError::Open(format!(
            "{} is in use by another process: the embedded store serves one stipple process at a time, stop the other one or use another file",
            path.display()
        ))
    } else {
        StoreError::Open(format!("{}: {e}", path.display()))
    }
}

fn no_delta<T>(value: T) -> (T, Delta) {
    (value, Delta::default())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn append(&self, append: Append, dedup_window: Duration) -> Result<Appended, StoreError> {
        let window = duration_micros(dedup_window);
        let weight = append.events.len() + append.rejected.len();
        self.call(weight, move |conn, now| {
            ops::append(conn, now, &append, window)
        })
        .await
    }

    async fn lease(&self, max: usize, lease_for: Duration) -> Result<Vec<Leased>, StoreError> {
        let lease_for = duration_micros(lease_for);
        self.call(max, move |conn, now| {
            ops::lease(conn, now, max, now.saturating_add(lease_for)).map(no_delta)
        })
        .await
    }

    async fn ack(&self, ids: &[EventId]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.call(ids.len(), move |conn, _| Ok(((), ops::ack(conn, &ids)?)))
            .await
    }

    async fn retry(&self, id: EventId, not_before: DateTime<Utc>) -> Result<(), StoreError> {
        let not_before = to_micros(not_before);
        self.call(1, move |conn, _| {
            ops::retry(conn, id, not_before).map(no_delta)
        })
        .await
    }

    async fn release(&self, ids: &[EventId]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.call(ids.len(), move |conn, _| {
            ops::release(conn, &ids).map(no_delta)
        })
        .await
    }

    async fn dead_letter(&self, id: EventId, reason: DeadLetterReason) -> Result<(), StoreError> {
        self.call(1, move |conn, now| {
            Ok(((), ops::dead_letter(conn, now, id, &reason)?))
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.call(limit, move |conn, _| {
            ops::dead_letters(conn, limit).map(no_delta)
        })
        .await
    }

    async fn requeue_dead_letters(&self, ids: Option<&[EventId]>) -> Result<u64, StoreError> {
        let moved = |delta: Delta| u64::try_from(delta.queued).unwrap_or(0);
        if let Some(ids) = ids {
            let ids = ids.to_vec();
            return self
                .call(ids.len(), move |conn, now| {
                    let delta = ops::requeue(conn, now, &ids)?;
                    Ok((moved(delta), delta))
                })
                .await;
        }
        // All of them, a chunk per transaction so appends are not held up meanwhile.
        let mut total = 0;
        loop {
            let chunk = self
                .call(ops::CHUNK, move |conn, now| {
                    let delta = ops::requeue_oldest(conn, now, ops::CHUNK)?;
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
        self.call(limit, move |conn, _| {
            ops::rejected(conn, limit).map(no_delta)
        })
        .await
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
        // A chunk per transaction so appends are not held up meanwhile.
        let mut total = 0;
        loop {
            let chunk = self
                .call(ops::CHUNK, move |conn, now| {
                    ops::expire_dedup(conn, now.saturating_sub(window), ops::CHUNK).map(no_delta)
                })
                .await?;
            total += chunk;
            if chunk < ops::CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.call(1, move |conn, now| ops::touch(conn, now).map(no_delta))
            .await
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
        schema::migrate(&mut conn).expect("schema");
        ops::query_plan(&conn, sql).expect("plan").join("\n")
    }

    #[test]
    fn lease_reads_the_due_index_without_sorting() {
        let plan = plan(&ops::SELECT_DUE.replace("?1", "0").replace("?2", "10"));
        assert!(plan.contains("USING INDEX queue_due"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn clearing_leases_at_open_reads_the_due_index() {
        let plan = plan(&ops::CLEAR_LEASES.replace("?1", "0"));
        assert!(plan.contains("USING INDEX queue_due"), "{plan}");
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
