//! The header timeout of a connection (`ingress.header_timeout`), kept with one timer
//! per connection instead of one per request.
//!
//! hyper's own (`header_read_timeout`) arms a timer each time it starts reading a
//! request's headers. On a connection thread's runtime, a timer armed to fire before the
//! ones already waiting wakes the runtime's driver through its eventfd: a `write` and an
//! extra return from `epoll_wait`, measured on about a third of the `/v1/track` requests
//! at 256 connections. Here the connection's service marks it busy once a request's
//! headers are read ([`Watched`]) and idle, with the time, once the answer is ready
//! ([`Answering`]): two stores to an atomic. The connection's one timer ([`expired`])
//! fires at most once a timeout: it ends the connection if it has been idle for the whole
//! timeout, sleeps until then if it has not, and looks again a timeout later if a request
//! is being served (a slow store or a slow body never cuts a request off here; the body
//! has its own timeout).
//!
//! What a client sees is what it saw with hyper's timer: a connection that sends no
//! request headers within the timeout of opening, or of its last answer, is closed. One
//! difference: the timeout counts from when the answer is ready, where hyper's counted
//! from when hyper began to read the next request, so a client that stalls for longer
//! than the timeout while reading an answer (every answer here is at most a few KiB,
//! `/metrics` tens) is cut off too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

/// [`Idle::since`] while a request is being served.
const BUSY: u64 = u64::MAX;

/// Whether a connection is serving a request, and if not, since when it waits for one.
#[derive(Debug)]
pub(crate) struct Idle {
    opened: Instant,
    /// Microseconds from `opened` to the last answer (0: none yet), or [`BUSY`].
    since: AtomicU64,
}

impl Idle {
    /// A connection opened now, waiting for its first request.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            since: AtomicU64::new(0),
        })
    }

    fn busy(&self) {
        self.since.store(BUSY, Ordering::Relaxed);
    }

    fn idle(&self) {
        let micros = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Clamped below BUSY (after some 584,000 years open).
        self.since.store(micros.min(BUSY - 1), Ordering::Relaxed);
    }

    /// When the connection runs out of time to send a request's headers; `None` while
    /// it is serving one.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.since.load(Ordering::Relaxed) {
            BUSY => None,
            micros => Some(self.opened + Duration::from_micros(micros) + timeout),
        }
    }
}

/// Completes once `idle`'s connection has waited `timeout` for a request's headers.
pub(crate) async fn expired(idle: &Idle, timeout: Duration) {
    let sleep = tokio::time::sleep_until(idle.opened + timeout);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let now = Instant::now();
        let wake = match idle.deadline(timeout) {
            Some(deadline) if deadline <= now => return,
            Some(deadline) => deadline,
            None => now + timeout,
        };
        sleep.as_mut().reset(wake);
    }
}

/// A connection's service: marks the connection busy from a request's headers to its
/// answer.
#[derive(Debug, Clone)]
pub(crate) struct Watched<S> {
    inner: S,
    idle: Arc<Idle>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, idle: Arc<Idle>) -> Self {
        Self { inner, idle }
    }
}

impl<S, R> hyper::service::Service<R> for Watched<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Answering<S::Future>;

    fn call(&self, request: R) -> Self::Future {
        self.idle.busy();
        Answering {
            inner: self.inner.call(request),
            idle: Arc::clone(&self.idle),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer: marks its connection idle once ready.
    pub(crate) struct Answering<F> {
        #[pin]
        inner: F,
        idle: Arc<Idle>,
    }
}

impl<F: Future> Future for Answering<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let answer = ready!(this.inner.poll(cx));
        this.idle.idle();
        Poll::Ready(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_expires_a_timeout_after_it_opened_or_last_answered_never_while_busy() {
        let timeout = Duration::from_secs(30);
        let idle = Idle::new();
        let start = Instant::now();
        expired(&idle, timeout).await;
        assert_eq!(start.elapsed(), timeout, "a silent connection");

        let idle = Idle::new();
        let watcher = tokio::spawn({
            let idle = Arc::clone(&idle);
            async move { expired(&idle, timeout).await }
        });
        // Busy from 10 s to 50 s (past the first look at 30 s), then idle.
        tokio::time::sleep(Duration::from_secs(10)).await;
        idle.busy();
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert!(!watcher.is_finished(), "cut off while serving a request");
        idle.idle();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(
            !watcher.is_finished(),
            "cut off before its timeout since the answer"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            watcher.is_finished(),
            "kept open past its timeout since the answer"
        );
    }
}
