//! The dedup window of the SQLite store: an append-only table on disk and an index of it
//! in memory.
//!
//! Why not a table keyed by `(source, messageId)`: message ids are random, so every new
//! key lands on a random B-tree page, and each such page costs a 4 KiB WAL write plus a
//! checkpoint copy: measured at about 16 µs of writer time per event, a 6x slowdown of
//! appends. Here the keys a transaction claims go into one row, appended in time order
//! ([`DedupIndex::flush`], just before the commit): one insert per group commit rather
//! than one per event (measured on `/v1/track` at 256 connections: writer CPU per
//! request 8.5–8.9 → 7.7–8.2 µs; in a bare SQLite loop of 35-event groups, log bytes
//! −13 %). Lookups go through a map from a 64-bit fingerprint of the key to the id of the
//! latest row holding it. That row is read back to compare the real key, so a fingerprint
//! collision can at worst let a duplicate through (at-least-once), never drop a new
//! message. The map costs 17 bytes per slot, 20 to 40 bytes per key in the window; it is
//! rebuilt from the table at open. It is split in shards so that growing it never needs
//! twice its size.
//!
//! A row holds at most [`MAX_ROW_KEYS`] keys, so that checking a duplicate reads back
//! little; a claimer keeps the row it read last, so a batch sent again reads its row
//! once. Keys claimed in the open transaction wait in memory, under the id their row
//! will get: a rolled-back transaction leaves map entries naming a row that never holds
//! those keys, which the read-back treats as absent.
//!
//! Rows are appended in time order, so expiry deletes a prefix of the table.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use rusqlite::{Connection, OptionalExtension, params};

use crate::time::Micros;

const COUNT: &str = "SELECT COALESCE(SUM(n), 0) FROM dedup_keys";
const SELECT_ALL: &str = "SELECT id, keys FROM dedup_keys ORDER BY id";
const SELECT_ONE: &str = "SELECT first_seen, keys FROM dedup_keys WHERE id = ?1";
pub(super) const INSERT: &str =
    "INSERT INTO dedup_keys (id, first_seen, n, keys) VALUES (?1, ?2, ?3, ?4)";
const SELECT_OLDEST: &str = "SELECT id, first_seen, keys FROM dedup_keys ORDER BY id LIMIT ?1";
const DELETE_UP_TO: &str = "DELETE FROM dedup_keys WHERE id <= ?1";

/// Most keys one row holds.
const MAX_ROW_KEYS: usize = 512;

/// Appends a key to a row's `keys`: the source, then the message id, each as its length
/// (4 bytes, little-endian) and its UTF-8.
pub(super) fn encode_key(keys: &mut Vec<u8>, source: &str, message_id: &str) {
    for part in [source, message_id] {
        // Request bodies are limited to megabytes: no part comes near 4 GiB (one that
        // did would read back as malformed, so as absent: at-least-once still holds).
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        keys.extend_from_slice(&len.to_le_bytes());
        keys.extend_from_slice(part.as_bytes());
    }
}

/// The keys of a row's `keys`, in order; stops at anything malformed.
fn decode_keys(keys: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    fn part<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let (text, tail) = (tail.get(..len)?, tail.get(len..)?);
        *rest = tail;
        std::str::from_utf8(text).ok()
    }
    let mut rest = keys;
    std::iter::from_fn(move || Some((part(&mut rest)?, part(&mut rest)?)))
}

/// Whether a row's `keys` hold this key.
fn holds(keys: &[u8], source: &str, message_id: &str) -> bool {
    decode_keys(keys).any(|(s, m)| s == source && m == message_id)
}

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

/// Fingerprint → id of the latest row in `dedup_keys` holding the key, and the keys the
/// open transaction claimed.
#[derive(Debug)]
pub(super) struct DedupIndex {
    fingerprints: Fingerprints,
    shards: Vec<Shard>,
    /// Keys claimed in the open transaction, encoded as their row will hold them.
    pending: Vec<u8>,
    pending_keys: usize,
    /// When the last pending key was claimed: the row's `first_seen`.
    pending_seen: Micros,
    /// The id the pending keys' row gets.
    next_id: i64,
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
    /// Keys forgotten.
    pub(super) deleted: u64,
    /// Whether more keys may be old enough (the chunk was full of them).
    pub(super) more: bool,
}

impl DedupIndex {
    /// Reads every key of the table into memory.
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Self> {
        Self::load_with(conn, Fingerprints::Keyed(RandomState::new()))
    }

