//! A TCP listener whose connections a handler can reset, so the mock can drop a request
//! with no HTTP answer at all, exactly as a crashed or overloaded server would.
//!
//! Each accepted stream carries a shared flag. The handler reaches the flag through
//! axum's `ConnectInfo`, sets it, and the stream then fails every read and write and
//! resets the socket (`SO_LINGER` 0), so hyper never manages to write the response.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Wraps a [`TcpListener`]; its streams can be reset through a [`Connection`].
#[derive(Debug)]
pub(crate) struct DroppingListener {
    inner: TcpListener,
}

impl DroppingListener {
    pub(crate) fn new(inner: TcpListener) -> Self {
        DroppingListener { inner }
    }
}

impl Listener for DroppingListener {
    type Io = DroppableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        // Small request/answer pairs: do not wait for Nagle. Failing to set it only costs speed.
        let _ = stream.set_nodelay(true);
        let stream = DroppableStream {
            inner: stream,
            dropped: Arc::new(AtomicBool::new(false)),
        };
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that fails from the moment its connection is told to drop.
#[derive(Debug)]
pub(crate) struct DroppableStream {
    inner: TcpStream,
    dropped: Arc<AtomicBool>,
}

impl DroppableStream {
    /// The error to return once dropped; also arranges for a reset instead of a clean close.
    fn check(&self) -> io::Result<()> {
        if self.dropped.load(Ordering::Acquire) {
            // A reset rather than FIN, so the client sees "connection reset".
            let _ = self.inner.set_zero_linger();
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped by fault injection",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for DroppableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for DroppableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The handler's grip on the connection its request arrived on.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    dropped: Arc<AtomicBool>,
}

impl Connection {
    /// Makes the connection fail instead of answering.
    pub(crate) fn drop_without_answer(&self) {
        self.dropped.store(true, Ordering::Release);
    }
}

impl Connected<IncomingStream<'_, DroppingListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, DroppingListener>) -> Self {
        Connection {
            dropped: Arc::clone(&stream.io().dropped),
        }
    }
}
