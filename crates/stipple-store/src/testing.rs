//! Test support (feature `test-util`): a [`MemoryStore`] whose calls can be made to fail
//! or be held at a [`Gate`], for tests of the crates built on a store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::{
    Append, Appended, DeadLetter, DeadLetterReason, EventId, Leased, MemoryStore, Stats, Store,
    StoreError, StoredRejection,
};

/// Holds a call until released, telling when it got there.
#[derive(Debug, Default)]
pub struct Gate {
    /// Notified when a call reaches the gate.
    pub entered: Notify,
    /// Notify to let the held call go on.
    pub release: Notify,
}

impl Gate {
    async fn pass(&self) {
        self.entered.notify_one();
        self.release.notified().await;
    }
}

/// A [`MemoryStore`] whose `append` and `check_writable` can be made to fail, and whose
/// `append`, `lease` and `check_writable` can be held at a [`Gate`]; every other call
/// goes straight through.
#[derive(Debug, Default)]
pub struct TestStore {
    /// The store every call reaches in the end.
    pub inner: MemoryStore,
    /// While set, `append` fails as a full disk would.
    pub fail_append: AtomicBool,
    /// While set, `check_writable` fails as a read-only database would.
    pub fail_writable: AtomicBool,
    /// Calls of `check_writable` so far.
    pub writable_checks: AtomicU64,
    /// While set, `fatal` reports a failure only a restart clears (a failed fsync).
    pub fatal: AtomicBool,
    /// Holds each `append` before it runs.
    pub gate: Option<Gate>,
    /// Holds each `lease` after it has run: the events are leased, the caller has not
    /// got them yet.
    pub lease_gate: Option<Gate>,
    /// Holds each `check_writable` before it runs (a slow fsync).
    pub writable_gate: Option<Gate>,
}

#[async_trait::async_trait]
impl Store for TestStore {
    async fn append(&self, append: Append, dedup_window: Duration) -> Result<Appended, StoreError> {
        if let Some(gate) = &self.gate {
            gate.pass().await;
        }
        if self.fail_append.load(Ordering::SeqCst) {
            return Err(StoreError::Database("disk I/O error".into()));
        }
        self.inner.append(append, dedup_window).await
    }
    async fn lease(&self, max: usize, lease_for: Duration) -> Result<Vec<Leased>, StoreError> {
        let leased = self.inner.lease(max, lease_for).await;
        if let Some(gate) = &self.lease_gate {
            gate.pass().await;
        }
        leased
    }
    async fn ack(&self, ids: &[EventId]) -> Result<(), StoreError> {
        self.inner.ack(ids).await
    }
    async fn retry(&self, id: EventId, not_before: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.retry(id, not_before).await
    }
    async fn release(&self, ids: &[EventId]) -> Result<(), StoreError> {
        self.inner.release(ids).await
    }
    async fn dead_letter(&self, id: EventId, reason: DeadLetterReason) -> Result<(), StoreError> {
        self.inner.dead_letter(id, reason).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(limit).await
    }
    async fn requeue_dead_letters(&self, ids: Option<&[EventId]>) -> Result<u64, StoreError> {
        self.inner.requeue_dead_letters(ids).await
    }
    async fn rejected(&self, limit: usize) -> Result<Vec<StoredRejection>, StoreError> {
        self.inner.rejected(limit).await
    }
    async fn purge_rejected(&self, older_than: Duration) -> Result<u64, StoreError> {
        self.inner.purge_rejected(older_than).await
    }
    async fn purge_dead_letters(&self, older_than: Duration) -> Result<u64, StoreError> {
        self.inner.purge_dead_letters(older_than).await
    }
    async fn stats(&self) -> Result<Stats, StoreError> {
        self.inner.stats().await
    }
    async fn expire_dedup(&self, dedup_window: Duration) -> Result<u64, StoreError> {
        self.inner.expire_dedup(dedup_window).await
    }
    async fn check_writable(&self) -> Result<(), StoreError> {
        self.writable_checks.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.writable_gate {
            gate.pass().await;
        }
        if self.fail_writable.load(Ordering::SeqCst) {
            return Err(StoreError::Database("database is read-only".into()));
        }
        self.inner.check_writable().await
    }
    fn fatal(&self) -> Option<String> {
        self.fatal
            .load(Ordering::SeqCst)
            .then(|| "an fsync of the store's write-ahead log failed".to_owned())
    }

    fn activity(&self) -> Option<crate::Activity> {
        self.inner.activity()
    }

    fn queued_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.queued_signal()
    }
}
