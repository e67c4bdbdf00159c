//! The delivery pipeline: a leaser keeps a buffer of leased events filled to its lease
//! window (window.rs), mapping each leased batch on the blocking pool, `concurrency`
//! workers take them one at a time to send, and an acknowledger batches the acks.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use stipple_core::Mapper;
use stipple_pointillist::{Client, Outcome};
use stipple_store::{DeadLetterReason, EventId, Leased, Store};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::config::DeliveryConfig;
use crate::health::DeliveryHealth;
use crate::telemetry::{
    DeadLettered, Delivered, DeliveredHandles, OutagePaused, Paused, REJECTED, RETRY_HORIZON,
    Resumed, Retried, Skipped, StoreTrouble, UNMAPPABLE,
};
use crate::window::{Demand, Window};

/// The delivery service. Build it with [`Delivery::new`], keep [`Delivery::health`] for
/// readiness, then [`Delivery::run`] it until shutdown.
#[derive(Debug, Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    client: Client,
    mapper: Mapper,
    config: DeliveryConfig,
    health: Arc<DeliveryHealth>,
    delivered: DeliveredHandles,
    /// Whether this pipeline probes while delivery is paused (for credentials or an
    /// outage): one of a service's shards does, the others wait for it.
    prober: bool,
    /// This pipeline's workers waiting for an event.
    demand: Demand,
}

/// A leased event and its request body, mapped before a worker takes it.
#[derive(Debug)]
struct Ready {
    event: Leased,
    /// `Ok(None)` when its `integrations` route it away from Pointillist; `Err` why it
    /// cannot be mapped.
    body: Result<Option<bytes::Bytes>, String>,
}

/// The name of a pipeline runtime's blocking threads, which map leased batches (and
/// resolve the client's DNS names): in `top -H`, and in the bench's CPU figures.
const MAP_THREAD: &str = "stipple-map";

/// What became of one event, for the prober: delivery resumes on `Done`.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Delivered, or rejected: Pointillist answered.
    Done,
    /// Not sent (routed away or unmappable): says nothing about Pointillist.
    Unsent,
    /// A transient failure (retried, or dead-lettered past the horizon).
    Transient,
    Credentials,
}

