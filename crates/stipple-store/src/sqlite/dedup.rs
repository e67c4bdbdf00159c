//! The dedup window of the SQLite store: an append-only table on disk and an index of it
//! in memory.
//!
//! Why not a table keyed by `(source, messageId)`: message ids are random, so every new
//! key lands on a random B-tree page, and each such page costs a 4 KiB WAL write plus a
//! checkpoint copy: measured at about 16 µs of writer time per event, a 6x slowdown of
//! appends. Here a new key appends a short row in time order (a few rows share a page),
//! and lookups go through a map from a 64-bit fingerprint of the key to the row id of its
//! latest row. The row is read back to compare the real key, so a fingerprint collision
//! can at worst let a duplicate through (at-least-once), never drop a new message. The map
//! costs 17 bytes per slot, 20 to 40 bytes per key in the window; it is rebuilt from the
//! table at open. It is split in shards so that growing it never needs twice its size.
//!
//! Keys are appended in time order, so expiry deletes a prefix of the table.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use rusqlite::{CachedStatement, Connection, OptionalExtension, params};

use crate::time::Micros;

const COUNT: &str = "SELECT COUNT(*) FROM dedup";
const SELECT_ALL: &str = "SELECT id, source, message_id FROM dedup ORDER BY id";
const SELECT_ONE: &str = "SELECT source, message_id, first_seen FROM dedup WHERE id = ?1";
const INSERT: &str = "INSERT INTO dedup (source, message_id, first_seen) VALUES (?1, ?2, ?3)";
const SELECT_OLDEST: &str =
    "SELECT id, source, message_id, first_seen FROM dedup ORDER BY id LIMIT ?1";
const DELETE_UP_TO: &str = "DELETE FROM dedup WHERE id <= ?1";

/// Shards of the map, picked by `SHARD_BITS` bits of the fingerprint from `SHARD_SHIFT`.
const SHARD_BITS: u32 = 6;
/// Where the shard bits start. Not the top bits: the map (hashbrown) tags each slot with
/// the hash's top 7 bits, and keys sharing their top 6 bits would leave those tags only
/// 2 values, so that each probe compared about half the keys of a group (measured: 2x
/// slower inserts and 4x slower misses at a few million keys). Not the low bits either:
/// those pick the bucket. Bits 32 and up are used by neither below 2^32 buckets a shard.
const SHARD_SHIFT: u32 = 32;
const _: () = assert!(SHARD_SHIFT + SHARD_BITS <= u64::BITS - 7);

type Shard = HashMap<u64, i64, BuildHasherDefault<Passthrough>>;

/// How keys become fingerprints.
#[derive(Debug)]
enum Fingerprints {
    /// SipHash keyed randomly per process: nobody can aim keys at one bucket.
    Keyed(RandomState),
    /// Every key collides, to test that collisions never drop a new message.
    #[cfg(test)]
    Constant,
}

/// Fingerprint → row id of the key's latest row in `dedup`.
#[derive(Debug)]
pub(super) struct DedupIndex {
    fingerprints: Fingerprints,
    shards: Vec<Shard>,
}

