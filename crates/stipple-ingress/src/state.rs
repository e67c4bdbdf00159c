//! The router's state and the collaborators it is given: store, clock, destination
//! health and the Prometheus handle.

use std::fmt;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use stipple_store::{Clock, Store, SystemClock};
use tokio::sync::Semaphore;
use tower_http::cors::AllowOrigin;

use crate::auth::Sources;
use crate::body::units;
use crate::config::{ConfigError, IngressConfig};
use crate::ops::ReadyCheck;
use crate::telemetry::Counters;

/// Whether the destination (Pointillist) is being delivered to, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStatus {
    /// True while delivery works.
    pub healthy: bool,
    /// What is wrong, or what is fine, for people.
    pub detail: String,
}

/// Reports the destination's health; `stipple serve` implements it over delivery's.
pub trait DestinationHealth: Send + Sync {
    /// The current status.
    fn status(&self) -> DestinationStatus;
}

/// A destination that is always healthy (no delivery running, or tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysHealthy;

impl DestinationHealth for AlwaysHealthy {
    fn status(&self) -> DestinationStatus {
        DestinationStatus {
            healthy: true,
            detail: "not monitored".to_owned(),
        }
    }
}

/// Everything the router's handlers share. Cheap to clone: one reference count, since
/// axum clones the state for every request (a field-by-field clone cost about a
/// microsecond a request).
#[derive(Clone)]
pub struct IngressState {
    pub(crate) shared: Arc<Shared>,
}

/// What an [`IngressState`] points at.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) config: Arc<IngressConfig>,
    /// `config.sources`, ready to be found by write key.
    pub(crate) sources: Arc<Sources>,
    /// The last store check `/readyz` made.
    pub(crate) ready_check: Arc<ReadyCheck>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) destination: Arc<dyn DestinationHealth>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) cors_origin: AllowOrigin,
    pub(crate) counters: Arc<Counters>,
}

impl IngressState {
    /// State for `config` storing into `store`, with the system clock, a destination
    /// taken as healthy and no `/metrics`; change those with the `with_*` methods.
    pub fn new(config: IngressConfig, store: Arc<dyn Store>) -> Result<Self, ConfigError> {
        let cors_origin = config.validate()?;
        // Rounded up, as each request's reservation is (`body::Reservation`): a budget that
        // `validate` found at least one batch then always holds one.
        let permits = units(config.max_in_flight_bytes).min(Semaphore::MAX_PERMITS);
        let counters = Counters::new(config.sources.iter().map(|s| s.name.as_str()));
        let shared = Shared {
            counters: Arc::new(counters),
            sources: Arc::new(Sources::new(&config.sources)),
            ready_check: Arc::default(),
            config: Arc::new(config),
            store,
            clock: Arc::new(SystemClock),
            destination: Arc::new(AlwaysHealthy),
            metrics: None,
            in_flight: Arc::new(Semaphore::new(permits)),
            cors_origin,
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// Uses `clock` for `receivedAt`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        Arc::make_mut(&mut self.shared).clock = clock;
        self
    }

    /// Reports `destination` in `/readyz`.
    pub fn with_destination_health(mut self, destination: Arc<dyn DestinationHealth>) -> Self {
        Arc::make_mut(&mut self.shared).destination = destination;
        self
    }

    /// Serves `/metrics` from `handle` (the recorder the `metrics` facade records into).
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        Arc::make_mut(&mut self.shared).metrics = Some(handle);
        self
    }

    /// The settings.
    pub fn config(&self) -> &IngressConfig {
        &self.shared.config
    }
}

impl fmt::Debug for IngressState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressState")
            .field("config", &self.shared.config)
            .field("store", &self.shared.store)
            .field("metrics", &self.shared.metrics.is_some())
            .field("in_flight_free", &self.shared.in_flight.available_permits())
            .finish_non_exhaustive()
    }
}
