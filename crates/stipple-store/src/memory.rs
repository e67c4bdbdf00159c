//! [`MemoryStore`]: the [`Store`] contract kept in process memory, for tests of the
//! other crates and for trying Stipple out (`memory://`). Nothing survives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::time::{Micros, duration_micros, from_micros, purge_cutoff, to_micros};
use crate::{
    Append, Appended, DeadLetter, DeadLetterReason, EventId, Leased, Stats, Store, StoreError,
    StoredRejection,
};

/// The [`Store`] in memory, with the same semantics as the SQLite store: dedup window,
/// leases, retry times, dead letters and rejected input.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// [`Store::queued_signal`].
    queued: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    last_event_id: EventId,
    queue: HashMap<EventId, Queued>,
    /// `(due_key, id)` of every queued event: the lease order.
    due: BTreeSet<(Micros, EventId)>,
    /// `(source, messageId)` → first seen.
    dedup: HashMap<(String, String), Micros>,
    last_dead_id: EventId,
    dead: BTreeMap<EventId, Dead>,
    last_rejected_id: EventId,
    rejected: Vec<StoredRejection>,
}

#[derive(Debug)]
struct Queued {
    source: String,
    message_id: String,
    payload: Vec<u8>,
    attempts: u32,
    enqueued_at: Micros,
    not_before: Micros,
    /// 0 when not leased.
    lease_until: Micros,
}

impl Queued {
    /// When the event is next due: the SQLite store indexes the same expression.
    fn due_key(&self) -> Micros {
        self.not_before.max(self.lease_until)
    }
}

#[derive(Debug)]
struct Dead {
    source: String,
    message_id: String,
    payload: Vec<u8>,
    attempts: u32,
    reason: DeadLetterReason,
    dead_at: Micros,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store reading the time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            inner: Mutex::new(Inner::default()),
            queued: watch::Sender::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below completes or leaves the maps consistent, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Micros {
        to_micros(self.clock.now())
    }
}

impl Inner {
    /// Changes an event's lease fields, keeping the `due` index in step.
    fn update(&mut self, id: EventId, change: impl FnOnce(&mut Queued)) -> bool {
        let Some(event) = self.queue.get_mut(&id) else {
            return false;
        };
        self.due.remove(&(event.due_key(), id));
        change(event);
        self.due.insert((event.due_key(), id));
        true
    }

    fn remove(&mut self, id: EventId) -> Option<Queued> {
        let event = self.queue.remove(&id)?;
        self.due.remove(&(event.due_key(), id));
        Some(event)
    }

    fn push(&mut self, event: Queued) {
        self.last_event_id += 1;
        let id = self.last_event_id;
        self.due.insert((event.due_key(), id));
        self.queue.insert(id, event);
    }

