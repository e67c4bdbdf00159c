//! The SQLite schema and its version (`PRAGMA user_version`), created on first start.
//!
//! Times are microseconds since the Unix epoch. The dedup keys are an append-only table,
//! a row per transaction that claimed some, indexed in memory (see `dedup`). Leases are not stored (see `leases`): only one
//! service holds a store, and its leases end with it.
//!
//! A new event is due at once and is read in id order straight off the table, after the
//! service's lease cursor: it costs no index entry to queue, lease or delete. Only an
//! event that failed (`attempts > 0`) waits for its `not_before`, and only those are in
//! the partial index `queue_retry` (`not_before, id`), so a lease reads the due ones off
//! its front whatever the queue length.
//!
//! Versions: 1 stored leases in a `lease_until` column, indexed with `not_before` as
//! `max(not_before, lease_until)`; 2 keeps leases in memory (a lease no longer rewrites
//! the row and its index entry, about a third of the writer's time per delivered event)
//! and indexed every event as `queue_due (not_before, id)`; 3 indexes only failed events;
//! 4 keeps the dedup keys a row per transaction (`dedup_keys`), not a row per key
//! (`dedup`).

use rusqlite::Connection;

use crate::StoreError;

/// The schema version this code writes and understands.
pub(super) const VERSION: i64 = 4;

const CREATE: &str = "
CREATE TABLE queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: a late ack cannot hit a newer event
    source      TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    enqueued_at INTEGER NOT NULL,
    not_before  INTEGER NOT NULL,
    payload     BLOB    NOT NULL
);
CREATE INDEX queue_retry ON queue (not_before, id) WHERE attempts > 0;

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

/// Append-only, in time order; indexed in memory (see dedup.rs for why and for `keys`).
const CREATE_DEDUP_KEYS: &str = "
CREATE TABLE dedup_keys (
    id         INTEGER PRIMARY KEY,
    first_seen INTEGER NOT NULL, -- when the last of its keys was claimed
    n          INTEGER NOT NULL, -- how many keys it holds
    keys       BLOB    NOT NULL
);
";

/// Version 1 to 2: leases leave the table (those a stopped service left end with it).
const V1_TO_V2: &str = "
DROP INDEX queue_due;
ALTER TABLE queue DROP COLUMN lease_until;
CREATE INDEX queue_due ON queue (not_before, id);
";

/// Version 2 to 3: only failed events stay indexed by time.
const V2_TO_V3: &str = "
DROP INDEX queue_due;
CREATE INDEX queue_retry ON queue (not_before, id) WHERE attempts > 0;
";

/// Version 3 to 4: each key of `dedup` becomes a row of `dedup_keys`, in the same order.
fn v3_to_v4(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(CREATE_DEDUP_KEYS)?;
    {
        let mut select =
            tx.prepare("SELECT id, source, message_id, first_seen FROM dedup ORDER BY id")?;
        let mut insert = tx.prepare(super::dedup::INSERT)?;
        let mut rows = select.query([])?;
        let mut keys = Vec::new();
        while let Some(row) = rows.next()? {
            keys.clear();
            super::dedup::encode_key(
                &mut keys,
                row.get_ref(1)?.as_str()?,
                row.get_ref(2)?.as_str()?,
            );
            insert.execute(rusqlite::params![
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(3)?,
                1,
                keys
            ])?;
        }
    }
    tx.execute_batch("DROP TABLE dedup")
}

/// Refuses a database that holds no store (an empty file, another program's database),
/// before anything is written to it: for an admin, which opens what a service made and
/// must not turn a mistyped path into an empty store.
pub(super) fn check_is_store(conn: &Connection, path: &std::path::Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(open_error)?;
    if version == 0 {
        return Err(StoreError::Open(format!(
            "{} is not a stipple store (it holds no stipple tables): check store.url, or start \
             `stipple serve` once to create the store there",
            path.display()
        )));
    }
    Ok(())
}

/// Creates the schema in an empty database, brings an older one up to date (each step
/// in its own transaction) and refuses a newer one. Only when `may_upgrade`: an admin
/// command may run beside a service of the older version, which an upgrade under it
/// would break (steps drop what its statements use).
pub(super) fn migrate(conn: &mut Connection, may_upgrade: bool) -> Result<(), StoreError> {
    loop {
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_error)?;
        if !may_upgrade && (1..VERSION).contains(&version) {
            return Err(StoreError::Open(format!(
                "the store's schema version {version} is older than this stipple's ({VERSION}), and a \
                 service of the older stipple may be running on it: start this version's \
                 `stipple serve` once (it upgrades the store), then run this again"
            )));
        }
        match version {
            0 => step_with(
                conn,
                |tx| {
                    tx.execute_batch(CREATE)?;
                    tx.execute_batch(CREATE_DEDUP_KEYS)
                },
                VERSION,
            )?,
            1 => step(conn, V1_TO_V2, 2)?,
            2 => step(conn, V2_TO_V3, 3)?,
            3 => step_with(conn, v3_to_v4, 4)?,
            VERSION => return Ok(()),
            newer => {
                return Err(StoreError::Open(format!(
                    "the store's schema version {newer} is newer than this stipple understands ({VERSION}); \
                     upgrade stipple or point it at another file"
                )));
            }
        }
    }
}