impl Delivery {
    /// A delivery service over `store`, sending with `client`, mapping with `mapper`.
    pub fn new(
        store: Arc<dyn Store>,
        client: Client,
        mapper: Mapper,
        config: DeliveryConfig,
    ) -> Self {
        let inner = Inner {
            store,
            client,
            mapper,
            config,
            health: Arc::default(),
            delivered: DeliveredHandles::default(),
            prober: true,
            demand: Demand::default(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Another pipeline over the same store, mapper, settings and health, sending with
    /// `client` (and as many workers as it has requests in flight at once): run each
    /// shard on a thread of its own ([`Delivery::spawn`]) to deliver on several cores.
    /// The store hands each event to one lease at a time, so shards never send the
    /// same event at once. While delivery is paused only the first pipeline probes; its
    /// shards wait for it to resume.
    pub fn shard(&self, client: Client) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                store: inner.store.clone(),
                config: DeliveryConfig {
                    concurrency: client.concurrency(),
                    ..inner.config.clone()
                },
                client,
                mapper: inner.mapper.clone(),
                health: inner.health.clone(),
                delivered: DeliveredHandles::default(),
                prober: false,
                demand: Demand::default(),
            }),
        }
    }

    /// The destination health this service keeps up to date.
    pub fn health(&self) -> Arc<DeliveryHealth> {
        self.inner.health.clone()
    }

    /// [`Delivery::run`] on a new thread named `name`, with a single-threaded async
    /// runtime of its own: a pipeline's tasks (leaser, workers, acknowledger, the
    /// client's connections) wake each other for every event, and on one thread such a
    /// wake-up is a push onto a local queue rather than a wake-up of another thread.
    /// Leased batches are mapped on the runtime's blocking pool, threads named
    /// `stipple-map`. The answer comes when the pipeline has stopped.
    pub fn spawn(
        self,
        name: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<oneshot::Receiver<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(MAP_THREAD)
            .build()?;
        let (done, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(self.run(shutdown));
                let _ = done.send(());
            })?;
        Ok(stopped)
    }

    /// Delivers until `shutdown` resolves, then stops leasing, lets requests in flight
    /// finish (up to the configured grace), and hands back what it did not start.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ack_tx, ack_rx) = mpsc::channel::<EventId>(4096);
        // Leased events wait here for a worker: leasing ahead (the window's extra) keeps
        // the workers busy while the store answers the next lease.
        let window = Window::new(self.inner.config.concurrency, self.inner.config.lease_batch);
        let (event_tx, event_rx) = mpsc::channel::<Ready>(window.most());
        let acker = tokio::spawn(acknowledge(self.inner.store.clone(), ack_rx));
        let leaser = tokio::spawn(self.clone().lease_ahead(
            stop_rx.clone(),
            window,
            event_tx,
            ack_tx.clone(),
        ));
        let dispatcher = self.dispatch(stop_rx, event_rx, ack_tx);
        tokio::pin!(dispatcher);
        tokio::select! {
            () = &mut dispatcher => {}
            () = shutdown => {
                let _ = stop_tx.send(true);
                dispatcher.await;
            }
        }
        let _ = leaser.await;
        // Every ack sender is gone: the acknowledger drains and ends.
        let _ = acker.await;
        debug!("delivery pipeline stopped");
    }

    /// Leases for the workers waiting and keeps the buffer of leased events filled to its
    /// `window` (the `events` channel holds up to the window's most); while delivery is
    /// paused, probes with one event at a time instead.
    async fn lease_ahead(
        self,
        mut stop: watch::Receiver<bool>,
        mut window: Window,
        events: mpsc::Sender<Ready>,
        acks: mpsc::Sender<EventId>,
    ) {
        let inner = &self.inner;
        let mut probe_attempt = 0u32;
        let mut queued = inner.store.queued_signal();
        'lease: while !*stop.borrow() {
            if inner.health.is_paused() && !inner.prober {
                // The first pipeline probes; this one waits for it to resume.
                if sleep_or_stop(PAUSED_POLL, &mut stop).await {
                    break;
                }
                continue;
            }
            if inner.health.is_paused() {
                // Not before a `Retry-After` Pointillist gave, up to the retry horizon (the
                // longest any event waits for a retry; it does not run while paused).
                let asked = inner
                    .health
                    .asked_wait_left()
                    .map(|left| left.min(inner.config.retry_horizon));
                let delay = inner
                    .config
                    .probe_backoff
                    .delay(probe_attempt, asked)
                    .max(Duration::from_millis(50));
                probe_attempt = probe_attempt.saturating_add(1);
                if sleep_or_stop(delay, &mut stop).await {
                    break;
                }
                match inner.store.lease(1, inner.config.lease_for).await {
                    Ok(leased) => {
                        for event in leased {
                            let fate = inner.process(inner.ready(event), &acks).await;
                            if fate == Fate::Done && inner.health.resume() {
                                Resumed.emit();
                            }
                        }
                    }
                    Err(error) => StoreTrouble {
                        during: "lease",
                        error: &error,
                    }
                    .emit(),
                }
                continue;
            }
            probe_attempt = 0;
            // Lease when workers wait for events the buffer does not hold, or half the
            // window's extra is free: one store round trip then brings many events (a
            // lease per freed slot would cost a commit per event or two).
            let most = events.max_capacity();
            let buffered = |events: &mpsc::Sender<Ready>| most - events.capacity();
            let asked = loop {
                if let Some(asked) = window.wanted(inner.demand.idle(), buffered(&events)) {
                    break asked;
                }
                let low_water = window.low_water();
                tokio::select! {
                    () = inner.demand.changed() => {}
                    permits = events.reserve_many(most - low_water.unwrap_or(0)), if low_water.is_some() => {
                        if permits.is_err() {
                            break 'lease;
                        }
                    }
                    _ = stop.changed() => continue 'lease,
                }
            };
            if let Some(queued) = &mut queued {
                // What this lease may miss changes it again.
                queued.borrow_and_update();
            }
            let sent = Instant::now();
            let leased = match inner.store.lease(asked, inner.config.lease_for).await {
                Ok(leased) => leased,
                Err(error) => {
                    StoreTrouble {
                        during: "lease",
                        error: &error,
                    }
                    .emit();
                    if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                        break;
                    }
                    continue;
                }
            };
            if leased.is_empty() {
                window.drained();
                if wait_for_events(&mut queued, inner.config.idle_poll, &mut stop).await {
                    break;
                }
                continue;
            }
            let got = leased.len();
            let Some(ready) = self.map_batch(leased).await else {
                return;
            };
            let now = Instant::now();
            window.leased(asked, got, now - sent, inner.demand.per_request());
            debug!(count = got, extra = window.extra(), "leased events");
            let mut ready = ready.into_iter();
            while let Some(next) = ready.next() {
                if let Err(unsent) = events.send(next).await {
                    // Delivery stopped while this lease ran: none of these was started.
                    let ids: Vec<EventId> = std::iter::once(unsent.0.event.id)
                        .chain(ready.map(|r| r.event.id))
                        .collect();
                    inner.hand_back(&ids).await;
                    return;
                }
            }
        }
    }

    /// Maps a leased batch on the runtime's blocking pool, in lease order: on another
    /// thread than the one sending, the mapping's CPU (about a seventh of the delivery
    /// thread's) is off the pipeline's busiest thread, and one hand-off serves the whole
    /// batch. `None` only when the runtime is shutting down, after handing the batch back.
    async fn map_batch(&self, leased: Vec<Leased>) -> Option<Vec<Ready>> {
        let ids: Vec<EventId> = leased.iter().map(|e| e.id).collect();
        let inner = self.inner.clone();
        let mapped = tokio::task::spawn_blocking(move || {
            leased
                .into_iter()
                .map(|event| inner.ready(event))
                .collect::<Vec<_>>()
        })
        .await;
        match mapped {
            Ok(ready) => Some(ready),
            // `ready` catches a panic, so the task was cancelled: nothing was started.
            Err(_) => {
                self.inner.hand_back(&ids).await;
                None
            }
        }
    }

    /// Runs `concurrency` workers, each taking the next leased event and sending it,
    /// until asked to stop; then hands back to the store what was leased and never
    /// started, and gives the requests in flight the configured grace to finish.
    async fn dispatch(
        &self,
        stop: watch::Receiver<bool>,
        events: mpsc::Receiver<Ready>,
        acks: mpsc::Sender<EventId>,
    ) {
        let inner = &self.inner;
        let events = Arc::new(Mutex::new(events));
        let mut workers = JoinSet::new();
        for _ in 0..inner.config.concurrency.max(1) {
            workers.spawn(
                self.clone()
                    .work(stop.clone(), events.clone(), acks.clone()),
            );
        }
        let mut stop_seen = stop.clone();
        tokio::select! {
            _ = stop_seen.wait_for(|stop| *stop) => {}
            // Workers end by themselves only when the leaser is gone.
            _ = async { while workers.join_next().await.is_some() {} } => {}
        }
        // Stopping: what is still buffered was never started.
        let unstarted = {
            let mut events = events.lock().await;
            events.close();
            let mut unstarted = Vec::new();
            while let Some(ready) = events.recv().await {
                unstarted.push(ready.event.id);
            }
            unstarted
        };
        inner.hand_back(&unstarted).await;
        let grace = inner.config.shutdown_grace;
        if tokio::time::timeout(grace, async {
            while workers.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            info!(
                ?grace,
                "requests still in flight at shutdown are left leased and will be delivered again"
            );
            workers.abort_all();
        }
    }

    /// One worker: takes leased events one at a time and sends them; an event taken
    /// while delivery is paused or stopping goes back to the store unsent.
    async fn work(
        self,
        mut stop: watch::Receiver<bool>,
        events: Arc<Mutex<mpsc::Receiver<Ready>>>,
        acks: mpsc::Sender<EventId>,
    ) {
        let inner = &self.inner;
        loop {
            let next = tokio::select! {
                next = async {
                    // Counted from before the lock: workers queued behind it wait too.
                    let _waiting = inner.demand.waiting();
                    let mut events = events.lock().await;
                    if events.is_empty() {
                        inner.demand.unmet();
                    }
                    events.recv().await
                } => next,
                _ = stop.wait_for(|stop| *stop) => None,
            };
            let Some(ready) = next else { break };
            if inner.health.is_paused() || *stop.borrow() {
                inner.hand_back(&[ready.event.id]).await;
                continue;
            }
            let began = Instant::now();
            inner.process(ready, &acks).await;
            inner.demand.took(began.elapsed());
        }
    }
}

