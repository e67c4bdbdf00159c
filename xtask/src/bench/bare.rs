//! The ingress baseline: a bare axum server that reads each request body and answers
//! `200 {"success":true}` without parsing or storing anything. It runs in its own
//! process (this binary, `bench --bare-server`), so that it shares the machine with the
//! load generator exactly as `stipple serve` does.

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;

/// The line the bench waits for, followed by the URL.
pub(crate) const LISTENING: &str = "bare listening on ";

/// Serves until SIGTERM or SIGINT with `axum::serve` on tokio's multi-threaded runtime: the
/// way an axum service is written by default. (`stipple serve` runs its connections on
/// single-threaded runtimes of their own instead, stipple-ingress `threads.rs`; measured,
/// that served 13% more `/v1/track` requests than one multi-threaded runtime did,
/// docs/performance.md "Connection threads". The baseline is left as it is written by
/// default, not tuned the same way.)
pub(crate) fn serve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen")?;
        println!("{LISTENING}http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/v1/batch", post(answer))
            .route("/v1/track", post(answer));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .context("the bare server failed")
    })
}

/// Takes the whole body (as any handler must, to keep the connection) and ignores it.
async fn answer(_body: Bytes) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], r#"{"success":true}"#)
}
