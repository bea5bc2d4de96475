//! A WebSocket client's socket as the relay sees it: a TCP stream, or, for a client on
//! HTTPS/WSS, the gateway's end of a local socket pair whose other end a task copies to and
//! from the TLS stream ([`tls_pair`]).
//!
//! The hub writes live frames straight into client sockets with non-blocking `writev`
//! (see [`super::conn`]); a TLS stream cannot be written that way, a socket pair can. The
//! pair keeps that path the same for both kinds of client, and its buffer is where a slow
//! TLS client's backlog builds up before the per-client queue takes over.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A client connection after the WebSocket upgrade.
pub enum Socket {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A socket pair end served by a TLS pump.
    Local(UnixStream),
}

impl Socket {
    /// Split into the session's read half and the [`super::conn::Conn`]'s write half.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Socket::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Socket::Local(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Local(r), WriteHalf::Local(w))
            }
        }
    }
}

/// The read half of a [`Socket`].
pub enum ReadHalf {
    /// TCP.
    Tcp(tcp::OwnedReadHalf),
    /// Socket pair.
    Local(unix::OwnedReadHalf),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Local(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The write half of a [`Socket`]: non-blocking vectored writes and readiness.
pub enum WriteHalf {
    /// TCP.
    Tcp(tcp::OwnedWriteHalf),
    /// Socket pair.
    Local(unix::OwnedWriteHalf),
}

impl From<tcp::OwnedWriteHalf> for WriteHalf {
    fn from(w: tcp::OwnedWriteHalf) -> Self {
        WriteHalf::Tcp(w)
    }
}

impl WriteHalf {
    /// Write what the socket takes now, without waiting.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(w) => w.try_write_vectored(bufs),
            WriteHalf::Local(w) => w.try_write_vectored(bufs),
        }
    }

    /// Wait until the socket may take more.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.writable().await,
            WriteHalf::Local(w) => w.writable().await,
        }
    }
}

/// How long the other direction may go on once one side of a TLS pump has ended.
const PUMP_LINGER: Duration = Duration::from_secs(2);

/// A socket pair for a TLS client: returns the relay's end and runs a task copying between
/// the other end and `tls` until either side closes.
pub fn tls_pair<S>(tls: S) -> io::Result<Socket>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ours, theirs) = UnixStream::pair()?;
    tokio::spawn(async move {
        let (mut tls_rd, mut tls_wr) = tokio::io::split(tls);
        let (mut pair_rd, mut pair_wr) = theirs.into_split();
        let up = async {
            let _ = tokio::io::copy(&mut tls_rd, &mut pair_wr).await;
            let _ = pair_wr.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut pair_rd, &mut tls_wr).await;
            let _ = tls_wr.shutdown().await;
        };
        tokio::pin!(up, down);
        // Whichever side ends first, the other gets a moment to finish (a close frame, the
        // TLS close_notify), not forever: a client that stays silent must not keep the task.
        tokio::select! {
            _ = &mut up => { let _ = tokio::time::timeout(PUMP_LINGER, down).await; }
            _ = &mut down => { let _ = tokio::time::timeout(PUMP_LINGER, up).await; }
        }
    });
    Ok(Socket::Local(ours))
}
