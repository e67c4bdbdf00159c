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
//! manages. So once a pass finds the log holding [`RESTART_FRAMES`] it asks the writer
//! for a `RESTART` checkpoint, which the writer runs itself between two groups: it
//! copies what the passive passes left (little by then) and resets the log. (Not from
//! this thread: a `RESTART` needs the write lock, and a writer that begins its next
//! transaction at once keeps winning it: measured, the log then grew without bound.)
//! The log file thus stays near `RESTART_FRAMES` pages (64 MiB).
//!
//! Durability is SQLite's own: a checkpoint fsyncs the log before copying and the
//! database before the log may be reused, whichever connection runs it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::{STORE_WARNINGS_EVERY, Throttle};

/// Rows (request weights) written between two passes under load.
pub(super) const PASS_WEIGHT: usize = 8_192;
/// Log pages that make a pass ask the writer for a `RESTART` checkpoint.
const RESTART_FRAMES: i64 = 16_384;
/// How long something written may wait for a pass when little is written.
const IDLE_PASS: Duration = Duration::from_secs(5);

/// The writer's end: counts writes and pokes the checkpointer.
#[derive(Debug)]
pub(super) struct Trigger {
    written: usize,
    poke: SyncSender<()>,
    /// Set by the checkpointer when the log should restart.
    restart: Arc<AtomicBool>,
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
        })
    }

    /// Restarts the log if the checkpointer asked for it; run by the writer between
    /// groups, with no transaction open.
    pub(super) fn restart_if_asked(&self, conn: &Connection) {
        if !self.restart.load(Ordering::Acquire) {
            return;
        }
        match checkpoint(conn, "RESTART") {
            Ok((0, frames, _)) => {
                self.restart.store(false, Ordering::Release);
                tracing::debug!(frames, "store write-ahead log restarted");
            }
            // The checkpointer is mid-pass (SQLite answers at once, without waiting):
            // try again after the next group.
            Ok(_) => {}
            Err(error) => {
                // Asked again by the next pass that finds the log long.
                self.restart.store(false, Ordering::Release);
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
    while let Ok(()) | Err(RecvTimeoutError::Timeout) = pokes.recv_timeout(IDLE_PASS) {
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

/// A passive checkpoint; asks for a restart when the log has grown long.
fn pass(conn: &Connection, restart: &AtomicBool) -> rusqlite::Result<Outcome> {
    let outcome = checkpoint(conn, "PASSIVE")?;
    if outcome.1 >= RESTART_FRAMES {
        restart.store(true, Ordering::Release);
    }
    Ok(outcome)
}

/// What `PRAGMA wal_checkpoint` answers: (blocked, frames in the log, frames copied).
type Outcome = (i64, i64, i64);

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
    fn a_restart_that_cannot_finish_is_tried_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db");
        let writer = writer(&path);
        writer.busy_timeout(Duration::ZERO).expect("no waiting");
        write_pages(&writer, 10);
        // A reader on the log's current snapshot keeps it from restarting.
        let reader = Connection::open(&path).expect("reader");
        reader.execute_batch("BEGIN").expect("begin");
        let _: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .expect("read");
        write_pages(&writer, 10);
        let (trigger, _pokes) = trigger(true);
        trigger.restart_if_asked(&writer);
        assert!(trigger.restart.load(Ordering::Acquire), "still asked for");
        reader.execute_batch("COMMIT").expect("end the read");
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
