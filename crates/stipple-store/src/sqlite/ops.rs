//! The store's operations as SQL, run on the writer thread inside a group's transaction.
//! Every statement is prepared once and cached on the connection.
//!
//! Leases live in memory ([`Leases`]): the one service holding the store is the only
//! one that leases, and its leases end with it, so a lease need not be written at all.
//!
//! An ack deletes each run of consecutive ids with one range statement (`… BETWEEN …`)
//! and any other id with a single-row statement (measured with `append_bench --deliver`:
//! writer CPU per delivered event ~2.2 → ~1.7 µs; delivery acknowledges mostly in id
//! order). Not one statement over an id list (`… WHERE id IN (…)`): in an earlier
//! version that measured no faster than a statement per id.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::leases::Leases;
use super::writer::{Db, Delta, Job, Prepared};
use crate::time::{Micros, from_micros};
use crate::{
    Append, Appended, DeadLetter, DeadLetterReason, EventId, Leased, RejectedInput, StoredRejection,
};

/// How many rows one chunked maintenance request (dedup expiry, requeue all) touches, so
/// that appends waiting behind it are not held up for long.
pub(super) const CHUNK: usize = 5_000;

pub(super) const INSERT_EVENT: &str = "
INSERT INTO queue (source, message_id, enqueued_at, not_before, payload) VALUES (?1, ?2, ?3, ?3, ?4)";

const INSERT_REJECTED: &str = "
INSERT INTO rejected (source, item_index, code, message, received_at, payload)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// The columns of a [`Leased`], as [`leased`] reads them.
macro_rules! leased_columns {
    () => {
        "SELECT id, source, message_id, payload, attempts, enqueued_at FROM queue"
    };
}

/// Failed events whose retry is due, through the partial index `queue_retry` (only
/// events with an attempt are in it). Only `id` comes from the index: SQLite seeks a
/// row's table entry only when another column is read, so rows skipped for a live lease
/// cost an index step each.
pub(super) const SELECT_RETRY_DUE: &str = concat!(
    leased_columns!(),
    " WHERE attempts > 0 AND not_before <= ?1 ORDER BY not_before, id"
);

/// One event due again without an attempt (handed back, or its lease ran out).
const SELECT_AGAIN: &str = concat!(leased_columns!(), " WHERE id = ?1 AND attempts = 0");

/// New events after the lease cursor, in the table's own order (no index).
pub(super) const SELECT_NEW: &str = concat!(leased_columns!(), " WHERE id > ?1 ORDER BY id");

/// Most rows one lease steps over beyond those it takes, looking for new events among
/// failed ones (those wait in `queue_retry`): bounds the time a lease holds the writer.
const SCAN_SLACK: usize = 16_384;

const DELETE_EVENT: &str = "DELETE FROM queue WHERE id = ?1";

/// Every row of a run of consecutive ids.
const DELETE_RUN: &str = "DELETE FROM queue WHERE id BETWEEN ?1 AND ?2";

const RETRY: &str = "
UPDATE queue SET attempts = attempts + 1, not_before = ?2 WHERE id = ?1";

const COPY_TO_DEAD: &str = "
INSERT INTO dead_letters (source, message_id, attempts, enqueued_at, status, detail, dead_at, payload)
SELECT source, message_id, attempts + 1, enqueued_at, ?2, ?3, ?4, payload FROM queue WHERE id = ?1";

const SELECT_DEAD: &str = "
SELECT id, source, message_id, payload, attempts, status, detail, dead_at FROM dead_letters
ORDER BY id LIMIT ?1";

const SELECT_DEAD_IDS: &str = "SELECT id FROM dead_letters ORDER BY id LIMIT ?1";

const COPY_FROM_DEAD: &str = "
INSERT INTO queue (source, message_id, attempts, enqueued_at, not_before, payload)
SELECT source, message_id, 0, ?2, ?2, payload FROM dead_letters WHERE id = ?1";

const DELETE_DEAD: &str = "DELETE FROM dead_letters WHERE id = ?1";