    fn load_with(conn: &Connection, fingerprints: Fingerprints) -> rusqlite::Result<Self> {
        let keys: i64 = conn.query_row(COUNT, [], |row| row.get(0))?;
        let per_shard = usize::try_from(keys).unwrap_or(0) >> SHARD_BITS;
        let mut index = Self::with_shards(fingerprints, per_shard);
        let mut select = conn.prepare(SELECT_ALL)?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            for (source, message_id) in decode_keys(row.get_ref(1)?.as_blob()?) {
                let fingerprint = index.fingerprint(source, message_id);
                index.shard(fingerprint).insert(fingerprint, id);
            }
            index.next_id = id.saturating_add(1);
        }
        Ok(index)
    }

    /// An index of nothing, for a store that never appends.
    pub(super) fn empty() -> Self {
        Self::with_shards(Fingerprints::Keyed(RandomState::new()), 0)
    }

    fn with_shards(fingerprints: Fingerprints, per_shard: usize) -> Self {
        Self {
            fingerprints,
            shards: (0..1 << SHARD_BITS)
                .map(|_| Shard::with_capacity_and_hasher(per_shard, BuildHasherDefault::default()))
                .collect(),
            pending: Vec::new(),
            pending_keys: 0,
            pending_seen: 0,
            next_id: 1,
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

    /// Forgets the keys claimed since the last flush: their transaction was rolled back
    /// (or a new one begins).
    pub(super) fn rollback(&mut self) {
        self.clear_pending();
    }

    fn clear_pending(&mut self) {
        self.pending.clear();
        self.pending_keys = 0;
    }

    /// Writes the keys claimed since the last flush as one row, inside the open
    /// transaction; run before it commits.
    pub(super) fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if self.pending_keys == 0 {
            return Ok(());
        }
        let n = i64::try_from(self.pending_keys).unwrap_or(i64::MAX);
        conn.prepare_cached(INSERT)?.execute(params![
            self.next_id,
            self.pending_seen,
            n,
            self.pending
        ])?;
        // Whatever becomes of the transaction, the next row takes the next id: map
        // entries naming a row that was rolled back find other keys in its successor.
        self.next_id = self.next_id.saturating_add(1);
        self.clear_pending();
        Ok(())
    }

    /// Checks and records the keys of one append.
    pub(super) fn claimer<'a>(&'a mut self, conn: &'a Connection) -> Claimer<'a> {
        Claimer {
            conn,
            index: self,
            last_read: None,
        }
    }

    /// Deletes the oldest rows whose keys were all claimed at or before `cutoff`, about
    /// `limit` keys' worth, stopping at the first newer row (rows are in time order, give
    /// or take clock steps back).
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
        let mut rows_seen = 0;
        // Keys read (to bound the work) and keys forgotten (not those claimed again
        // since, whose newer row keeps them).
        let mut read = 0;
        let mut deleted = 0u64;
        let mut reached_newer = false;
        while let Some(row) = rows.next()? {
            rows_seen += 1;
            let id: i64 = row.get(0)?;
            if row.get::<_, i64>(1)? > cutoff {
                reached_newer = true;
                break;
            }
            for (source, message_id) in decode_keys(row.get_ref(2)?.as_blob()?) {
                let fingerprint = self.fingerprint(source, message_id);
                // Only when this is the key's latest row: a refreshed key stays.
                let shard = self.shard(fingerprint);
                if shard.get(&fingerprint) == Some(&id) {
                    shard.remove(&fingerprint);
                    deleted += 1;
                }
                read += 1;
            }
            last = Some(id);
            if read >= limit {
                break;
            }
        }
        drop(rows);
        if let Some(last) = last {
            conn.prepare_cached(DELETE_UP_TO)?.execute([last])?;
        }
        for shard in &mut self.shards {
            if shard.capacity() > 4 * shard.len().max(1024) {
                shard.shrink_to_fit();
            }
        }
        Ok(Expired {
            deleted,
            more: !reached_newer && (read >= limit || rows_seen == limit),
        })
    }
}

/// A row's `first_seen` and `keys`.
type StoredKeys = (Micros, Vec<u8>);

