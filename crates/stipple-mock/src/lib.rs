//! A mock Pointillist server for tests and local runs: it referees the wire contract
//! strictly and misbehaves on request.
//!
//! `POST /event` accepts one event when the `apiToken` header equals the configured
//! token (else 401), the `Content-Type` is `application/json` and the body is exactly
//! what the contract allows (else 400 with `{"error": "<reason>"}`). Accepted events
//! are answered `200 {"ok": true}` and recorded in arrival order.
//!
//! The contract is checked here on its own, without `stipple-core`: the referee must
//! not share the player's bugs.
//!
//! [`Faults`] (errors, throttling, an unauthorized period, latency, dropped connections)
//! apply before any check, as a real outage answers before it validates anything.
//!
//! Control routes, for driving a mock in another process:
//!
//! | route | does |
//! |---|---|
//! | `GET /mock/events` | the accepted events, a JSON array |
//! | `DELETE /mock/events` | forgets the events and refusals and zeroes the counters (204) |
//! | `GET /mock/faults` | the faults in force, as [`Faults`] JSON |
//! | `PUT /mock/faults` | replaces the faults (400 if a rate is outside 0..=1) |
//! | `GET /mock/stats` | the counters, as [`MockStats`] JSON |
//! | `GET /mock/refusals` | each request an injected fault refused: its event's `messageId`, the status, when (a JSON array of [`Refusal`]) |
#![forbid(unsafe_code)]

mod contract;
mod faults;
mod listener;
mod server;
mod state;

pub use faults::{Faults, InvalidFaults};
pub use server::{MockServer, serve};
pub use state::{DEFAULT_ACTOR_TYPE, MockConfig, MockStats, Refusal};
