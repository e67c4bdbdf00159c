//! The SQLite schema and its version (`PRAGMA user_version`), created on first start.
//!
//! Times are microseconds since the Unix epoch. The dedup keys are an append-only table
//! indexed in memory (see `dedup`). A queued event is due when
//! `max(not_before, lease_until) <= now` (`lease_until` is 0 when not leased); the
//! `queue_due` index holds exactly that expression, so `lease` reads the oldest due rows
//! off the front of one index whatever the queue length.

use rusqlite::Connection;

use crate::StoreError;

/// The schema version this code writes and understands.
pub(super) const VERSION: i64 = 1;

const CREATE_V1: &str = "
CREATE TABLE queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: a late ack cannot hit a newer event
    source      TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    enqueued_at INTEGER NOT NULL,
    not_before  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    payload     BLOB    NOT NULL
);
CREATE INDEX queue_due ON queue (max(not_before, lease_until), id);

-- Append-only, in time order; indexed in memory (see dedup.rs for why).
CREATE TABLE dedup (
    id         INTEGER PRIMARY KEY,
    source     TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    first_seen INTEGER NOT NULL
);

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    status      INTEGER,
    detail      TEXT    NOT NULL,
    dead_at     INTEGER NOT NULL,
    payload     BLOB    NOT NULL
);

CREATE TABLE rejected (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT    NOT NULL,
    item_index  INTEGER,
    code        TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    payload     BLOB    NOT NULL
);

-- Row counts, kept in step by every transaction, so that every process sees the same.
CREATE TABLE counts (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    queued       INTEGER NOT NULL,
    dead_letters INTEGER NOT NULL,
    rejected     INTEGER NOT NULL
);
INSERT INTO counts (id, queued, dead_letters, rejected) VALUES (1, 0, 0, 0);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
";

/// Creates the schema in an empty database, accepts the current version and refuses a
/// newer one. Later versions add their steps here, each in its own transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_error)?;
    match version {
        0 => {
            let tx = conn.transaction().map_err(open_error)?;
            tx.execute_batch(CREATE_V1).map_err(open_error)?;
            tx.pragma_update(None, "user_version", VERSION)
                .map_err(open_error)?;
            tx.commit().map_err(open_error)
        }
        VERSION => Ok(()),
        newer => Err(StoreError::Open(format!(
            "the store's schema version {newer} is newer than this stipple understands ({VERSION}); \
             upgrade stipple or point it at another file"
        ))),
    }
}

fn open_error(e: rusqlite::Error) -> StoreError {
    StoreError::Open(e.to_string())
}