    fn requeue(&mut self, id: EventId, now: Micros) -> bool {
        let Some(dead) = self.dead.remove(&id) else {
            return false;
        };
        self.push(Queued {
            source: dead.source,
            message_id: dead.message_id,
            payload: dead.payload,
            attempts: 0,
            enqueued_at: now,
            not_before: now,
            lease_until: 0,
        });
        true
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn append(&self, append: Append, dedup_window: Duration) -> Result<Appended, StoreError> {
        let now = self.now();
        let window = duration_micros(dedup_window);
        let cutoff = now.saturating_sub(window);
        let mut inner = self.lock();
        let mut duplicate = Vec::with_capacity(append.events.len());
        for event in append.events {
            let fresh = if window == 0 {
                true
            } else {
                let key = (event.source.clone(), event.message_id.clone());
                match inner.dedup.get_mut(&key) {
                    Some(first_seen) if *first_seen > cutoff => false,
                    Some(first_seen) => {
                        *first_seen = now;
                        true
                    }
                    None => {
                        inner.dedup.insert(key, now);
                        true
                    }
                }
            };
            duplicate.push(!fresh);
            if fresh {
                inner.push(Queued {
                    source: event.source,
                    message_id: event.message_id,
                    payload: event.payload,
                    attempts: 0,
                    enqueued_at: now,
                    not_before: now,
                    lease_until: 0,
                });
            }
        }
        for input in append.rejected {
            inner.last_rejected_id += 1;
            let id = inner.last_rejected_id;
            inner.rejected.push(StoredRejection {
                id,
                input,
                received_at: from_micros(now),
            });
        }
        drop(inner);
        if duplicate.contains(&false) {
            self.queued.send_modify(|appends| *appends += 1);
        }
        Ok(Appended { duplicate })
    }

    async fn lease(&self, max: usize, lease_for: Duration) -> Result<Vec<Leased>, StoreError> {
        let now = self.now();
        let lease_until = now.saturating_add(duration_micros(lease_for));
        let mut inner = self.lock();
        let ids: Vec<EventId> = inner
            .due
            .iter()
            .take_while(|(due, _)| *due <= now)
            .take(max)
            .map(|(_, id)| *id)
            .collect();
        let mut leased = Vec::with_capacity(ids.len());
        for id in ids {
            inner.update(id, |event| event.lease_until = lease_until);
            if let Some(event) = inner.queue.get(&id) {
                leased.push(Leased {
                    id,
                    source: event.source.clone(),
                    message_id: event.message_id.clone(),
                    payload: event.payload.clone(),
                    attempts: event.attempts,
                    enqueued_at: from_micros(event.enqueued_at),
                });
            }
        }
        Ok(leased)
    }

    async fn ack(&self, ids: &[EventId]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for id in ids {
            inner.remove(*id);
        }
        Ok(())
    }

    async fn retry(&self, id: EventId, not_before: DateTime<Utc>) -> Result<(), StoreError> {
        let not_before = to_micros(not_before);
        self.lock().update(id, |event| {
            event.attempts = event.attempts.saturating_add(1);
            event.not_before = not_before;
            event.lease_until = 0;
        });
        Ok(())
    }

    async fn release(&self, ids: &[EventId]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for id in ids {
            inner.update(*id, |event| event.lease_until = 0);
        }
        Ok(())
    }

    async fn dead_letter(&self, id: EventId, reason: DeadLetterReason) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock();
        if let Some(event) = inner.remove(id) {
            inner.last_dead_id += 1;
            let dead_id = inner.last_dead_id;
            inner.dead.insert(
                dead_id,
                Dead {
                    source: event.source,
                    message_id: event.message_id,
                    payload: event.payload,
                    // The failed delivery that led here was an attempt too.
                    attempts: event.attempts.saturating_add(1),
                    reason,
                    dead_at: now,
                },
            );
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .dead
            .iter()
            .take(limit)
            .map(|(id, dead)| DeadLetter {
                id: *id,
                source: dead.source.clone(),
                message_id: dead.message_id.clone(),
                payload: String::from_utf8_lossy(&dead.payload).into_owned(),
                attempts: dead.attempts,
                reason: dead.reason.clone(),
                dead_at: from_micros(dead.dead_at),
            })
            .collect())
    }

    async fn requeue_dead_letters(&self, ids: Option<&[EventId]>) -> Result<u64, StoreError> {
        let now = self.now();
        let mut inner = self.lock();
        let ids: Vec<EventId> = match ids {
            Some(ids) => ids.to_vec(),
            None => inner.dead.keys().copied().collect(),
        };
        let mut moved = 0;
        for id in ids {
            if inner.requeue(id, now) {
                moved += 1;
            }
        }
        drop(inner);
        if moved > 0 {
            self.queued.send_modify(|requeues| *requeues += 1);
        }
        Ok(moved)
    }

    fn queued_signal(&self) -> Option<watch::Receiver<u64>> {
        Some(self.queued.subscribe())
    }

    async fn rejected(&self, limit: usize) -> Result<Vec<StoredRejection>, StoreError> {
        Ok(self.lock().rejected.iter().take(limit).cloned().collect())
    }

    async fn purge_rejected(&self, older_than: Duration) -> Result<u64, StoreError> {
        let cutoff = purge_cutoff(self.now(), older_than);
        let mut inner = self.lock();
        // As the SQLite store: oldest first, stopping at the first younger one.
        let old = inner
            .rejected
            .iter()
            .take_while(|r| to_micros(r.received_at) <= cutoff)
            .count();
        inner.rejected.drain(..old);
        Ok(old as u64)
    }

    async fn purge_dead_letters(&self, older_than: Duration) -> Result<u64, StoreError> {
        let cutoff = purge_cutoff(self.now(), older_than);
        let mut inner = self.lock();
        let old: Vec<EventId> = inner
            .dead
            .iter()
            .take_while(|(_, dead)| dead.dead_at <= cutoff)
            .map(|(id, _)| *id)
            .collect();
        for id in &old {
            inner.dead.remove(id);
        }
        Ok(old.len() as u64)
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let inner = self.lock();
        Ok(Stats {
            queued: inner.queue.len() as u64,
            dead_letters: inner.dead.len() as u64,
            rejected: inner.rejected.len() as u64,
        })
    }

    async fn expire_dedup(&self, dedup_window: Duration) -> Result<u64, StoreError> {
        let cutoff = self.now().saturating_sub(duration_micros(dedup_window));
        let mut inner = self.lock();
        let before = inner.dedup.len();
        inner.dedup.retain(|_, first_seen| *first_seen > cutoff);
        Ok((before - inner.dedup.len()) as u64)
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
