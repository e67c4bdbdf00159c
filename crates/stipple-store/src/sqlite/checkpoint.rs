//! The checkpointer thread: copies the write-ahead log back into the database file on
//! its own connection, so that the writer never waits for it.
//!
//! A checkpoint copies the log's pages into the database and fsyncs both files: tens of
//! milliseconds on a loaded disk. Run by the writer (SQLite's auto-checkpoint), every
//! request waits for it: appends stall and delivery runs out of leased events (measured:
//! both cores about half idle for ~30 ms every ~0.6 s of a delivery drain). Here the
//! writer only counts what it writes and pokes this thread every [`PASS_WEIGHT`] rows;
//! the thread then runs a `PASSIVE` checkpoint, which copies what is committed without
//! taking any lock the writer needs.
//!
//! The log restarts from its beginning only when a checkpoint has copied all of it
//! before the next write begins, which a passive pass under steady writes rarely
//! manages. So once a pass has copied a log of [`RESTART_FRAMES`] or more it asks the
//! writer for a `RESTART` checkpoint, which the writer runs itself between two groups:
//! it copies what came after the pass (one group, or what the last pass took to copy)
//! and resets the log. (Not from this thread: a `RESTART` needs the write lock, and a
//! writer that begins its next transaction at once keeps winning it: measured, the log
//! then grew without bound.) The log file thus stays near `RESTART_FRAMES` pages
//! (64 MiB).
//!
//! The writer never waits in that `RESTART`: it runs with no busy timeout and is tried
//! once per ask. Two things could make it wait, and both are kept out:
//! - a pass in progress holds SQLite's checkpoint lock, so no pass starts while an ask
//!   is pending (a pass on the idle timer aside); a failed try gives the next pass back
//!   the decision;
//! - a read left open on another connection (an admin listing piped to a pager nobody
//!   reads) pins the log: nothing written after its snapshot can be copied, so the log
//!   cannot restart until it ends. A pass sees this (it copied less than the log holds)
//!   and asks for nothing, and warns. Before, the writer waited out its busy timeout on
//!   such a reader after every group: appends crawled at one group per 5 s.
//!
//! The log grows while a read pins it; once the read ends, passes copy the backlog here
//! (not in the writer), the restart follows, and the first commit after it cuts the file
//! back to [`LOG_SIZE_LIMIT`] (SQLite's `journal_size_limit`).
//!
//! Durability is SQLite's own: a checkpoint fsyncs the log before copying and the
//! database before the log may be reused, whichever connection runs it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::{STORE_WARNINGS_EVERY, Throttle};

/// Rows (request weights) written between two passes under load.
pub(super) const PASS_WEIGHT: usize = 8_192;
/// Log pages that make a pass ask the writer for a `RESTART` checkpoint.
const RESTART_FRAMES: i64 = 16_384;
/// SQLite's page size, which the store keeps at its default.
const PAGE_BYTES: i64 = 4096;
/// The size a restarted log file is cut back to (bytes): above the ~80 MB it keeps
/// under steady load, so only a log that a long read made grow is cut.
pub(super) const LOG_SIZE_LIMIT: i64 = 128 << 20;
/// A pass that took longer leaves the writer much to copy (what was appended
/// meanwhile): another pass runs before the restart is asked for.
const SLOW_PASS: Duration = Duration::from_millis(100);
/// Extra passes run back to back at most this many times before asking anyway.
const CATCH_UP_PASSES: usize = 4;
/// How long something written may wait for a pass when little is written.
const IDLE_PASS: Duration = Duration::from_secs(5);

/// The writer's end: counts writes and pokes the checkpointer.
#[derive(Debug)]
pub(super) struct Trigger {
    written: usize,
    poke: SyncSender<()>,
    /// Set by the checkpointer when the log should restart.
    restart: Arc<AtomicBool>,
    /// The writer connection's busy timeout, set back after a restart's try.
    busy_timeout: Duration,
}

impl Trigger {
    /// Opens the checkpointer's connection to the store at `path` and starts its thread.
    pub(super) fn start(path: &Path, busy_timeout: Duration) -> Result<Self, String> {
        let conn = open(path, busy_timeout)
            .map_err(|e| format!("cannot open the store for its checkpoints: {e}"))?;
        let (poke, pokes) = std::sync::mpsc::sync_channel(1);
        let restart = Arc::new(AtomicBool::new(false));
        let asks = Arc::clone(&restart);
        std::thread::Builder::new()
            .name("stipple-store-checkpoint".into())
            .spawn(move || run(&conn, &pokes, &asks))
            .map_err(|e| format!("cannot start the store checkpoint thread: {e}"))?;
        Ok(Self {
            written: 0,
            poke,
            restart,
            busy_timeout,
        })
    }

