//! How many leased events a pipeline holds that its workers have not started: its lease
//! window, and the demand of its idle workers that drives it.
//!
//! Every event one pipeline holds is one the service's other pipelines cannot send. With
//! a fixed buffer ahead of the workers, a burst smaller than the buffer all went to the
//! first pipeline to lease it, and was sent with its share of `pointillist.concurrency`
//! while the others idled: with a slow Pointillist, at half the speed or less.
//!
//! So a pipeline leases for its idle workers, and holds beyond them only the `extra` that
//! keeps them busy while the store answers the next lease: what they can start in twice a
//! refill's time (the lease and its mapping), each taking a request's mean time (Little's
//! law, with a margin). Against a slow Pointillist that is nothing (8 workers answered in
//! 500 ms start 16 events a second; a refill takes a millisecond or two), so a burst is
//! shared out; against a fast one with a backlog it is hundreds, up to `lease_batch`, and
//! the pipeline leases when half of it is free, so that one store round trip brings many
//! events. The extra rises at once and falls by halves, so one quick refill does not undo
//! it; a lease that comes back short means the queue is drained, and it falls to nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// A pipeline's lease window: see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    concurrency: usize,
    lease_batch: usize,
    extra: usize,
}

impl Window {
    /// The window of a pipeline with `concurrency` workers that leases at most
    /// `lease_batch` events at once.
    pub(crate) fn new(concurrency: usize, lease_batch: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            lease_batch: lease_batch.max(1),
            extra: 0,
        }
    }

    /// The most events the pipeline ever holds unstarted: its buffer's capacity.
    pub(crate) fn most(&self) -> usize {
        self.concurrency + self.lease_batch
    }

    /// How many events to lease when `idle` workers wait and `buffered` events wait for
    /// them; `None` while that is fewer than half the extra (or none at all).
    pub(crate) fn wanted(&self, idle: usize, buffered: usize) -> Option<usize> {
        let room = (idle.min(self.concurrency) + self.extra).saturating_sub(buffered);
        (room >= self.free_enough()).then_some(room.min(self.lease_batch))
    }

    /// Events buffered at which [`Window::wanted`] leases with no worker idle; `None`
    /// while there is no extra, when only an idle worker makes room.
    pub(crate) fn low_water(&self) -> Option<usize> {
        self.extra.checked_sub(self.free_enough())
    }

    fn free_enough(&self) -> usize {
        (self.extra / 2).max(1)
    }

    /// The queue had none of what was asked: the extra falls to nothing.
    pub(crate) fn drained(&mut self) {
        self.extra = 0;
    }

    /// Learns from a lease that asked for `asked` events and got `got` (at least one),
    /// ready to send `refill` after it was sent, when a request to Pointillist takes
    /// `per_request` (none measured yet: `None`).
    pub(crate) fn leased(
        &mut self,
        asked: usize,
        got: usize,
        refill: Duration,
        per_request: Option<Duration>,
    ) {
        if got < asked {
            self.drained();
            return;
        }
        let Some(per_request) = per_request.filter(|d| !d.is_zero()) else {
            return;
        };
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a count of events, far inside f64's exact integers"
        )]
        let needed = (2.0 * self.concurrency as f64 * refill.as_secs_f64()
            / per_request.as_secs_f64())
        .floor() as usize;
        self.extra = needed.max(self.extra / 2).min(self.lease_batch);
    }

    /// The events held beyond the idle workers' demand, for the log.
    pub(crate) fn extra(&self) -> usize {
        self.extra
    }
}

/// The workers waiting for an event, told to the leaser.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    idle: AtomicUsize,
    /// A request's mean time in microseconds (moving, an eighth each new one); 0 until
    /// the first.
    per_request: AtomicU64,
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

    /// Notes how long a worker took over one event (sending it and acting on the answer).
    pub(crate) fn took(&self, time: Duration) {
        let sample = u64::try_from(time.as_micros()).unwrap_or(u64::MAX).max(1);
        // Workers of one pipeline share a thread; should two ever race, one sample is
        // lost, which a moving mean does not miss.
        let mean = self.per_request.load(Ordering::Relaxed);
        let next = if mean == 0 {
            sample
        } else {
            mean - mean / 8 + sample / 8
        };
        self.per_request.store(next, Ordering::Relaxed);
    }

    /// A request's mean time, once one was measured.
    pub(crate) fn per_request(&self) -> Option<Duration> {
        match self.per_request.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
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

    const MS: Duration = Duration::from_millis(1);

    /// 16 workers at 1 ms a request start 16,000 events a second: after a full lease
    /// ready in 4 ms, an extra of 128 (what they start in 2 x 4 ms).
    fn busy() -> Window {
        let mut window = Window::new(16, 256);
        window.leased(4, 4, 4 * MS, Some(MS));
        assert_eq!(window.extra(), 128);
        window
    }

    #[test]
    fn leases_for_idle_workers_only_at_first() {
        let window = Window::new(4, 256);
        assert_eq!(window.wanted(4, 0), Some(4));
        assert_eq!(window.wanted(4, 3), Some(1));
        assert_eq!(window.wanted(0, 0), None, "no demand, no lease");
        assert_eq!(window.wanted(4, 4), None);
        assert_eq!(window.low_water(), None);
        assert_eq!(window.most(), 260);
        assert_eq!(
            Window::new(0, 0).wanted(1, 0),
            Some(1),
            "at least one of each"
        );
    }

    #[test]
    fn holds_nothing_extra_while_requests_are_slower_than_the_store() {
        let mut window = Window::new(8, 256);
        // 500 ms a request, refills of 2 ms; and of 20 ms on a busy machine.
        for refill in [2 * MS, 20 * MS] {
            window.leased(4, 4, refill, Some(500 * MS));
            assert_eq!(window.extra(), 0);
        }
        // Nothing measured yet: nothing extra.
        window.leased(4, 4, 2 * MS, None);
        assert_eq!(window.extra(), 0);
    }

    #[test]
    fn holds_what_the_workers_start_in_two_refills_up_to_the_lease_batch() {
        let mut window = busy();
        assert_eq!(window.low_water(), Some(64));
        assert_eq!(window.wanted(0, 65), None);
        assert_eq!(window.wanted(0, 64), Some(64));
        // Slower refills: capped at the lease batch.
        window.leased(4, 4, 20 * MS, Some(MS));
        assert_eq!(window.extra(), 256);
        assert_eq!(window.wanted(16, 0), Some(256));
    }

    #[test]
    fn rises_at_once_and_falls_by_halves() {
        let mut window = busy();
        // One quick refill: halved, not undone.
        window.leased(4, 4, Duration::ZERO, Some(MS));
        assert_eq!(window.extra(), 64);
        window.leased(4, 4, 6 * MS, Some(MS));
        assert_eq!(window.extra(), 192);
    }

    #[test]
    fn a_short_lease_falls_to_nothing_extra() {
        let mut window = busy();
        window.leased(100, 99, 4 * MS, Some(MS));
        assert_eq!(window.extra(), 0);
        window.leased(4, 4, 4 * MS, Some(MS));
        window.drained();
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
        assert_eq!(demand.per_request(), None);
        demand.took(8 * MS);
        assert_eq!(demand.per_request(), Some(8 * MS), "the first is the mean");
        demand.took(16 * MS);
        assert_eq!(demand.per_request(), Some(9 * MS), "then an eighth each");
        demand.unmet();
        // Kept until the leaser looks.
        tokio::time::timeout(Duration::from_secs(5), demand.changed())
            .await
            .unwrap();
    }
}
