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
}

/// Where a lease started, to undo it when its transaction is rolled back and run again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    cursor: EventId,
}

impl Leases {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Whether `id` is leased at `now`.
    pub(super) fn is_live(&self, id: EventId, now: Micros) -> bool {
        self.live.get(&id).is_some_and(|until| *until > now)
    }

    /// Leases `id` until `until`.
    pub(super) fn hold(&mut self, id: EventId, until: Micros) {
        if self.live.is_empty() || until < self.next_end {
            self.next_end = until;
        }
        self.live.insert(id, until);
        self.again.remove(&id);
    }

    /// The event is gone from the queue or waits for a retry: forget its lease.
    pub(super) fn end(&mut self, id: EventId) {
        self.live.remove(&id);
        self.again.remove(&id);
    }

    /// The event is handed back untouched: due again at once.
    pub(super) fn release(&mut self, id: EventId) {
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
        self.cursor = self.cursor.max(id);
    }

    pub(super) fn mark(&self) -> Mark {
        Mark {
            cursor: self.cursor,
        }
    }

    /// Undoes the leases of `taken` made since `mark`.
    pub(super) fn undo(&mut self, mark: Mark, taken: &[EventId]) {
        for id in taken {
            self.live.remove(id);
            if *id <= mark.cursor {
                self.again.insert(*id);
            }
        }
        self.cursor = mark.cursor;
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

    #[test]
    fn undo_restores_the_cursor_and_what_was_due_again() {
        let mut leases = Leases::new();
        leases.advance(5);
        leases.hold(2, 10);
        leases.release(2);
        let mark = leases.mark();
        leases.hold(2, 10);
        leases.hold(7, 10);
        leases.advance(7);
        leases.undo(mark, &[2, 7]);
        assert_eq!(leases.cursor(), 5);
        assert_eq!(leases.again(), [2]);
        assert!(!leases.is_live(7, 0));
    }
}
