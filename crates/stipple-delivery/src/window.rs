//! How many leased events a pipeline keeps waiting for its workers: its lease window.
//!
//! A buffer of leased events keeps the workers busy while the store answers the next
//! lease, and the bigger it is the fewer (and fuller) the leases: each costs a store
//! write. But every event one pipeline holds is one the service's other pipelines cannot
//! send. A burst smaller than the buffer would all go to the first pipeline to lease,
//! and be sent with its share of `pointillist.concurrency` while the others idle: with a
//! slow Pointillist, at half the speed or less.
//!
//! So the window starts small, at twice the pipeline's concurrency, and grows only on
//! evidence that it is too small: a full lease (the queue holds more) during which the
//! workers took every event buffered, so they may have waited for the store. It doubles
//! then, up to `lease_batch`. A lease that comes back short means the queue is drained:
//! what this pipeline holds is all there was, and the window falls back to its start, so
//! the next burst is shared out. Against a slow Pointillist the workers take events far
//! slower than a lease round trip, the buffer never runs dry, and the window stays at
//! its start; against a fast one with a backlog it reaches `lease_batch` within a few
//! leases.

/// A pipeline's lease window: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    start: usize,
    most: usize,
    size: usize,
}

impl Window {
    /// The window of a pipeline with `concurrency` workers that leases at most
    /// `lease_batch` events at once.
    pub(crate) fn new(concurrency: usize, lease_batch: usize) -> Self {
        let start = concurrency.saturating_mul(2).max(1);
        let most = lease_batch.max(start);
        Self {
            start,
            most,
            size: start,
        }
    }

    /// The most events the buffer ever holds: its channel's capacity.
    pub(crate) fn most(self) -> usize {
        self.most
    }

    /// Events buffered now: lease again when the buffer is down to this.
    pub(crate) fn low_water(self) -> usize {
        self.size / 2
    }

    /// How many events to lease when `buffered` wait for a worker.
    pub(crate) fn room(self, buffered: usize) -> usize {
        self.size.saturating_sub(buffered)
    }

    /// Learns from a lease that asked for `asked` events and got `got`, with `before`
    /// events buffered as it was sent and `after` as it came back.
    pub(crate) fn leased(&mut self, asked: usize, got: usize, before: usize, after: usize) {
        if got < asked {
            self.size = self.start;
        } else if before > 0 && after == 0 {
            self.size = self.size.saturating_mul(2).min(self.most);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_twice_the_concurrency_and_never_beyond_the_lease_batch() {
        let window = Window::new(16, 256);
        assert_eq!(window.room(0), 32);
        assert_eq!(window.low_water(), 16);
        assert_eq!(window.most(), 256);
        // A concurrency above half the lease batch: the start is also the most.
        let wide = Window::new(200, 256);
        assert_eq!((wide.room(0), wide.most()), (400, 400));
        assert_eq!(Window::new(0, 0).room(0), 1, "never an empty window");
    }

    #[test]
    fn grows_when_the_workers_drained_the_buffer_during_a_full_lease() {
        let mut window = Window::new(4, 256);
        let mut sizes = vec![];
        for _ in 0..8 {
            let asked = window.room(4);
            window.leased(asked, asked, 4, 0);
            sizes.push(window.room(0));
        }
        assert_eq!(sizes, [16, 32, 64, 128, 256, 256, 256, 256]);
    }

    #[test]
    fn stays_while_the_workers_are_slower_than_the_store() {
        let mut window = Window::new(4, 256);
        // A full lease with events still buffered when it came back.
        window.leased(4, 4, 4, 2);
        assert_eq!(window.room(0), 8);
        // The first lease after an idle spell finds the buffer empty before and after:
        // no sign that the workers waited for the store.
        window.leased(8, 8, 0, 0);
        assert_eq!(window.room(0), 8);
    }

    #[test]
    fn a_short_lease_falls_back_to_the_start() {
        let mut window = Window::new(4, 256);
        for _ in 0..4 {
            window.leased(window.room(4), window.room(4), 4, 0);
        }
        assert_eq!(window.room(0), 128);
        window.leased(64, 63, 64, 0);
        assert_eq!(window.room(0), 8);
        window.leased(8, 0, 0, 0);
        assert_eq!(
            window.room(0),
            8,
            "and stays there while the queue is empty"
        );
    }
}