const SELECT_REJECTED: &str = "
SELECT id, source, item_index, code, message, payload, received_at FROM rejected
ORDER BY id LIMIT ?1";

/// The ids and times of the oldest `?1` rejected inputs, in id order (ids follow
/// arrival), for a purge to find how far to go without reading the whole table.
const OLDEST_REJECTED: &str = "SELECT id, received_at FROM rejected ORDER BY id LIMIT ?1";

/// The same for dead letters.
const OLDEST_DEAD: &str = "SELECT id, dead_at FROM dead_letters ORDER BY id LIMIT ?1";

const DELETE_REJECTED_TO: &str = "DELETE FROM rejected WHERE id <= ?1";

const DELETE_DEAD_TO: &str = "DELETE FROM dead_letters WHERE id <= ?1";

const TOUCH: &str = "
INSERT INTO meta (key, value) VALUES ('last_write_check', ?1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// An append: queues the new events and keeps the rejected inputs, with its group's
/// prepared `INSERT`. `window` 0 turns dedup off.
pub(super) struct AppendJob {
    pub(super) append: Append,
    pub(super) window: Micros,
}

impl Job<Appended> for AppendJob {
    fn run(
        &mut self,
        db: &mut Db,
        prepared: &mut Prepared<'_>,
        now: Micros,
    ) -> rusqlite::Result<(Appended, Delta)> {
        let Self { append, window } = self;
        let window = *window;
        let cutoff = now.saturating_sub(window);
        let Db { conn, dedup, .. } = db;
        let mut claimer = dedup.claimer(conn);
        let insert = prepared.insert_event()?;
        let mut duplicate = Vec::with_capacity(append.events.len());
        let mut delta = Delta::default();
        for event in &append.events {
            let fresh =
                window == 0 || claimer.claim(&event.source, &event.message_id, now, cutoff)?;
            if fresh {
                insert.execute(params![event.source, event.message_id, now, event.payload])?;
                delta.queued += 1;
            }
            duplicate.push(!fresh);
        }
        if !append.rejected.is_empty() {
            let mut insert = conn.prepare_cached(INSERT_REJECTED)?;
            for input in &append.rejected {
                let index = input.index.map(|i| i64::try_from(i).unwrap_or(i64::MAX));
                insert.execute(params![
                    input.source,
                    index,
                    input.code,
                    input.message,
                    now,
                    input.payload
                ])?;
                delta.rejected += 1;
            }
        }
        Ok((Appended { duplicate }, delta))
    }
}

/// Leases up to `max` due events until `lease_until`: failed events whose retry is
/// due first, then events handed back or whose lease ran out, then new events in the
/// order they were queued (see [`Leases`]). Retry times are compared with `now` (the
/// wall clock, as stored); leases with `lease_now` (the monotonic clock, see
/// [`Clock::monotonic_micros`](crate::Clock::monotonic_micros)).
pub(super) fn lease(
    conn: &Connection,
    leases: &mut Leases,
    now: Micros,
    lease_now: Micros,
    max: usize,
    lease_until: Micros,
) -> rusqlite::Result<Vec<Leased>> {
    let mut leased = Vec::with_capacity(max.min(1024));
    if max == 0 {
        return Ok(leased);
    }
    leases.expire(lease_now);
    // Leases `event`; true once `max` are leased.
    let take = |leases: &mut Leases, leased: &mut Vec<Leased>, event: Leased| {
        leases.hold(event.id, lease_until);
        leased.push(event);
        leased.len() == max
    };
    {
        let mut select = conn.prepare_cached(SELECT_RETRY_DUE)?;
        let mut rows = select.query([now])?;
        while let Some(row) = rows.next()? {
            if !leases.is_live(row.get(0)?, lease_now)
                && take(leases, &mut leased, read_leased(row)?)
            {
                return Ok(leased);
            }
        }
    }
    let mut select = conn.prepare_cached(SELECT_AGAIN)?;
    for id in leases.again() {
        match select.query_row([id], read_leased).optional()? {
            Some(event) => {
                if take(leases, &mut leased, event) {
                    return Ok(leased);
                }
            }
            // Gone, or failed since and waiting for its retry.
            None => leases.end(id),
        }
    }
    let mut select = conn.prepare_cached(SELECT_NEW)?;
    let mut rows = select.query([leases.cursor()])?;
    let mut scanned = 0;
    while let Some(row) = rows.next()? {
        let id: EventId = row.get(0)?;
        leases.advance(id);
        // Failed events are found through `queue_retry`; the payload is not read here.
        if attempts(row, 4)? == 0
            && !leases.is_live(id, lease_now)
            && take(leases, &mut leased, read_leased(row)?)
        {
            break;
        }
        scanned += 1;
        if scanned >= max.saturating_add(SCAN_SLACK) {
            break;
        }
    }
    Ok(leased)
}

fn read_leased(row: &Row<'_>) -> rusqlite::Result<Leased> {
    Ok(Leased {
        id: row.get(0)?,
        source: row.get(1)?,
        message_id: row.get(2)?,
        payload: row.get(3)?,
        attempts: attempts(row, 4)?,
        enqueued_at: from_micros(row.get(5)?),
    })
}

/// Deletes delivered events, `ids` sorted and without repeats; returns how many were
/// still queued.
pub(super) fn ack(
    conn: &Connection,
    leases: &mut Leases,
    ids: &[EventId],
) -> rusqlite::Result<Delta> {
    debug_assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids sorted, no repeats"
    );
    let mut delete = conn.prepare_cached(DELETE_EVENT)?;
    let mut delete_run = conn.prepare_cached(DELETE_RUN)?;
    let mut delta = Delta::default();
    let mut rest = ids;
    while let Some(&first) = rest.first() {
        // A run of consecutive ids, all acknowledged: one statement deletes it.
        let len = rest
            .iter()
            .enumerate()
            .take_while(|(i, id)| **id == first + *i as EventId)
            .count();
        let last = rest[len - 1];
        for id in &rest[..len] {
            leases.end(*id);
        }
        let deleted = if len == 1 {
            delete.execute([first])?
        } else {
            delete_run.execute([first, last])?
        };
        // Counts only what was still queued: unknown ids delete nothing.
        delta.queued -= i64::try_from(deleted).unwrap_or(0);
        rest = &rest[len..];
    }
    Ok(delta)
}

