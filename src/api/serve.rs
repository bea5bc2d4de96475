//! The technician listener: accepts TCP connections (TLS on top when configured), gives
//! each a slot in the connection table ([`super::conns`]) or refuses it, and serves it
//! with hyper's HTTP/1.1 (WebSocket upgrades included) until it ends, times out, is
//! evicted, or the gateway shuts down.
//!
//! Every deadline is kept here rather than in hyper, so that "a head must arrive within
//! `header_timeout`" and "an idle keep-alive connection lives `idle_timeout`" are separate
//! rules: hyper's own header timer would also be the keep-alive timer.

use super::conns::{ConnHandle, Connections, Phase, Slot};
use super::events::{ListenEvents, Refusal};
use super::listen::Limits;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// Refusals answered at once (a canned 429/503, then a short lingering close); beyond
/// this many in flight, refused connections are just closed.
const REFUSING_MAX: usize = 64;
/// How long a refused connection may take to read its answer.
const REFUSE_LINGER: Duration = Duration::from_secs(1);
/// Pause after an accept error (e.g. out of file descriptors) before accepting again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A connection's byte stream: plain TCP or TLS.
pub enum Stream {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS.
    Tls(Box<TlsStream<TcpStream>>),
}

/// A [`Stream`] that reports its activity to the connection's slot (for the deadlines).
pub struct Tracked {
    inner: Stream,
    slot: Arc<Slot>,
}

impl Tracked {
    /// The stream, once hyper hands it over for a WebSocket session.
    pub fn into_inner(self) -> Stream {
        self.inner
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.inner {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if buf.filled().len() > before {
            this.slot.read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.inner {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.slot.wrote();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.inner {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.slot.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What every connection task shares.
struct Shared {
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    events: Arc<ListenEvents>,
    shutdown: CancellationToken,
}

/// Serve `router` on `listener` until `shutdown`, then let open requests finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    conns: Arc<Connections>,
    events: Arc<ListenEvents>,
    shutdown: CancellationToken,
) {
    let limits = conns.limits();
    let shared = Arc::new(Shared {
        router,
        tls: tls.map(TlsAcceptor::from),
        limits,
        events,
        shutdown,
    });
    let refusing = Arc::new(Semaphore::new(REFUSING_MAX));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                shared.events.accept_failed(&e);
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        // Live frames are small writes: without TCP_NODELAY, Nagle and the client's delayed
        // ACK hold one back for up to 40 ms whenever the previous one is unacknowledged.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match conns.admit(addr.ip()) {
            Ok(handle) => {
                tasks.spawn(connection(tcp, addr, handle, Arc::clone(&shared)));
            }
            Err(why) => {
                let limit = match why {
                    Refusal::PerAddress => limits.max_per_ip,
                    _ => limits.max_connections,
                };
                shared.events.refused(why, addr.ip(), limit);
                // Over TLS a plain-text answer would be noise: just close.
                if shared.tls.is_none() {
                    if let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() {
                        tokio::spawn(async move {
                            refuse(tcp, why, limit).await;
                            drop(permit);
                        });
                    }
                }
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// Answer a refused connection with its status and close it, reading (and dropping) what
/// it sent meanwhile so the close does not reset the answer away.
async fn refuse(mut tcp: TcpStream, why: Refusal, limit: usize) {
    let (status, code, message) = match why {
        Refusal::PerAddress => (
            "429 Too Many Requests",
            "too_many_connections",
            format!("too many connections from this address (limit {limit})"),
        ),
        _ => (
            "503 Service Unavailable",
            "busy",
            format!("the gateway is at its connection limit ({limit}); retry shortly"),
        ),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// Serve one connection until it ends, expires, is evicted, or shutdown drains it.
async fn connection(tcp: TcpStream, addr: SocketAddr, handle: ConnHandle, shared: Arc<Shared>) {
    let slot = Arc::clone(handle.slot());
    let l = shared.limits;
    let stream = match &shared.tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => {
            match tokio::time::timeout(l.header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                    shared
                        .events
                        .closed(super::events::Closed::Handshake, addr.ip());
                    return;
                }
                Err(_) => {
                    shared
                        .events
                        .closed(super::events::Closed::Handshake, addr.ip());
                    return;
                }
            }
        }
    };
    let io = TokioIo::new(Tracked {
        inner: stream,
        slot: Arc::clone(&slot),
    });
    let service = {
        let (slot, handle, router) = (Arc::clone(&slot), handle.clone(), shared.router.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            slot.enter(Phase::Busy);
            req.extensions_mut().insert(ConnectInfo(addr));
            req.extensions_mut().insert(handle.clone());
            let fut = router.clone().call(req);
            let slot = Arc::clone(&slot);
            async move {
                let resp = fut.await;
                slot.finished();
                resp
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = slot.deadline(&l);
        let wake = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = slot.evicted.notified() => {
                shared.events.closed(super::events::Closed::Evicted, addr.ip());
                break;
            }
            _ = wake => {
                if let Some(why) = slot.expired(&l) {
                    shared.events.closed(why, addr.ip());
                    break;
                }
            }
            _ = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
