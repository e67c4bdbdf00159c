//! The threads that serve HTTP connections: each runs a single-threaded tokio runtime of
//! its own, and a connection stays on the thread it was given from accept to close.
//!
//! Why not the service's multi-threaded runtime: a connection's task then never moves
//! between threads, no thread spends time looking for tasks to steal from another, and
//! the wake-ups of its socket reach that one thread (only the store's answer comes from
//! the store's writer thread). Measured on `/v1/track` at 256 connections with delivery
//! paused (docs/performance.md), the CPU a request on these threads fell by about
//! a sixth and the rate rose by 10-15%.
//!
//! What this gives up: a thread's connections cannot move to another thread while it
//! is busy. Each new connection goes to the thread with the fewest open, so the many
//! short-lived or keep-alive connections of Segment's clients spread evenly; a few very
//! busy connections may not, and those on one thread then share one core.
//!
//! Dropping [`ConnectionThreads`] stops the threads: the connections still open on them
//! are cut off, as they are when a multi-threaded runtime is dropped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::debug;

/// The name of each thread, followed by its number.
const THREAD_NAME: &str = "stipple-http-";

/// The threads connections are served on (see the module docs).
#[derive(Debug)]
pub(crate) struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
}

#[derive(Debug)]
struct ConnectionThread {
    runtime: Handle,
    /// Connections being served on it.
    open: Arc<AtomicUsize>,
    /// Ends the thread (when sent, or dropped).
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConnectionThreads {
    /// Starts `count` threads (at least one).
    pub(crate) fn start(count: usize) -> std::io::Result<Self> {
        let threads = (0..count.max(1))
            .map(|i| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = oneshot::channel::<()>();
                let thread = std::thread::Builder::new()
                    .name(format!("{THREAD_NAME}{i}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                        // Dropping the runtime drops the connections still on it.
                    })?;
                Ok(ConnectionThread {
                    runtime: handle,
                    open: Arc::new(AtomicUsize::new(0)),
                    stop: Some(stop),
                    thread: Some(thread),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self { threads })
    }

    /// How many threads serve connections.
    pub(crate) fn len(&self) -> usize {
        self.threads.len()
    }

    /// Runs `serve` over `stream` on the thread with the fewest connections open. The
    /// stream moves to that thread's runtime, so its readiness wakes that thread alone.
    pub(crate) fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(thread) = self
            .threads
            .iter()
            .min_by_key(|thread| thread.open.load(Ordering::Relaxed))
        else {
            return;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                debug!(error = %e, "connection lost before it was served");
                return;
            }
        };
        let open = Open::new(&thread.open);
        thread.runtime.spawn(async move {
            let _open = open;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => debug!(error = %e, "connection lost before it was served"),
            }
        });
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        for thread in &mut self.threads {
            if let Some(stop) = thread.stop.take() {
                let _ = stop.send(());
            }
        }
        for thread in &mut self.threads {
            if let Some(thread) = thread.thread.take() {
                // Quick: the thread only drops its runtime and what is left on it.
                let _ = thread.join();
            }
        }
    }
}

/// A connection counted on its thread while it is served.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(open))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP connection over loopback: the client's end and the server's.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("its address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// Serves `connections` new connections, each held open until its client goes away;
    /// the names of the threads they were served on, in order.
    async fn served_on(threads: &ConnectionThreads, connections: usize) -> Vec<String> {
        let mut clients = Vec::new();
        let mut names = Vec::new();
        for _ in 0..connections {
            let (client, server) = connection().await;
            clients.push(client);
            let (tx, rx) = oneshot::channel();
            threads.spawn(server, move |mut stream| async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send(name.unwrap_or_default());
                let mut buf = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            });
            names.push(rx.await.expect("the connection was served"));
        }
        names
    }

    #[tokio::test]
    async fn connections_go_to_the_thread_with_fewest_open() {
        let threads = ConnectionThreads::start(3).expect("threads");
        assert_eq!(threads.len(), 3);
        assert_eq!(
            served_on(&threads, 6).await,
            [
                "stipple-http-0",
                "stipple-http-1",
                "stipple-http-2",
                "stipple-http-0",
                "stipple-http-1",
                "stipple-http-2"
            ]
        );
    }

    #[tokio::test]
    async fn a_closed_connection_frees_its_place() {
        let threads = ConnectionThreads::start(2).expect("threads");
        // One connection served and ended on thread 0 leaves both threads empty.
        let (_client, server) = connection().await;
        let (done_tx, done_rx) = oneshot::channel();
        threads.spawn(server, move |_stream| async move {
            let _ = done_tx.send(());
        });
        done_rx.await.expect("served");
        let open = |i: usize| threads.threads[i].open.load(Ordering::Relaxed);
        for _ in 0..10_000 {
            if open(0) == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!((open(0), open(1)), (0, 0));
        // So the next goes to thread 0 again.
        assert_eq!(served_on(&threads, 1).await, ["stipple-http-0"]);
    }

    #[tokio::test]
    async fn dropping_the_threads_ends_their_connections() {
        let threads = ConnectionThreads::start(1).expect("threads");
        let (mut client, server) = connection().await;
        let (started_tx, started_rx) = oneshot::channel();
        threads.spawn(server, move |stream| async move {
            let _ = started_tx.send(());
            // Never ends by itself: holds the connection open.
            let _stream = stream;
            std::future::pending::<()>().await;
        });
        started_rx.await.expect("served");
        drop(threads);
        // The server's end of the connection was dropped: the client reads its close.
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut client, &mut buf),
        )
        .await
        .expect("the connection is closed at once");
        assert_eq!(read.expect("a clean close"), 0);
    }
}