/// The map's keys are already keyed hashes (SipHash, computed once per key): the map
/// uses them as they are instead of hashing them again.
#[derive(Debug, Default)]
pub(super) struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in case that changes.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What [`DedupIndex::expire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Expired {
    /// Rows deleted.
    pub(super) deleted: u64,
    /// Whether more rows may be old enough (the chunk was full of them).
    pub(super) more: bool,
}

impl DedupIndex {
    /// Reads every key of the table into memory.
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Self> {
        Self::load_with(conn, Fingerprints::Keyed(RandomState::new()))
    }

    fn load_with(conn: &Connection, fingerprints: Fingerprints) -> rusqlite::Result<Self> {
        let rows: i64 = conn.query_row(COUNT, [], |row| row.get(0))?;
        let per_shard = usize::try_from(rows).unwrap_or(0) >> SHARD_BITS;
        let mut index = Self {
            fingerprints,
            shards: (0..1 << SHARD_BITS)
                .map(|_| Shard::with_capacity_and_hasher(per_shard, BuildHasherDefault::default()))
                .collect(),
        };
        let mut select = conn.prepare(SELECT_ALL)?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let fingerprint =
                index.fingerprint(row.get_ref(1)?.as_str()?, row.get_ref(2)?.as_str()?);
            index.shard(fingerprint).insert(fingerprint, id);
        }
        Ok(index)
    }

    /// An index of nothing, for a store that never appends.
    pub(super) fn empty() -> Self {
        Self {
            fingerprints: Fingerprints::Keyed(RandomState::new()),
            shards: (0..1 << SHARD_BITS).map(|_| Shard::default()).collect(),
        }
    }

    /// How many keys are indexed.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    fn shard(&mut self, fingerprint: u64) -> &mut Shard {
        let at = (fingerprint >> SHARD_SHIFT) & ((1 << SHARD_BITS) - 1);
        &mut self.shards[usize::try_from(at).unwrap_or(0)]
    }

    fn fingerprint(&self, source: &str, message_id: &str) -> u64 {
        let mut hasher = match &self.fingerprints {
            Fingerprints::Keyed(keys) => keys.build_hasher(),
            #[cfg(test)]
            Fingerprints::Constant => return 42,
        };
        // `str` hashing ends each string with a marker, so ("ab","c") ≠ ("a","bc").
        std::hash::Hash::hash(source, &mut hasher);
        std::hash::Hash::hash(message_id, &mut hasher);
        hasher.finish()
    }

    /// Prepares to check and record the keys of one append.
    pub(super) fn claimer<'a>(&'a mut self, conn: &'a Connection) -> rusqlite::Result<Claimer<'a>> {
        Ok(Claimer {
            select: conn.prepare_cached(SELECT_ONE)?,
            insert: conn.prepare_cached(INSERT)?,
            conn,
            index: self,
        })
    }

    /// Deletes up to `limit` of the oldest rows first seen at or before `cutoff`, stopping
    /// at the first newer row (rows are in time order, give or take clock steps back).
    pub(super) fn expire(
        &mut self,
        conn: &Connection,
        cutoff: Micros,
        limit: usize,
    ) -> rusqlite::Result<Expired> {
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut select = conn.prepare_cached(SELECT_OLDEST)?;
        let mut rows = select.query([limit_sql])?;
        let mut last = None;
        let mut seen = 0;
        let mut reached_newer = false;
        while let Some(row) = rows.next()? {
            seen += 1;
            let id: i64 = row.get(0)?;
            if row.get::<_, i64>(3)? > cutoff {
                reached_newer = true;
                break;
            }
            let fingerprint =
                self.fingerprint(row.get_ref(1)?.as_str()?, row.get_ref(2)?.as_str()?);
            // Only when it is the key's latest row: a refreshed key stays.
            let shard = self.shard(fingerprint);
            if shard.get(&fingerprint) == Some(&id) {
                shard.remove(&fingerprint);
            }
            last = Some(id);
        }
        drop(rows);
        let deleted = match last {
            Some(last) => conn.prepare_cached(DELETE_UP_TO)?.execute([last])? as u64,
            None => 0,
        };
        for shard in &mut self.shards {
            if shard.capacity() > 4 * shard.len().max(1024) {
                shard.shrink_to_fit();
            }
        }
        Ok(Expired {
            deleted,
            more: !reached_newer && seen == limit,
        })
    }
}

/// Checks and records keys against one [`DedupIndex`], statements ready.
pub(super) struct Claimer<'a> {
    index: &'a mut DedupIndex,
    conn: &'a Connection,
    select: CachedStatement<'a>,
    insert: CachedStatement<'a>,
}

impl Claimer<'_> {
    /// Records the key as seen at `now` unless it was already seen after `cutoff`.
    /// Returns true when the message is new (or its key had expired).
    pub(super) fn claim(
        &mut self,
        source: &str,
        message_id: &str,
        now: Micros,
        cutoff: Micros,
    ) -> rusqlite::Result<bool> {
        let fingerprint = self.index.fingerprint(source, message_id);
        if let Some(&id) = self.index.shard(fingerprint).get(&fingerprint) {
            // The map is a hint (it may name a row a failed transaction never kept, or
            // another key with the same fingerprint): the row decides.
            let seen = self
                .select
                .query_row([id], |row| {
                    Ok(row.get_ref(0)?.as_str()? == source
                        && row.get_ref(1)?.as_str()? == message_id
                        && row.get::<_, i64>(2)? > cutoff)
                })
                .optional()?;
            if seen == Some(true) {
                return Ok(false);
            }
        }
        self.insert.execute(params![source, message_id, now])?;
        let id = self.conn.last_insert_rowid();
        self.index.shard(fingerprint).insert(fingerprint, id);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Micros = 60_000_000;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE dedup (id INTEGER PRIMARY KEY, source TEXT NOT NULL, \
             message_id TEXT NOT NULL, first_seen INTEGER NOT NULL)",
        )
        .expect("schema");
        conn
    }

    fn claim(index: &mut DedupIndex, conn: &Connection, key: &str, now: Micros) -> bool {
        index
            .claimer(conn)
            .expect("claimer")
            .claim("web", key, now, now - 10 * MINUTE)
            .expect("claim")
    }

    #[test]
    fn a_key_is_new_once_per_window_and_survives_a_reload() {
        let conn = db();
        let mut index = DedupIndex::load(&conn).expect("load");
        assert!(claim(&mut index, &conn, "a", 0));
        assert!(!claim(&mut index, &conn, "a", MINUTE));
        assert!(claim(&mut index, &conn, "b", MINUTE));
        let mut reloaded = DedupIndex::load(&conn).expect("reload");
        assert_eq!(reloaded.len(), 2);
        assert!(!claim(&mut reloaded, &conn, "a", 2 * MINUTE));
        // Ten minutes after it was first seen the key counts as absent, and is refreshed.
        assert!(claim(&mut reloaded, &conn, "a", 10 * MINUTE));
        assert!(!claim(&mut reloaded, &conn, "a", 11 * MINUTE));
    }

    #[test]
    fn a_rolled_back_claim_leaves_no_duplicate_behind() {
        let conn = db();
        let mut index = DedupIndex::load(&conn).expect("load");
        conn.execute_batch("BEGIN").expect("begin");
        assert!(claim(&mut index, &conn, "a", 0));
        conn.execute_batch("ROLLBACK").expect("rollback");
        // The map still names the vanished row; the next row reuses its id for "b".
        assert!(claim(&mut index, &conn, "b", 0));
        assert!(
            claim(&mut index, &conn, "a", 0),
            "a was never kept: it is new"
        );
        assert!(!claim(&mut index, &conn, "a", 0));
    }

    #[test]
    fn colliding_fingerprints_never_drop_a_new_message() {
        let conn = db();
        let mut index = DedupIndex::load_with(&conn, Fingerprints::Constant).expect("load");
        assert!(claim(&mut index, &conn, "a", 0));
        assert!(
            claim(&mut index, &conn, "b", 0),
            "same fingerprint, other key: new"
        );
        assert!(!claim(&mut index, &conn, "b", 0));
        // "a" lost its map entry to "b": a duplicate of it gets through (at-least-once).
        assert!(claim(&mut index, &conn, "a", 0));
    }

    #[test]
    fn keys_in_one_shard_keep_varied_map_tags() {
        let conn = db();
        let mut index = DedupIndex::load(&conn).expect("load");
        for i in 0..20_000 {
            assert!(claim(&mut index, &conn, &format!("m-{i}"), 0));
        }
        // hashbrown tags a slot with the hash's top 7 bits: a shard's keys must not share
        // them, or every probe compares many keys. About 300 keys a shard: most of the
        // 128 tags show up.
        for shard in &index.shards {
            let tags: std::collections::HashSet<u64> = shard.keys().map(|f| f >> 57).collect();
            assert!(tags.len() > 64, "{} tags in a shard", tags.len());
        }
    }

    #[test]
    fn expiry_deletes_the_old_prefix_and_keeps_refreshed_keys() {
        let conn = db();
        let mut index = DedupIndex::load(&conn).expect("load");
        assert!(claim(&mut index, &conn, "a", 0));
        assert!(claim(&mut index, &conn, "b", MINUTE));
        assert!(claim(&mut index, &conn, "a", 10 * MINUTE)); // refreshed: a second row
        assert!(claim(&mut index, &conn, "c", 12 * MINUTE));

        let expired = index.expire(&conn, 5 * MINUTE, 100).expect("expire");
        assert_eq!(
            expired,
            Expired {
                deleted: 2,
                more: false
            }
        );
        assert_eq!(index.len(), 2);
        assert!(!claim(&mut index, &conn, "a", 13 * MINUTE));
        assert!(claim(&mut index, &conn, "b", 13 * MINUTE));

        // A full chunk of old rows asks for another round.
        let expired = index.expire(&conn, 20 * MINUTE, 2).expect("expire");
        assert_eq!(
            expired,
            Expired {
                deleted: 2,
                more: true
            }
        );
        let expired = index.expire(&conn, 20 * MINUTE, 2).expect("expire");
        assert_eq!(
            expired,
            Expired {
                deleted: 1,
                more: false
            }
        );
        assert_eq!(index.len(), 0);
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM dedup", [], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, 0);
    }
}