/// Checks and records keys against one [`DedupIndex`].
pub(super) struct Claimer<'a> {
    index: &'a mut DedupIndex,
    conn: &'a Connection,
    /// The row read back last: its id, and its `first_seen` and `keys` if it exists.
    last_read: Option<(i64, Option<StoredKeys>)>,
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
            let seen = if id == self.index.next_id {
                holds(&self.index.pending, source, message_id)
            } else {
                self.read(id)?.is_some_and(|(first_seen, keys)| {
                    first_seen > cutoff && holds(keys, source, message_id)
                })
            };
            if seen {
                return Ok(false);
            }
        }
        let index = &mut *self.index;
        encode_key(&mut index.pending, source, message_id);
        index.pending_keys += 1;
        index.pending_seen = now;
        let id = index.next_id;
        index.shard(fingerprint).insert(fingerprint, id);
        if index.pending_keys >= MAX_ROW_KEYS {
            index.flush(self.conn)?;
        }
        Ok(true)
    }

    /// Row `id`'s `first_seen` and `keys` (`None` without such a row), read back once
    /// for a run of claims that name it (a batch sent again). The statement is looked up
    /// only here: a new key (nearly every claim) reads nothing.
    fn read(&mut self, id: i64) -> rusqlite::Result<Option<(Micros, &[u8])>> {
        if !matches!(&self.last_read, Some((read, _)) if *read == id) {
            let row = self
                .conn
                .prepare_cached(SELECT_ONE)?
                .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            self.last_read = Some((id, row));
        }
        Ok(self
            .last_read
            .as_ref()
            .and_then(|(_, row)| row.as_ref())
            .map(|(first_seen, keys)| (*first_seen, keys.as_slice())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Micros = 60_000_000;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().expect("sqlite");
        super::super::schema::migrate(&mut conn, true).expect("schema");
        conn
    }

    /// Claims `key` in a transaction of its own.
    fn claim(index: &mut DedupIndex, conn: &Connection, key: &str, now: Micros) -> bool {
        let new = claim_pending(index, conn, key, now);
        index.flush(conn).expect("flush");
        new
    }

    /// Claims `key` in the open transaction.
    fn claim_pending(index: &mut DedupIndex, conn: &Connection, key: &str, now: Micros) -> bool {
        index
            .claimer(conn)
            .claim("web", key, now, now - 10 * MINUTE)
            .expect("claim")
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM dedup_keys", [], |row| row.get(0))
            .expect("count")
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
    fn the_keys_of_one_transaction_share_a_row_and_see_each_other() {
        let conn = db();
        let mut index = DedupIndex::load(&conn).expect("load");
        for key in ["a", "b", "c"] {
            assert!(claim_pending(&mut index, &conn, key, 0));
        }
        assert!(
            !claim_pending(&mut index, &conn, "b", 0),
            "claimed earlier in it"
        );
        assert_eq!(rows(&conn), 0, "nothing written before the flush");
        index.flush(&conn).expect("flush");
        assert_eq!(rows(&conn), 1);
        let mut reloaded = DedupIndex::load(&conn).expect("reload");
        assert_eq!(reloaded.len(), 3);
        for key in ["a", "b", "c"] {
            assert!(!claim(&mut reloaded, &conn, key, MINUTE), "{key}");
        }
        assert!(claim(&mut reloaded, &conn, "d", MINUTE));
    }

    #[test]
    fn a_row_holds_at_most_max_row_keys() {
        let conn = db();
        let mut index = DedupIndex::load(&conn).expect("load");
        let keys: Vec<String> = (0..MAX_ROW_KEYS * 2 + 1)
            .map(|i| format!("m-{i}"))
            .collect();
        for key in &keys {
            assert!(claim_pending(&mut index, &conn, key, 0));
        }
        index.flush(&conn).expect("flush");
        assert_eq!(rows(&conn), 3);
        let mut reloaded = DedupIndex::load(&conn).expect("reload");
        assert_eq!(reloaded.len(), keys.len());
        let mut claimer = reloaded.claimer(&conn);
        for key in &keys {
            assert!(!claimer.claim("web", key, 0, -1).expect("claim"), "{key}");
        }
    }

    #[test]
    fn a_rolled_back_claim_leaves_no_duplicate_behind() {
        let conn = db();
        let mut index = DedupIndex::load(&conn).expect("load");
        conn.execute_batch("BEGIN").expect("begin");
        assert!(claim_pending(&mut index, &conn, "a", 0));
        conn.execute_batch("ROLLBACK").expect("rollback");
        index.rollback();
        // The map names a row that will hold other keys: "b" gets it.
        assert!(claim(&mut index, &conn, "b", 0));
        assert!(
            claim(&mut index, &conn, "a", 0),
            "a was never kept: it is new"
        );
        assert!(!claim(&mut index, &conn, "a", 0));
        // Rolled back after its row was written: the same.
        conn.execute_batch("BEGIN").expect("begin");
        assert!(claim(&mut index, &conn, "c", 0));
        conn.execute_batch("ROLLBACK").expect("rollback");
        index.rollback();
        assert!(
            claim(&mut index, &conn, "c", 0),
            "c was never kept: it is new"
        );
        assert!(!claim(&mut index, &conn, "c", 0));
    }

    #[test]
    fn malformed_keys_read_as_absent() {
        let mut keys = Vec::new();
        encode_key(&mut keys, "web", "a");
        encode_key(&mut keys, "web", "b");
        assert!(holds(&keys, "web", "b"));
        assert!(!holds(&keys, "web", "c"));
        assert!(!holds(&keys, "we", "ba"), "each part is read whole");
        keys.truncate(keys.len() - 1);
        assert!(holds(&keys, "web", "a"));
        assert!(!holds(&keys, "web", "b"), "cut short");
        assert_eq!(decode_keys(&[1, 0, 0]).count(), 0);
        assert_eq!(decode_keys(&[9, 0, 0, 0, b'x']).count(), 0);
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

        // Two rows go; of their keys only "b" is forgotten ("a" was claimed again since).
        let expired = index.expire(&conn, 5 * MINUTE, 100).expect("expire");
        assert_eq!(
            expired,
            Expired {
                deleted: 1,
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
        assert_eq!(rows(&conn), 0);
    }
}