/// Counts an attempt and makes the event due at `not_before`.
pub(super) fn retry(
    conn: &Connection,
    leases: &mut Leases,
    id: EventId,
    not_before: Micros,
) -> rusqlite::Result<()> {
    leases.end(id);
    conn.prepare_cached(RETRY)?
        .execute(params![id, not_before])
        .map(|_| ())
}

/// Moves an event to the dead letters (no-op when it is no longer queued).
pub(super) fn dead_letter(
    conn: &Connection,
    leases: &mut Leases,
    now: Micros,
    id: EventId,
    reason: &DeadLetterReason,
) -> rusqlite::Result<Delta> {
    leases.end(id);
    let copied = conn.prepare_cached(COPY_TO_DEAD)?.execute(params![
        id,
        reason.status,
        reason.detail,
        now
    ])?;
    let mut delta = Delta::default();
    if copied == 1 {
        conn.prepare_cached(DELETE_EVENT)?.execute([id])?;
        delta.queued = -1;
        delta.dead_letters = 1;
    }
    Ok(delta)
}

/// The oldest `limit` dead letters.
pub(super) fn dead_letters(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<DeadLetter>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(SELECT_DEAD)?
        .query_map([limit], |row| {
            let payload: Vec<u8> = row.get(3)?;
            Ok(DeadLetter {
                id: row.get(0)?,
                source: row.get(1)?,
                message_id: row.get(2)?,
                payload: String::from_utf8_lossy(&payload).into_owned(),
                attempts: attempts(row, 4)?,
                reason: DeadLetterReason {
                    status: row.get(5)?,
                    detail: row.get(6)?,
                },
                dead_at: from_micros(row.get(7)?),
            })
        })?
        .collect()
}

