//! The HTTP server around the [`Ingress`]: accepting connections, with the limits a
//! server facing the internet needs, and stopping gracefully. Each connection runs the
//! ingress's front service (`front.rs`): the Tracking API's requests straight to their
//! handler, the rest through the router.
//!
//! `axum::serve` sets no timer, so a client could hold a connection for ever by sending
//! nothing, or its headers a byte at a time. Here each connection is HTTP/1 with a
//! timeout on reading a request's headers, which also closes a keep-alive connection
//! left idle that long (one timer a connection, see
//! [`header_timeout`](crate::header_timeout)); and at most
//! [`ServerConfig::max_connections`] are open at once: at the limit no more are accepted
//! (they wait in the kernel's listen queue) until one closes. A client that closes its
//! side of the connection after sending a request still gets the answer (HTTP/1
//! half-close). Connections are served on
//! threads of their own, each with a single-threaded runtime (see
//! [`threads`](crate::threads)).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use stipple_store::Throttle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, error, warn};

use crate::Ingress;
use crate::header_timeout::{Idle, Watched};
use crate::telemetry;
use crate::threads::ConnectionThreads;
use crate::wake_hold::Held;

/// How the server treats connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most connections open at once (10,000). Each takes a file descriptor and a few
    /// KiB; at the limit, new ones wait in the listen queue until one closes.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers, counted from the end of
    /// the previous request on a keep-alive connection (30 s). A connection over it is
    /// closed, so an idle keep-alive connection is closed after this long too.
    pub header_timeout: Duration,
    /// Threads that serve connections (one per CPU core): each runs a single-threaded
    /// runtime, and a connection stays on the thread it was given from accept to close.
    pub threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
            threads: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        }
    }
}

/// How often the "connection limit reached" warning is logged at most.
const LIMIT_WARNINGS_EVERY: Duration = Duration::from_secs(60);

/// Serves `ingress` on `listener` until `shutdown` completes; then accepts no more
/// connections, lets each finish the request it is serving (idle ones close at once) and
/// returns when all have closed. A caller that stops waiting (a grace period ran out)
/// drops the future: that cuts off the connections still open. Fails only when the
/// threads that serve connections cannot be started.
pub async fn serve(
    listener: TcpListener,
    ingress: Ingress,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    telemetry::describe_server_metrics();
    let threads = ConnectionThreads::start(config.threads)?;
    debug!(threads = threads.len(), "serving connections");
    let slots = Arc::new(Semaphore::new(
        config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    // Kept by `header_timeout` instead, without a timer armed per request.
    http.header_read_timeout(None);
    // A request is served to its end even when its client closes its side first: hyper
    // otherwise drops a request on seeing the end of the client's input (a client that
    // half-closes after sending, as `nc -N` does, got no answer), and to see it, reads the
    // socket again while each request waits for the store, taking a new read buffer each
    // time as the request still holds the old one: 1.3% of a request's instructions, and
    // about a tenth of its CPU time at 256 connections (docs/performance.md). A client
    // that is really gone is found when its answer is written.
    http.half_close(true);
    let header_timeout = config.header_timeout;
    let front = ingress.into_front();
    let graceful = GracefulShutdown::new();
    let at_limit = Throttle::new(LIMIT_WARNINGS_EVERY);
    tokio::pin!(shutdown);
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                telemetry::connection_limit_reached();
                if let Some(held_back) = at_limit.admit() {
                    warn!(
                        max_connections = config.max_connections,
                        held_back,
                        "connection limit reached: new connections wait until one closes \
                         (raise ingress.max_connections if clients are honest)"
                    );
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => {
                        slot.expect("the connection semaphore is never closed")
                    }
                    () = &mut shutdown => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let http = http.clone();
        let front = front.clone();
        let watcher = graceful.watcher();
        threads.spawn(stream, move |stream| async move {
            let _open = telemetry::OpenConnection::new();
            let idle = Idle::new();
            let service = Watched::new(front, Arc::clone(&idle));
            // Spares each request the poll hyper's body channel asks for nothing (`wake_hold.rs`).
            let connection =
                Held::new(watcher.watch(http.serve_connection(TokioIo::new(stream), service)));
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        debug!(error = %e, "connection ended with an error");
                    }
                }
                () = crate::header_timeout::expired(&idle, header_timeout) => {
                    debug!("closing a connection that sent no request headers in time");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What to do when `accept` fails: a client that went away before it was accepted is
/// nothing; anything else (out of file descriptors, say) is logged and waited out a
/// little, so as not to spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    error!(error = %e, "cannot accept connections; trying again in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