    /// Restarts the log if the checkpointer asked for it; run by the writer between
    /// groups, with no transaction open. Never waits: tried once per ask.
    pub(super) fn restart_if_asked(&self, conn: &Connection) {
        if !self.restart.load(Ordering::Acquire) {
            return;
        }
        // Whatever the outcome, the next pass decides again (and may only start once
        // this try is over, so it never holds the checkpoint lock against it).
        let outcome = without_waiting(conn, self.busy_timeout, |conn| checkpoint(conn, "RESTART"));
        self.restart.store(false, Ordering::Release);
        match outcome {
            Ok((0, frames, _)) => tracing::debug!(frames, "store write-ahead log restarted"),
            // Another connection read or wrote just then: asked again after a pass.
            Ok(_) => tracing::debug!("store write-ahead log restart put off: the file is busy"),
            Err(error) => {
                if let Some(held_back) = FAILURES.admit() {
                    tracing::warn!(%error, held_back, "store log restart failed");
                }
            }
        }
    }

    /// A group of `weight` has committed.
    pub(super) fn wrote(&mut self, weight: usize) {
        self.written += weight;
        if self.written >= PASS_WEIGHT {
            match self.poke.try_send(()) {
                // A full channel: a pass is already asked for.
                Ok(()) | Err(TrySendError::Full(())) => self.written = 0,
                Err(TrySendError::Disconnected(())) => {}
            }
        }
    }
}