/// Runs `sql` and sets the version to `to`, in one transaction.
fn step(conn: &mut Connection, sql: &str, to: i64) -> Result<(), StoreError> {
    step_with(conn, |tx| tx.execute_batch(sql), to)
}

/// Runs `change` and sets the version to `to`, in one transaction.
fn step_with(
    conn: &mut Connection,
    change: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    to: i64,
) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(open_error)?;
    change(&tx).map_err(open_error)?;
    tx.pragma_update(None, "user_version", to)
        .map_err(open_error)?;
    tx.commit().map_err(open_error)
}

fn open_error(e: rusqlite::Error) -> StoreError {
    StoreError::Open(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue and dedup keys of a version 1 store, as version 1 created them.
    const QUEUE_V1: &str = "
CREATE TABLE dedup (
    id         INTEGER PRIMARY KEY,
    source     TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    first_seen INTEGER NOT NULL
);
INSERT INTO dedup (source, message_id, first_seen) VALUES ('web', 'a', 1), ('app', 'b', 2);
CREATE TABLE queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    enqueued_at INTEGER NOT NULL,
    not_before  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    payload     BLOB    NOT NULL
);
CREATE INDEX queue_due ON queue (max(not_before, lease_until), id);
INSERT INTO queue (source, message_id, enqueued_at, not_before, lease_until, payload)
VALUES ('web', 'a', 1, 1, 0, x'7b7d'), ('web', 'b', 2, 5, 99, x'7b7d');
PRAGMA user_version = 1;
";

    #[test]
    fn a_version_1_queue_keeps_its_events_and_loses_its_leases() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(QUEUE_V1).expect("v1");
        migrate(&mut conn, true).expect("migrate");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, VERSION);
        let rows: Vec<(String, i64)> = conn
            .prepare("SELECT message_id, not_before FROM queue ORDER BY not_before, id")
            .expect("prepare")
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(rows, [("a".to_owned(), 1), ("b".to_owned(), 5)]);
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('queue')")
            .expect("prepare")
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("columns");
        assert!(!columns.iter().any(|c| c == "lease_until"), "{columns:?}");
        assert_eq!(queue_indexes(&conn), queue_indexes(&fresh()));
    }

    #[test]
    fn only_a_service_upgrades_an_older_store() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(QUEUE_V1).expect("v1");
        let err = migrate(&mut conn, false).expect_err("an admin does not upgrade");
        assert!(
            err.to_string()
                .contains("start this version's `stipple serve` once"),
            "{err}"
        );
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, 1, "left as it was");
        // A new store and a current one are an admin's to open.
        migrate(&mut Connection::open_in_memory().expect("open"), false).expect("create");
        migrate(&mut fresh(), false).expect("current");
    }

    #[test]
    fn version_3_dedup_keys_survive_in_order_as_rows_of_one_key() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(QUEUE_V1).expect("v1");
        migrate(&mut conn, true).expect("migrate");
        let rows: Vec<(i64, i64, i64, Vec<u8>)> = conn
            .prepare("SELECT id, first_seen, n, keys FROM dedup_keys ORDER BY id")
            .expect("prepare")
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        let key = |source: &str, id: &str| {
            let mut keys = Vec::new();
            super::super::dedup::encode_key(&mut keys, source, id);
            keys
        };
        assert_eq!(
            rows,
            [(1, 1, 1, key("web", "a")), (2, 2, 1, key("app", "b"))]
        );
        let old: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'dedup'",
                [],
                |row| row.get(0),
            )
            .expect("count");
        assert_eq!(old, 0, "the old table is gone");
    }

    fn fresh() -> Connection {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn, true).expect("create");
        conn
    }

    /// The queue's indexes as SQL, by name.
    fn queue_indexes(conn: &Connection) -> Vec<(String, String)> {
        conn.prepare(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'queue' \
             AND sql IS NOT NULL ORDER BY name",
        )
        .expect("prepare")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("indexes")
    }

    #[test]
    fn only_failed_events_are_indexed_by_time() {
        let indexes = queue_indexes(&fresh());
        assert_eq!(indexes.len(), 1, "{indexes:?}");
        assert_eq!(indexes[0].0, "queue_retry");
        assert!(indexes[0].1.contains("WHERE attempts > 0"), "{indexes:?}");
    }
}