/// Moves the given dead letters back into the queue, as new events (attempts 0,
/// enqueued now, so the retry horizon starts again).
pub(super) fn requeue(conn: &Connection, now: Micros, ids: &[EventId]) -> rusqlite::Result<Delta> {
    let mut copy = conn.prepare_cached(COPY_FROM_DEAD)?;
    let mut delete = conn.prepare_cached(DELETE_DEAD)?;
    let mut delta = Delta::default();
    for id in ids {
        if copy.execute(params![id, now])? == 1 {
            delete.execute([id])?;
            delta.queued += 1;
            delta.dead_letters -= 1;
        }
    }
    Ok(delta)
}

/// Moves up to `limit` of the oldest dead letters back into the queue.
pub(super) fn requeue_oldest(
    conn: &Connection,
    now: Micros,
    limit: usize,
) -> rusqlite::Result<Delta> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let ids = conn
        .prepare_cached(SELECT_DEAD_IDS)?
        .query_map([limit], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<EventId>>>()?;
    requeue(conn, now, &ids)
}

/// The oldest `limit` rejected inputs.
pub(super) fn rejected(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<StoredRejection>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(SELECT_REJECTED)?
        .query_map([limit], |row| {
            let index: Option<i64> = row.get(2)?;
            Ok(StoredRejection {
                id: row.get(0)?,
                input: RejectedInput {
                    source: row.get(1)?,
                    index: index.and_then(|i| usize::try_from(i).ok()),
                    code: row.get(3)?,
                    message: row.get(4)?,
                    payload: row.get(5)?,
                },
                received_at: from_micros(row.get(6)?),
            })
        })?
        .collect()
}

/// What a purge deletes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kept {
    /// Rejected inputs, by the time they were received.
    Rejected,
    /// Dead letters, by the time they were dead-lettered.
    DeadLetters,
}

/// Deletes, oldest first, up to `limit` rows of `kept` from at or before `before`,
/// stopping at the first younger one: rows are in arrival order, so this reads at most
/// `limit` rows however long the table is (a row older than a younger one before it, after
/// a step back of the clock, waits for a later purge).
pub(super) fn purge(
    conn: &Connection,
    kept: Kept,
    before: Micros,
    limit: usize,
) -> rusqlite::Result<Delta> {
    let (oldest, delete) = match kept {
        Kept::Rejected => (OLDEST_REJECTED, DELETE_REJECTED_TO),
        Kept::DeadLetters => (OLDEST_DEAD, DELETE_DEAD_TO),
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut last = None;
    let mut count = 0i64;
    {
        let mut select = conn.prepare_cached(oldest)?;
        let mut rows = select.query([limit])?;
        while let Some(row) = rows.next()? {
            let (id, at): (EventId, Micros) = (row.get(0)?, row.get(1)?);
            if at > before {
                break;
            }
            last = Some(id);
            count += 1;
        }
    }
    if let Some(last) = last {
        conn.prepare_cached(delete)?.execute([last])?;
    }
    Ok(match kept {
        Kept::Rejected => Delta {
            rejected: -count,
            ..Delta::default()
        },
        Kept::DeadLetters => Delta {
            dead_letters: -count,
            ..Delta::default()
        },
    })
}

/// A small real write, to prove the database still takes them.
pub(super) fn touch(conn: &Connection, now: Micros) -> rusqlite::Result<()> {
    conn.prepare_cached(TOUCH)?.execute([now]).map(|_| ())
}

/// The query plan SQLite picks for `sql`.
#[cfg(test)]
pub(super) fn query_plan(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?
        .query_map([], |row| row.get::<_, String>(3))?
        .collect()
}

fn attempts(row: &Row<'_>, index: usize) -> rusqlite::Result<u32> {
    let attempts: i64 = row.get(index)?;
    Ok(u32::try_from(attempts).unwrap_or(u32::MAX))
}
