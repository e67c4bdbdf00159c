//! The service's leases, in memory, and where the next lease looks for events.
//!
//! Only one service holds a store and its leases end with it, so a lease is not written
//! anywhere. What is kept instead:
//! - `live`: each leased event's id and the end of its lease;
//! - `cursor`: every new event (no attempt yet) with an id up to it has been leased by
//!   this service at least once, so the next lease reads new events after it, in id
//!   order, without stepping over the ones leased, in flight or waiting for their ack;
//! - `again`: events up to the cursor that are due again without an attempt counted:
//!   handed back (`release`) or whose lease ran out. Events that failed (`retry`) are
//!   found through the `queue_retry` index instead.
//!
//! Ids only grow (`AUTOINCREMENT`), so an event queued later is always after the cursor.
//!
//! Changes follow the writer's transaction: between [`Leases::begin`] and
//! [`Leases::commit`] each change is journaled, and [`Leases::rollback`] undoes them with
//! the transaction's writes. Otherwise a retry whose commit failed (a full disk) would
//! have ended its event's lease in memory while the event stayed queued as before:
//! after a first attempt, found by neither the cursor nor the retry index, so stranded
//! until a restart; after a later one, due again at once, retried without backoff.

use std::collections::{BTreeSet, HashMap};

use crate::EventId;
use crate::time::Micros;

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct Leases {
    live: HashMap<EventId, Micros>,
    /// No live lease ends before this (it may be earlier than the earliest end).
    next_end: Micros,
    cursor: EventId,
    again: BTreeSet<EventId>,
    /// Whether a transaction is open, so that changes are journaled.
    journaling: bool,
    /// How to undo each change made in the open transaction, oldest first (kept empty,
    /// with its allocation, between transactions).
    journal: Vec<Undo>,
}

/// How to undo one change.
#[derive(Debug)]
enum Undo {
    /// `id`'s lease end and whether it was due again, as they were before.
    Event {
        id: EventId,
        live: Option<Micros>,
        again: bool,
    },
    /// The cursor as it was before.
    Cursor(EventId),
}

impl Leases {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// A transaction begins: journal the changes from here on.
    pub(super) fn begin(&mut self) {
        self.journal.clear();
        self.journaling = true;
    }

    /// The transaction committed: keep its changes.
    pub(super) fn commit(&mut self) {
        self.journal.clear();
        self.journaling = false;
    }

    /// The transaction was rolled back: undo its changes, newest first.
    pub(super) fn rollback(&mut self) {
        self.journaling = false;
        let mut journal = std::mem::take(&mut self.journal);
        for undo in journal.drain(..).rev() {
            match undo {
                Undo::Event { id, live, again } => {
                    match live {
                        Some(until) => self.set_live(id, until),
                        None => {
                            self.live.remove(&id);
                        }
                    }
                    if again {
                        self.again.insert(id);
                    } else {
                        self.again.remove(&id);
                    }
                }
                Undo::Cursor(cursor) => self.cursor = cursor,
            }
        }
        self.journal = journal;
    }

    /// Journals `id`'s state before a change, in a transaction.
    fn note(&mut self, id: EventId) {
        if self.journaling {
            self.journal.push(Undo::Event {
                id,
                live: self.live.get(&id).copied(),
                again: self.again.contains(&id),
            });
        }
    }

    fn set_live(&mut self, id: EventId, until: Micros) {
        if self.live.is_empty() || until < self.next_end {
            self.next_end = until;
        }
        self.live.insert(id, until);
    }

    /// Whether `id` is leased at `now`.
    pub(super) fn is_live(&self, id: EventId, now: Micros) -> bool {
        self.live.get(&id).is_some_and(|until| *until > now)
    }

    /// Leases `id` until `until`.
    pub(super) fn hold(&mut self, id: EventId, until: Micros) {
        self.note(id);
        self.set_live(id, until);
        self.again.remove(&id);
    }

    /// The event is gone from the queue or waits for a retry: forget its lease.
    pub(super) fn end(&mut self, id: EventId) {
        self.note(id);
        self.live.remove(&id);
        self.again.remove(&id);
    }

    /// The event is handed back untouched: due again at once.
    pub(super) fn release(&mut self, id: EventId) {
        self.note(id);
        if self.live.remove(&id).is_some() && id <= self.cursor {
            self.again.insert(id);
        }
    }

    /// Moves the leases that ended by `now` to `again`.
    pub(super) fn expire(&mut self, now: Micros) {
        if self.live.is_empty() || now < self.next_end {
            return;
        }
        let ended: Vec<EventId> = self
            .live
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            self.note(id);
            self.live.remove(&id);
            if id <= self.cursor {
                self.again.insert(id);
            }
        }
        self.next_end = self.live.values().copied().min().unwrap_or(0);
    }

    /// The events due again, lowest id first.
    pub(super) fn again(&self) -> Vec<EventId> {
        self.again.iter().copied().collect()
    }

    /// New events are read after this id.
    pub(super) fn cursor(&self) -> EventId {
        self.cursor
    }

    /// Every new event up to `id` has now been seen.
    pub(super) fn advance(&mut self, id: EventId) {
        if id > self.cursor {
            if self.journaling {
                self.journal.push(Undo::Cursor(self.cursor));
            }
            self.cursor = id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_and_ended_leases_up_to_the_cursor_come_again() {
        let mut leases = Leases::new();
        leases.advance(10);
        leases.hold(3, 100);
        leases.hold(4, 50);
        leases.hold(5, 100);
        leases.release(3);
        assert_eq!(leases.again(), [3]);
        leases.expire(49);
        assert!(leases.is_live(4, 49));
        leases.expire(50);
        assert!(!leases.is_live(4, 50));
        assert_eq!(leases.again(), [3, 4]);
        leases.end(5);
        leases.expire(1000);
        assert_eq!(leases.again(), [3, 4], "an ended lease does not come again");
        leases.hold(3, 2000);
        assert_eq!(leases.again(), [4]);
    }

    /// Everything observable about `leases` at `now`, for ids up to `max`.
    fn state(leases: &Leases, now: Micros, max: EventId) -> (EventId, Vec<EventId>, Vec<EventId>) {
        let live = (0..=max).filter(|id| leases.is_live(*id, now)).collect();
        (leases.cursor(), leases.again(), live)
    }

    #[test]
    fn a_rollback_undoes_every_change_since_begin() {
        let mut leases = Leases::new();
        leases.advance(5);
        leases.hold(1, 100);
        leases.hold(2, 10);
        leases.hold(3, 100);
        leases.release(3);
        let before = state(&leases, 0, 10);
        leases.begin();
        leases.expire(10); // 2 ends: due again
        leases.hold(2, 100);
        leases.end(1);
        leases.hold(3, 50);
        leases.release(3);
        leases.hold(3, 60);
        leases.advance(9);
        leases.hold(8, 100);
        leases.rollback();
        assert_eq!(state(&leases, 0, 10), before);
        // The lease end comes back with its lease: 2 still ends at 10.
        leases.expire(10);
        assert_eq!(leases.again(), [2, 3]);
        assert!(leases.is_live(1, 99));
    }

    #[test]
    fn a_commit_keeps_the_changes_and_ends_the_journal() {
        let mut leases = Leases::new();
        leases.begin();
        leases.advance(4);
        leases.hold(4, 100);
        leases.commit();
        leases.end(4);
        leases.rollback(); // no transaction open: nothing to undo
        assert_eq!(state(&leases, 0, 10), (4, vec![], vec![]));
    }
}
