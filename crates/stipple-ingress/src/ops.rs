//! The operations endpoints: `/healthz`, `/readyz` and `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{counter, gauge};
use serde_json::json;
use tracing::warn;

use crate::state::IngressState;

/// How long one check of the store answers `/readyz` (on the clock's monotonic time): a
/// flood of probes costs the store one durable write a second, not one each, and a
/// change of state shows within that.
const READY_CHECK_REUSED_FOR_MICROS: i64 = 1_000_000;

/// The last check of the store for `/readyz`: when (monotonic microseconds) and what it
/// found. Behind an async mutex, so that probes arriving while a check runs wait for it
/// rather than start their own.
#[derive(Debug, Default)]
pub(crate) struct ReadyCheck(tokio::sync::Mutex<Option<(i64, Result<(), String>)>>);

impl ReadyCheck {
    /// Whether the store can write, from a check made less than a second ago if any.
    async fn store_writable(&self, state: &IngressState) -> Result<(), String> {
        let mut last = self.0.lock().await;
        let now = state.shared.clock.monotonic_micros();
        if let Some((at, found)) = &*last {
            if (0..READY_CHECK_REUSED_FOR_MICROS).contains(&(now - at)) {
                return found.clone();
            }
        }
        let found = state
            .shared
            .store
            .check_writable()
            .await
            .map_err(|e| e.to_string());
        // Timed from its end: probes that waited through a slow check (a slow fsync)
        // take its answer rather than each make another.
        let ended = state.shared.clock.monotonic_micros();
        *last = Some((ended, found.clone()));
        found
    }
}
use crate::telemetry::{DEAD_LETTERS, QUEUED, REJECTED_STORED, STORE_COMMITS, STORE_SYNCS};

/// 200 while the process can answer and its store works or may recover by itself (a full
/// disk does); 503 once the store has failed in a way only a restart clears (a failed
/// fsync), so that a liveness probe restarts the process.
pub(crate) async fn healthz(State(state): State<IngressState>) -> Response {
    match state.shared.store.fatal() {
        None => (StatusCode::OK, Json(json!({ "alive": true }))).into_response(),
        Some(detail) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "alive": false, "detail": detail })),
        )
            .into_response(),
    }
}

/// 200 when the store can write, so events sent here are accepted; else 503. The body
/// also says whether they are being delivered: a destination refusing the token pauses
/// delivery but not the ingress, which keeps queueing. It does not turn this 503: a
/// load balancer or Kubernetes readiness probe would then take every instance out of
/// rotation and the clients would drop what they could not send, the one loss the
/// queue is there to prevent. Alert on the body or on `stipple_delivery_paused` instead.
/// The store's check is a durable write, made at most once a second ([`ReadyCheck`]).
pub(crate) async fn readyz(State(state): State<IngressState>) -> Response {
    let store = state.shared.ready_check.store_writable(&state).await;
    let destination = state.shared.destination.status();
    let ready = store.is_ok();
    let store = match store {
        Ok(()) => json!({ "ok": true, "detail": "writable" }),
        Err(e) => json!({ "ok": false, "detail": e }),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "store": store,
        "destination": { "healthy": destination.healthy, "detail": destination.detail },
    });
    (status, Json(body)).into_response()
}

/// The Prometheus text, after setting the store gauges; 404 when no handle was given.
pub(crate) async fn metrics(State(state): State<IngressState>) -> Response {
    let Some(handle) = &state.shared.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are not enabled: give the ingress a Prometheus handle\n",
        )
            .into_response();
    };
    match state.shared.store.stats().await {
        Ok(stats) => {
            gauge!(QUEUED).set(stats.queued as f64);
            gauge!(DEAD_LETTERS).set(stats.dead_letters as f64);
            gauge!(REJECTED_STORED).set(stats.rejected as f64);
        }
        Err(e) => warn!(error = %e, "could not read the store's counts for /metrics"),
    }
    if let Some(activity) = state.shared.store.activity() {
        counter!(STORE_COMMITS).absolute(activity.commits);
        counter!(STORE_SYNCS).absolute(activity.syncs);
    }
    handle.run_upkeep();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