/// The thread: a pass when poked, or after [`IDLE_PASS`]; ends with the writer.
fn run(conn: &Connection, pokes: &Receiver<()>, restart: &AtomicBool) {
    loop {
        match pokes.recv_timeout(IDLE_PASS) {
            // The writer has a restart to try: a pass now would hold the checkpoint lock
            // it needs. (It tries after its next group, long before the next poke.)
            Ok(()) if restart.load(Ordering::Acquire) => continue,
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Err(error) = pass(conn, restart) {
            if let Some(held_back) = FAILURES.admit() {
                tracing::warn!(%error, held_back, "store checkpoint failed; the next one will try again");
            }
        }
    }
}

/// Failed checkpoints and log restarts: a full or failing disk fails every pass alike,
/// so one is logged per interval, with how many like it were held back.
static FAILURES: Throttle = Throttle::new(STORE_WARNINGS_EVERY);

/// Passes that found the log long and pinned by a read: one warning per interval.
static PINNED: Throttle = Throttle::new(STORE_WARNINGS_EVERY);

fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    // NORMAL: a checkpoint fsyncs the log before and the database after copying.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// A passive checkpoint; asks the writer for a restart when the log has grown long and
/// this pass copied all of it (again at once while passes are slow, so that the
/// writer's share stays small).
fn pass(conn: &Connection, restart: &AtomicBool) -> rusqlite::Result<Outcome> {
    let mut passes = 0;
    loop {
        let started = Instant::now();
        let outcome = checkpoint(conn, "PASSIVE")?;
        let (_, frames, copied) = outcome;
        passes += 1;
        if frames < RESTART_FRAMES {
            return Ok(outcome);
        }
        if copied < frames {
            // A read holds an old snapshot: what came after it cannot be copied yet.
            if let Some(held_back) = PINNED.admit() {
                tracing::warn!(
                    log_mib = (frames * PAGE_BYTES) >> 20,
                    held_back,
                    "the store's write-ahead log cannot restart while another connection \
                     keeps a read open (an admin command whose output is not read?); it \
                     grows until that read ends"
                );
            }
            return Ok(outcome);
        }
        if started.elapsed() < SLOW_PASS || passes > CATCH_UP_PASSES {
            restart.store(true, Ordering::Release);
            return Ok(outcome);
        }
    }
}

/// What `PRAGMA wal_checkpoint` answers: (blocked, frames in the log, frames copied).
type Outcome = (i64, i64, i64);

/// Runs `f` on `conn` with no busy timeout, then sets `busy_timeout` back.
fn without_waiting<T>(
    conn: &Connection,
    busy_timeout: Duration,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.busy_timeout(Duration::ZERO)?;
    let result = f(conn);
    conn.busy_timeout(busy_timeout)?;
    result
}

fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<Outcome> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::wal_path as wal;

    /// A writer connection set up as the store's, with auto-checkpoint off.
    fn writer(path: &Path) -> Connection {
        let conn = Connection::open(path).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no auto-checkpoint");
        conn.execute_batch("CREATE TABLE t (x BLOB)")
            .expect("table");
        conn
    }

    /// A trigger with no thread behind it: its pokes wait in the returned receiver.
    fn trigger(restart: bool) -> (Trigger, Receiver<()>) {
        let (poke, pokes) = std::sync::mpsc::sync_channel(1);
        let trigger = Trigger {
            written: 0,
            poke,
            restart: Arc::new(AtomicBool::new(restart)),
            busy_timeout: Duration::from_secs(5),
        };
        (trigger, pokes)
    }

    fn write_pages(conn: &Connection, rows: usize) {
        let mut insert = conn.prepare("INSERT INTO t VALUES (?1)").expect("prepare");
        for _ in 0..rows {
            insert.execute([vec![7u8; 4000]]).expect("insert");
        }
    }

    #[test]
    fn a_pass_copies_the_log_without_holding_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db");
        let writer = writer(&path);
        write_pages(&writer, 100);
        let checkpointer = open(&path, Duration::from_secs(5)).expect("open");
        // The writer is inside a write transaction: a passive pass still runs.
        writer.execute_batch("BEGIN IMMEDIATE").expect("begin");
        let (blocked, frames, copied) = checkpoint(&checkpointer, "PASSIVE").expect("pass");
        assert_eq!(blocked, 0);
        assert!(frames >= 100, "{frames}");
        assert_eq!(copied, frames);
        writer.execute_batch("COMMIT").expect("commit");
    }

    #[test]
    fn a_long_log_is_restarted_by_the_writer_when_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db");
        let writer = writer(&path);
        let checkpointer = open(&path, Duration::from_secs(5)).expect("open");
        let (trigger, _pokes) = trigger(false);
        write_pages(&writer, 100);
        pass(&checkpointer, &trigger.restart).expect("pass");
        assert!(
            !trigger.restart.load(Ordering::Acquire),
            "a short log stays"
        );
        write_pages(&writer, usize::try_from(RESTART_FRAMES).expect("frames"));
        pass(&checkpointer, &trigger.restart).expect("pass");
        assert!(
            trigger.restart.load(Ordering::Acquire),
            "a long log is restarted"
        );
        let size = std::fs::metadata(wal(&path)).expect("wal").len();
        trigger.restart_if_asked(&writer);
        assert!(!trigger.restart.load(Ordering::Acquire));
        // The next write starts the log again from its beginning: it does not grow.
        write_pages(&writer, 10);
        let (_, frames, _) = checkpoint(&writer, "PASSIVE").expect("passive");
        assert!(frames < 100, "the log restarted: {frames} frames");
        assert_eq!(std::fs::metadata(wal(&path)).expect("wal").len(), size);
    }

    #[test]
    fn a_restart_blocked_by_a_reader_is_not_waited_for_and_asked_again_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db");
        let writer = writer(&path);
        // The store's writer waits this long for locks elsewhere; not in a restart.
        writer
            .busy_timeout(Duration::from_secs(60))
            .expect("timeout");
        let checkpointer = open(&path, Duration::from_secs(60)).expect("open");
        write_pages(&writer, 10);
        // A reader on the log's current snapshot keeps it from restarting.
        let reader = Connection::open(&path).expect("reader");
        reader.execute_batch("BEGIN").expect("begin");
        let _: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .expect("read");
        write_pages(&writer, 10);
        let (mut trigger, _pokes) = trigger(true);
        trigger.busy_timeout = Duration::from_secs(60);
        let tried = Instant::now();
        trigger.restart_if_asked(&writer);
        assert!(
            tried.elapsed() < Duration::from_secs(30),
            "the writer waited for the reader"
        );
        assert!(
            !trigger.restart.load(Ordering::Acquire),
            "tried once; the next pass decides"
        );
        // The writer's own busy timeout is back.
        let (_, frames, _) = checkpoint(&writer, "PASSIVE").expect("passive");
        assert!(frames >= 20, "{frames}");
        // A long log that the reader pins: the pass copies what it may and asks nothing.
        write_pages(&writer, usize::try_from(RESTART_FRAMES).expect("frames"));
        let (_, frames, copied) = pass(&checkpointer, &trigger.restart).expect("pass");
        assert!(copied < frames, "{copied} of {frames}");
        assert!(
            !trigger.restart.load(Ordering::Acquire),
            "pinned: not asked"
        );
        // The read ends: the next pass copies the rest and asks; the writer restarts.
        reader.execute_batch("COMMIT").expect("end the read");
        let (_, frames, copied) = pass(&checkpointer, &trigger.restart).expect("pass");
        assert_eq!(copied, frames);
        assert!(trigger.restart.load(Ordering::Acquire), "asked");
        trigger.restart_if_asked(&writer);
        assert!(!trigger.restart.load(Ordering::Acquire), "done");
        write_pages(&writer, 1);
        let (_, frames, _) = checkpoint(&writer, "PASSIVE").expect("passive");
        assert!(frames < 5, "the log restarted: {frames} frames");
    }

    #[test]
    fn the_trigger_pokes_once_per_pass_weight() {
        let (mut trigger, pokes) = trigger(false);
        trigger.wrote(PASS_WEIGHT - 1);
        assert!(pokes.try_recv().is_err());
        trigger.wrote(1);
        assert!(pokes.try_recv().is_ok());
        trigger.wrote(PASS_WEIGHT / 2);
        assert!(pokes.try_recv().is_err());
    }
}
