//! Stipple's durable store: the delivery queue, the per-source `messageId` dedup window,
//! dead letters and rejected input, behind one [`Store`] trait.
//!
//! The embedded default is SQLite (`sqlite://PATH`); the trait is shaped so that a
//! PostgreSQL store can let several instances share one queue.
//!
//! Implementations: [`SqliteStore`] (durable, with group commit) and
//! [`MemoryStore`] (for tests and `memory://`); [`open()`] picks one from a store URL.
//! Both read the time from a [`Clock`], so tests can move it by hand ([`ManualClock`]).
//!
//! Architecture invariants:
//! - [`Store::append`] returns only once everything it was given is durably committed;
//!   the ingress answers 200 only after it returns.
//! - Delivery is at-least-once: an event leased and neither acknowledged, retried nor
//!   dead-lettered before its lease runs out is leased again (after a crash too).
//! - Nothing is deleted except by [`Store::ack`] (delivered) or the expiry of dedup keys.
//! - Only [`Store::append`] (and [`Store::check_writable`]) wait for durability; every
//!   other method returns once its change is committed (visible to every later call)
//!   but perhaps not yet on disk. A power loss may undo the last of those changes, and
//!   only ever together with everything committed after them (SQLite's recovery keeps a
//!   prefix of the commits), which at-least-once tolerates: a lost lease or release ends
//!   at open anyway, a lost ack means a redelivery, a lost retry or dead letter means
//!   the event is tried again, a lost requeue or dedup expiry can be done again.
//! - A leased event may not be durable yet: it can be delivered before its append has
//!   returned. Should that append then fail or be lost, its sender got no 200 and sends
//!   it again, so it is delivered twice, never lost; its lease and ack are lost with it.
// Unsafe code only in `sqlite/vfs.rs`, the log writes under SQLite (see there).
#![deny(unsafe_code)]

mod clock;
mod memory;
mod open;
mod sqlite;
#[cfg(feature = "test-util")]
pub mod testing;
mod throttle;
mod time;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use clock::{Clock, ManualClock, SystemClock};
pub use memory::MemoryStore;
pub use open::open;
pub use sqlite::{Role, SqliteOptions, SqliteStore, Synchronous, UnknownSynchronous};
pub use throttle::{STORE_WARNINGS_EVERY, Throttle};

/// The store's row id of a queued event.
pub type EventId = i64;

/// An accepted message, ready to be queued.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The source (write key's name) it came from.
    pub source: String,
    /// Its `messageId`: the dedup key within the source.
    pub message_id: String,
    /// The Segment message as JSON (already stamped by the ingress).
    pub payload: Vec<u8>,
}

/// Input the ingress refused but keeps for inspection (never silently dropped).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedInput {
    /// The source it came from.
    pub source: String,
    /// Its index in the batch, when it was a batch item.
    pub index: Option<usize>,
    /// The validation code (`no_user_anon_id`, …).
    pub code: String,
    /// The human explanation.
    pub message: String,
    /// The input exactly as received.
    pub payload: Vec<u8>,
}

/// One request's worth of writes, committed together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Append {
    /// Accepted messages to queue (unless their `messageId` was seen in the window).
    pub events: Vec<NewEvent>,
    /// Refused input to keep.
    pub rejected: Vec<RejectedInput>,
}

/// What [`Store::append`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// For each of [`Append::events`], in order: true when it was a duplicate within
    /// the dedup window and so not queued again.
    pub duplicate: Vec<bool>,
}

/// A queued event handed to a delivery worker until its lease runs out.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    /// Row id, to acknowledge, retry or dead-letter it.
    pub id: EventId,
    /// Source name.
    pub source: String,
    /// `messageId`.
    pub message_id: String,
    /// The stored Segment message.
    pub payload: Vec<u8>,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When it was first queued: the retry horizon counts from here.
    pub enqueued_at: DateTime<Utc>,
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterReason {
    /// Pointillist's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Pointillist's answer body or the transport error.
    pub detail: String,
}

/// A dead-lettered event, for listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Row id in the dead-letter table.
    pub id: EventId,
    /// Source name.
    pub source: String,
    /// `messageId`.
    pub message_id: String,
    /// The stored Segment message (JSON text).
    pub payload: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why.
    pub reason: DeadLetterReason,
    /// When.
    pub dead_at: DateTime<Utc>,
}

/// A stored rejected input, for listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredRejection {
    /// Row id.
    pub id: EventId,
    /// What was refused and why.
    #[serde(flatten)]
    pub input: RejectedInput,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// Counts for `/metrics`, `/readyz` and `stipple status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Events waiting for delivery (leased or not).
    pub queued: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Rejected inputs kept.
    pub rejected: u64,
}

