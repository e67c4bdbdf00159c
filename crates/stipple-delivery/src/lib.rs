//! Stipple's delivery: workers lease queued Segment messages from the store, map them
//! to Pointillist events (stipple-core), send them (stipple-pointillist) with bounded
//! concurrency, and act on each outcome as `shared/spec/pointillist.md` says:
//!
//! - delivered: acknowledged (removed from the queue);
//! - transient (5xx, 408, 429, timeouts, connection errors): retried with exponential
//!   backoff and full jitter, never sooner than `Retry-After`, until the retry horizon
//!   (default 72 h) has passed since it was queued (or since delivery last resumed after
//!   a pause, if later: no horizon runs while paused), then dead-lettered; transient
//!   failures one after another with no answer in between pause delivery for an outage,
//!   probing as for credentials;
//! - credentials (401/403): delivery pauses for the whole destination, every event stays
//!   queued, health reports it, and one event at a time probes with backoff until the
//!   token works again;
//! - rejected (other 4xx): that event alone is dead-lettered with status and body.
//!
//! Architecture invariants: an event leaves the queue only through ack or dead letter,
//! so a crash at any point delivers it again (at-least-once); one slow or failing event
//! never holds a worker slot other events need beyond its own request.
#![forbid(unsafe_code)]

mod config;
mod health;
mod pipeline;
mod telemetry;
mod window;

pub use config::DeliveryConfig;
pub use health::{DeliveryHealth, HealthStatus};
pub use pipeline::Delivery;
pub use telemetry::describe_metrics;
