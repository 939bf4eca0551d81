//! The accept loop under [`crate::Gateway::serve_router`]: hyper's HTTP/1 connections with a
//! header-read timeout, a connection cap, a shutdown deadline, and lingering closes.
//!
//! `axum::serve` has none of the limits: a client that sends half a header holds its connection
//! (and a task) for ever, any number of them may, and graceful shutdown waits for all of them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// The limits the accept loop enforces (from [`crate::Options`]).
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) shutdown_timeout: Duration,
    /// How long a closed connection keeps reading (and discarding) what the peer still sends.
    pub(crate) linger: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets requests
/// in flight finish for up to `shutdown_timeout`, and closes the connections still open.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper starts this timer whenever the connection waits for a request head: it bounds a
    // slow header and an idle keep-alive connection alike.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Finished connections leave the set as they go, so it holds open ones only.
        while connections.try_join_next().is_some() {}
        // Past the cap, new connections wait in the listen backlog until one closes.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        connections.spawn(connection(
            http.clone(),
            tcp,
            permit,
            limits.linger,
            router.clone(),
            stopped.clone(),
        ));
    }
    drop(listener);
    stop.send_replace(true);
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "closing the connections still open after the shutdown deadline"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// One HTTP/1 connection (and, after an upgrade, its WebSocket's transport).
async fn connection(
    http: hyper::server::conn::http1::Builder,
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    linger: Duration,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) {
    // Small frames go out at once: with Nagle's algorithm a second small write (a state frame,
    // then the RPC reply) waits for the peer's delayed ACK, about 40 ms.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let io = TokioIo::new(Lingering::new(tcp, permit, linger));
    let conn = http
        .serve_connection(io, TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(conn);
    let stop = async move {
        // The guard `wait_for` returns must not live across an await.
        let _ = stopped.wait_for(|s| *s).await.map(|_| ());
    };
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop => {
            // Finish the request in flight, take no other.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// An accept error: a connection that failed before we saw it is nothing; anything else (out of
/// file descriptors, say) is logged and retried after a pause, as `axum::serve` does.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A TCP stream that closes gracefully: dropped before the peer finished sending (a WebSocket
/// message over the size limit, a request cut off), it sends FIN and reads what the peer still
/// sends for a while, so that the kernel does not answer the unread bytes with a reset that
/// destroys the response or close frame just written. It also holds the connection's place under
/// the cap until it is really closed.
struct Lingering {
    tcp: Option<TcpStream>,
    permit: Option<OwnedSemaphorePermit>,
    linger: Duration,
    /// The peer's EOF was read: nothing can be left unread.
    eof: bool,
}

impl Lingering {
    fn new(tcp: TcpStream, permit: OwnedSemaphorePermit, linger: Duration) -> Self {
        Lingering {
            tcp: Some(tcp),
            permit: Some(permit),
            linger,
            eof: false,
        }
    }

    fn tcp(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.tcp.as_mut() {
            Some(tcp) => Ok(Pin::new(tcp)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let polled = match this.tcp() {
            Ok(tcp) => tcp.poll_read(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Poll::Ready(Ok(())) = polled
            && asked
            && buf.filled().len() == before
        {
            this.eof = true;
        }
        polled
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().tcp() {
            Ok(tcp) => tcp.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().tcp() {
            Ok(tcp) => tcp.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(|t| t.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().tcp() {
            Ok(tcp) => tcp.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().tcp() {
            Ok(tcp) => tcp.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut tcp) = self.tcp.take() else {
            return;
        };
        if self.eof {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let permit = self.permit.take();
        let linger = self.linger;
        runtime.spawn(async move {
            let _permit = permit;
            // FIN: the peer reads everything written so far, then EOF.
            let _ = tcp.shutdown().await;
            let _ = tokio::time::timeout(linger, async {
                let mut discard = [0u8; 8192];
                while let Ok(n) = tcp.read(&mut discard).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
}