/// Histogram, recorded through the `metrics` facade by the SQLite store: how long each
/// fsync of its write-ahead log took (the disk's share of an append's answer time).
pub const FSYNC_SECONDS: &str = "stipple_store_fsync_seconds";
/// Histogram, recorded through the `metrics` facade by the SQLite store: how long each
/// group's transaction took, from `BEGIN` to `COMMIT` (SQLite's share).
pub const COMMIT_SECONDS: &str = "stipple_store_commit_seconds";

/// What a store has done since it opened: with [`Store::append`]s per second, how many
/// appends share a commit and an fsync (group commit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Transactions committed.
    pub commits: u64,
    /// fsyncs of the write-ahead log that answered appends (`synchronous = "full"`).
    pub syncs: u64,
}

/// Store failures. All of them are worth retrying later; the ingress answers 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("store database error: {0}")]
    Database(String),
    /// The store is shutting down or its writer is gone.
    #[error("the store is closed")]
    Closed,
    /// The store URL or files are unusable.
    #[error("cannot open the store: {0}")]
    Open(String),
}

/// The durable store. See the crate docs for the invariants every implementation keeps.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Queues the events that are not duplicates within `dedup_window` for their source,
    /// keeps the rejected inputs, and returns once all of it is committed durably.
    async fn append(&self, append: Append, dedup_window: Duration) -> Result<Appended, StoreError>;

    /// Leases up to `max` events that are due (`not_before` passed, no live lease), for
    /// `lease_for`: oldest first, where an implementation may take failed events whose
    /// retry is due before those never tried.
    async fn lease(&self, max: usize, lease_for: Duration) -> Result<Vec<Leased>, StoreError>;

    /// Delivered: removes the events from the queue.
    async fn ack(&self, ids: &[EventId]) -> Result<(), StoreError>;

    /// Failed for now: counts one attempt and makes the event due again at `not_before`.
    async fn retry(&self, id: EventId, not_before: DateTime<Utc>) -> Result<(), StoreError>;

    /// Hands leased events back untouched (no attempt counted), due at once: used on
    /// shutdown and while delivery is paused for credentials.
    async fn release(&self, ids: &[EventId]) -> Result<(), StoreError>;

    /// Moves an event from the queue to the dead letters.
    async fn dead_letter(&self, id: EventId, reason: DeadLetterReason) -> Result<(), StoreError>;

    /// Dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// Moves dead letters back into the queue (all of them when `ids` is `None`); returns
    /// how many moved.
    async fn requeue_dead_letters(&self, ids: Option<&[EventId]>) -> Result<u64, StoreError>;

    /// Rejected inputs, oldest first.
    async fn rejected(&self, limit: usize) -> Result<Vec<StoredRejection>, StoreError>;

    /// Deletes the rejected inputs received `older_than` ago or earlier, oldest first,
    /// stopping at the first younger one (so a purge reads only what it deletes; after a
    /// step back of the clock some may wait for a later purge); all of them with zero.
    /// Returns how many went.
    async fn purge_rejected(&self, older_than: Duration) -> Result<u64, StoreError>;

    /// Deletes the dead letters dead-lettered `older_than` ago or earlier, as
    /// [`Store::purge_rejected`] does rejected inputs.
    async fn purge_dead_letters(&self, older_than: Duration) -> Result<u64, StoreError>;

    /// Counts.
    async fn stats(&self) -> Result<Stats, StoreError>;

    /// Forgets dedup keys older than `dedup_window`; returns how many went.
    async fn expire_dedup(&self, dedup_window: Duration) -> Result<u64, StoreError>;

    /// A cheap check that the store can still write (for `/readyz`).
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Why the store has failed in a way only a restart can clear (an fsync of its log
    /// failed, so what the kernel holds of it is uncertain), if it has; free to call (for
    /// `/healthz`, so that an orchestrator restarts the process).
    fn fatal(&self) -> Option<String> {
        None
    }

    /// What the store has done since it opened, where it counts it (the SQLite store);
    /// free to call (for `/metrics`).
    fn activity(&self) -> Option<Activity> {
        None
    }

    /// A value that changes once events have been queued (appended, or dead letters
    /// requeued) and can be leased, for a leaser that found nothing due to wait on
    /// instead of polling; `None` where the store gives no such signal. Events that
    /// become due later (a retry's `not_before`, a lease that ran out) change nothing:
    /// a leaser still looks again now and then for those.
    fn queued_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
