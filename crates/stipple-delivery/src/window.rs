//! How many leased events a pipeline holds that its workers have not started: its lease
//! window, and the demand of its idle workers that drives it.
//!
//! Every event one pipeline holds is one the service's other pipelines cannot send. With
//! a fixed buffer ahead of the workers, a burst smaller than the buffer all went to the
//! first pipeline to lease it, and was sent with its share of `pointillist.concurrency`
//! while the others idled: with a slow Pointillist, at half the speed or less.
//!
//! So a pipeline leases for its idle workers, and holds beyond them only an `extra` that
//! it has shown it needs. The extra starts at nothing. It grows when two full leases in a
//! row (the queue holds more) left workers waiting on an empty buffer: the store round
//! trip, not Pointillist, is what holds the workers back. It then doubles, from the
//! pipeline's concurrency up to `lease_batch`, and the pipeline leases when half of it is
//! free, so that one store round trip brings many events. A lease that comes back short
//! means the queue is drained: what this pipeline holds is all there was, and the extra
//! falls back to nothing, so the next burst is shared out.
//!
//! Against a slow Pointillist the workers take events far slower than a lease round trip,
//! a worker waits only for the events the queue does not have, and the extra stays at
//! nothing; against a fast one with a backlog it reaches `lease_batch` within a few leases.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// A pipeline's lease window: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    concurrency: usize,
    lease_batch: usize,
    extra: usize,
    /// Whether the last lease brought all it asked for.
    last_full: bool,
}

impl Window {
    /// The window of a pipeline with `concurrency` workers that leases at most
    /// `lease_batch` events at once.
    pub(crate) fn new(concurrency: usize, lease_batch: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            lease_batch: lease_batch.max(1),
            extra: 0,
            last_full: false,
        }
    }

    /// The most events the pipeline ever holds unstarted: its buffer's capacity.
    pub(crate) fn most(self) -> usize {
        self.concurrency + self.lease_batch
    }

    /// How many events to lease when `idle` workers wait and `buffered` events wait for
    /// them; `None` while that is fewer than half the extra (or none at all).
    pub(crate) fn to_lease(self, idle: usize, buffered: usize) -> Option<usize> {
        let room = (idle.min(self.concurrency) + self.extra).saturating_sub(buffered);
        (room >= self.free_enough()).then_some(room.min(self.lease_batch))
    }

    /// Events buffered at which [`Window::to_lease`] leases with no worker idle; `None`
    /// while there is no extra, when only an idle worker makes room.
    pub(crate) fn low_water(self) -> Option<usize> {
        self.extra.checked_sub(self.free_enough())
    }

    fn free_enough(self) -> usize {
        (self.extra / 2).max(1)
    }

    /// Learns from a lease that asked for `asked` events and got `got`, with `idle`
    /// workers waiting and `buffered` events unstarted as it came back.
    pub(crate) fn leased(&mut self, asked: usize, got: usize, idle: usize, buffered: usize) {
        if got < asked {
            self.extra = 0;
            self.last_full = false;
            return;
        }
        if self.last_full && idle > 0 && buffered == 0 {
            self.extra = (self.extra * 2).max(self.concurrency).min(self.lease_batch);
        }
        self.last_full = true;
    }

    /// The events held beyond the idle workers' demand, for the log.
    pub(crate) fn extra(self) -> usize {
        self.extra
    }
}

/// The workers waiting for an event, told to the leaser.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    idle: AtomicUsize,
    wake: Notify,
}

impl Demand {
    /// Workers waiting now.
    pub(crate) fn idle(&self) -> usize {
        self.idle.load(Ordering::Acquire)
    }

    /// Counts a worker as waiting until the guard is dropped.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        self.idle.fetch_add(1, Ordering::AcqRel);
        Waiting(self)
    }

    /// Wakes the leaser: a waiting worker found nothing buffered.
    pub(crate) fn unmet(&self) {
        self.wake.notify_one();
    }

    /// Resolves after the next [`Demand::unmet`] (at once if one came since the last).
    pub(crate) async fn changed(&self) {
        self.wake.notified().await;
    }
}

/// A worker counted as waiting for an event.
#[derive(Debug)]
pub(crate) struct Waiting<'a>(&'a Demand);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_for_idle_workers_only_at_first() {
        let window = Window::new(4, 256);
        assert_eq!(window.to_lease(4, 0), Some(4));
        assert_eq!(window.to_lease(4, 3), Some(1));
        assert_eq!(window.to_lease(0, 0), None, "no demand, no lease");
        assert_eq!(window.to_lease(4, 4), None);
        assert_eq!(window.low_water(), None);
        assert_eq!(window.most(), 260);
        assert_eq!(
            Window::new(0, 0).to_lease(1, 0),
            Some(1),
            "at least one of each"
        );
    }

    #[test]
    fn grows_while_full_leases_leave_workers_waiting_on_an_empty_buffer() {
        let mut window = Window::new(16, 256);
        // A first full lease says nothing yet: it may be the start of a burst.
        window.leased(16, 16, 16, 0);
        assert_eq!(window.extra(), 0);
        let mut extras = vec![];
        for _ in 0..6 {
            let asked = window.to_lease(3, 0).unwrap();
            window.leased(asked, asked, 3, 0);
            extras.push(window.extra());
        }
        assert_eq!(extras, [16, 32, 64, 128, 256, 256]);
        // Half the extra free leases with no worker idle, the lease never past the batch.
        assert_eq!(window.low_water(), Some(128));
        assert_eq!(window.to_lease(0, 129), None);
        assert_eq!(window.to_lease(0, 128), Some(128));
        assert_eq!(window.to_lease(16, 0), Some(256));
    }

    #[test]
    fn stays_while_workers_are_busy_when_a_lease_comes_back() {
        let mut window = Window::new(4, 256);
        for _ in 0..5 {
            window.leased(4, 4, 0, 0);
            window.leased(1, 1, 2, 3);
        }
        assert_eq!(window.extra(), 0);
    }

    #[test]
    fn a_short_lease_falls_back_to_nothing_extra() {
        let mut window = Window::new(4, 256);
        for _ in 0..4 {
            window.leased(4, 4, 1, 0);
        }
        assert_eq!(window.extra(), 16);
        window.leased(20, 19, 1, 0);
        assert_eq!(window.extra(), 0);
        // And a full lease after it is a first one again.
        window.leased(4, 4, 1, 0);
        assert_eq!(window.extra(), 0);
    }

    #[tokio::test]
    async fn demand_counts_waiting_workers_and_wakes_the_leaser() {
        let demand = Demand::default();
        let first = demand.waiting();
        let second = demand.waiting();
        assert_eq!(demand.idle(), 2);
        drop(first);
        assert_eq!(demand.idle(), 1);
        drop(second);
        assert_eq!(demand.idle(), 0);
        demand.unmet();
        // Kept until the leaser looks.
        tokio::time::timeout(std::time::Duration::from_secs(5), demand.changed())
            .await
            .unwrap();
    }
}
