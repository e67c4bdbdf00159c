//! What the store tests share: a store of either kind on a manual clock, and event makers.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use stipple_store::{
    Append, Clock, ManualClock, MemoryStore, NewEvent, RejectedInput, SqliteOptions, SqliteStore,
    Store,
};
use tempfile::TempDir;

/// A day: Segment's dedup window.
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// A lease long enough never to run out within a test unless the clock is moved.
pub const HOUR: Duration = Duration::from_secs(60 * 60);

/// A store under test and the clock it reads.
pub struct Harness {
    pub store: Arc<dyn Store>,
    pub clock: Arc<ManualClock>,
    /// Keeps the SQLite file alive for the test.
    pub dir: Option<TempDir>,
}

pub fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid start time")
}

pub fn memory() -> Harness {
    let clock = Arc::new(ManualClock::new(start()));
    Harness {
        store: Arc::new(MemoryStore::with_clock(clock.clone())),
        clock,
        dir: None,
    }
}

pub fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(start()));
    let store = open_sqlite(&dir.path().join("data/stipple.db"), clock.clone());
    Harness {
        store: Arc::new(store),
        clock,
        dir: Some(dir),
    }
}

pub fn open_sqlite(path: &Path, clock: Arc<dyn Clock>) -> SqliteStore {
    SqliteStore::open(
        path,
        SqliteOptions {
            clock,
            ..SqliteOptions::default()
        },
    )
    .expect("open sqlite store")
}

pub fn event(source: &str, message_id: &str) -> NewEvent {
    NewEvent {
        source: source.into(),
        message_id: message_id.into(),
        payload: format!(r#"{{"type":"track","event":"Test","messageId":"{message_id}"}}"#)
            .into_bytes(),
    }
}

pub fn events(source: &str, ids: &[&str]) -> Append {
    Append {
        events: ids.iter().map(|id| event(source, id)).collect(),
        rejected: Vec::new(),
    }
}

pub fn numbered(source: &str, prefix: &str, n: usize) -> Append {
    Append {
        events: (0..n)
            .map(|i| event(source, &format!("{prefix}-{i}")))
            .collect(),
        rejected: Vec::new(),
    }
}

pub fn rejection(index: Option<usize>, code: &str) -> RejectedInput {
    RejectedInput {
        source: "web".into(),
        index,
        code: code.into(),
        message: format!("refused: {code}"),
        payload: br#"{"type":"track"}"#.to_vec(),
    }
}