/// How often a shard that does not probe looks whether delivery has resumed.
const PAUSED_POLL: Duration = Duration::from_millis(100);

/// Sleeps for `delay`; true when asked to stop meanwhile.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// How long a leaser that found nothing waits after the store signals queued events, so
/// that the commits right behind the first join its lease: at a trickle of events an
/// event is leased within this, where a lease per commit would add a store round trip
/// per commit; past it, as many leases come back as under a steady load.
const PICKUP_LINGER: Duration = Duration::from_millis(5);

/// After a lease found nothing: waits for the store to signal queued events (then for
/// [`PICKUP_LINGER`]), or for `poll` to pass, which finds retries that fell due and leases
/// that ran out (and serves stores without a signal). Returns whether delivery stops.
async fn wait_for_events(
    queued: &mut Option<watch::Receiver<u64>>,
    poll: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let Some(signal) = queued else {
        return sleep_or_stop(poll, stop).await;
    };
    tokio::select! {
        changed = signal.changed() => {
            if changed.is_err() {
                // The store is closing: nothing to wait on any more.
                *queued = None;
            }
            sleep_or_stop(PICKUP_LINGER, stop).await
        }
        () = tokio::time::sleep(poll) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

impl Inner {
    /// Gives leased events back untouched, due at once.
    async fn hand_back(&self, ids: &[EventId]) {
        if ids.is_empty() {
            return;
        }
        if let Err(error) = self.store.release(ids).await {
            StoreTrouble {
                during: "release",
                error: &error,
            }
            .emit();
        }
    }

    #[tracing::instrument(
        name = "delivery.send",
        level = "info",
        skip_all,
        fields(message_id = %ready.event.message_id, source = %ready.event.source, attempts = ready.event.attempts)
    )]
    async fn process(&self, ready: Ready, acks: &mpsc::Sender<EventId>) -> Fate {
        let Ready { event, body } = ready;
        let body = match body {
            Ok(Some(body)) => body,
            Ok(None) => {
                Skipped.emit();
                let _ = acks.send(event.id).await;
                return Fate::Unsent;
            }
            Err(detail) => {
                self.dead_letter(&event, UNMAPPABLE, None, detail).await;
                return Fate::Unsent;
            }
        };
        match self.client.send_body(body).await {
            Outcome::Delivered { .. } => {
                self.health.answered();
                let latency = (Utc::now() - event.enqueued_at)
                    .to_std()
                    .unwrap_or_default();
                Delivered { latency }.emit(&self.delivered);
                let _ = acks.send(event.id).await;
                Fate::Done
            }
            Outcome::Transient {
                status,
                reason,
                retry_after,
            } => {
                let failures = self.health.failed(event.id, &reason);
                if let Some(asked) = retry_after {
                    self.health.asked_to_wait(asked);
                }
                if failures >= self.config.outage_after
                    && self.health.pause_for_outage(failures, &reason)
                {
                    OutagePaused {
                        failures,
                        reason: &reason,
                    }
                    .emit();
                }
                let now = Utc::now();
                // Time paused does not count (see `DeliveryHealth`).
                let age = match self.health.retry_horizon_start(event.enqueued_at) {
                    Some(start) => (now - start).to_std().unwrap_or_default(),
                    None => Duration::ZERO,
                };
                if age >= self.config.retry_horizon {
                    let detail = format!(
                        "still failing after the retry horizon ({}): {reason}",
                        humanize(self.config.retry_horizon)
                    );
                    self.dead_letter(&event, RETRY_HORIZON, status, detail)
                        .await;
                    return Fate::Transient;
                }
                // Never past the horizon: a `Retry-After` longer than what is left of it
                // would park the event beyond it, neither delivered nor dead-lettered. It
                // is tried once more as the horizon ends, then dead-lettered if it fails.
                let delay = self
                    .config
                    .backoff
                    .delay(event.attempts, retry_after)
                    .min(self.config.retry_horizon.saturating_sub(age));
                Retried {
                    message_id: &event.message_id,
                    attempts: event.attempts + 1,
                    delay,
                    reason: &reason,
                }
                .emit();
                // Saturating: a horizon of many millennia and a server asking for as
                // long would overflow the calendar.
                let not_before = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|delay| now.checked_add_signed(delay))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                if let Err(error) = self.store.retry(event.id, not_before).await {
                    StoreTrouble {
                        during: "retry",
                        error: &error,
                    }
                    .emit();
                }
                Fate::Transient
            }
            Outcome::Credentials { status } => {
                if self.health.pause(status) {
                    Paused { status }.emit();
                }
                if let Err(error) = self.store.release(&[event.id]).await {
                    StoreTrouble {
                        during: "release",
                        error: &error,
                    }
                    .emit();
                }
                Fate::Credentials
            }
            Outcome::Rejected { status, body } => {
                self.health.answered();
                self.dead_letter(&event, REJECTED, Some(status), body).await;
                Fate::Done
            }
        }
    }

    /// A leased event with its request body mapped. A panic while mapping (a bug) makes
    /// the event unmappable, so it is dead-lettered and the others go on.
    fn ready(&self, event: Leased) -> Ready {
        // The mapper holds settings only and the payload is borrowed: a panic leaves
        // nothing half-changed behind.
        let mapped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.mapper.map_json(&event.payload)
        }));
        let body = match mapped {
            Ok(Ok(body)) => Ok(body.map(Into::into)),
            Ok(Err(error)) => Err(error.to_string()),
            Err(panic) => Err(format!(
                "mapping failed unexpectedly: {}",
                panic_message(panic.as_ref())
            )),
        };
        Ready { event, body }
    }

    async fn dead_letter(
        &self,
        event: &Leased,
        reason: &'static str,
        status: Option<u16>,
        detail: String,
    ) {
        DeadLettered {
            message_id: &event.message_id,
            reason,
            detail: &detail,
        }
        .emit();
        if let Err(error) = self
            .store
            .dead_letter(event.id, DeadLetterReason { status, detail })
            .await
        {
            StoreTrouble {
                during: "dead_letter",
                error: &error,
            }
            .emit();
        }
    }
}

/// Most acknowledgements in one store write.
const ACK_BATCH: usize = 1024;
/// How long a first acknowledgement waits for others to share its store write. An
/// unwritten ack costs nothing but a redelivery after a crash (the event stays leased
/// meanwhile), while each write costs a commit: waiting makes writes fewer and fuller.
const ACK_LINGER: Duration = Duration::from_millis(5);

/// Batches acknowledgements: one store write for many delivered events.
async fn acknowledge(store: Arc<dyn Store>, mut acks: mpsc::Receiver<EventId>) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while acks.recv_many(&mut batch, ACK_BATCH).await > 0 {
        let deadline = tokio::time::Instant::now() + ACK_LINGER;
        while batch.len() < ACK_BATCH {
            let room = ACK_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, acks.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Unacknowledged events are delivered again once their lease runs out, so
        // giving up after a few tries loses nothing; it only risks duplicates.
        for attempt in 1..=5u64 {
            match store.ack(&batch).await {
                Ok(()) => break,
                Err(error) => {
                    StoreTrouble {
                        during: "ack",
                        error: &error,
                    }
                    .emit();
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
        batch.clear();
    }
}

/// The text a panic was raised with, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}
