//! The ways to a bus, behind one [`Link`]: SLCAN on a serial port or TCP, SocketCAN, a
//! candump replay.
//!
//! Each open link yields [`Event`]s — frames, and input worth counting (bad SLCAN lines,
//! error frames, adapter status flags) — and transmits frames where the interface can.
//! Opening an SLCAN adapter sends `C`, the bit rate (`S0`–`S8`) and `L` (listen-only) or,
//! for a `writable` bus, `O`; while open, the adapter's status flags are asked for (`F`)
//! every few seconds so overruns and bus errors are counted (adapters without `F` just
//! refuse it). Reopening after a failure is the source task's job, with the serial
//! sources' backoff.

use super::candump::Replay;
use super::config::{CanConfig, Interface};
use super::slcan::{self, Line, SlcanCodec};
use super::socketcan::SocketLink;
use super::CanFrame;
use futures_util::StreamExt;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::FramedRead;

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an SLCAN adapter is asked for its status flags.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// Read buffer of an SLCAN link (a burst of 4,000 frames is ~100 KB).
const READ_BUFFER: usize = 64 * 1024;
/// Status flags that mean frames were lost: queue full (0, 1), data overrun (3).
const FLAGS_OVERRUN: u8 = 0x0B;
/// Status flags of bus trouble: error warning (2), error passive (5), bus error (7).
const FLAGS_BUS_ERROR: u8 = 0xA4;

/// Something a link delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A frame, with the time the device recorded it (unix ms), if it says.
    Frame(CanFrame, Option<i64>),
    /// Input counted under `reason` and skipped (`bad_slcan`, `bus_error`, ...).
    Invalid(&'static str, String),
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// An SLCAN adapter's line stream and its command channel.
pub struct SlcanLink {
    reader: FramedRead<Reader, SlcanCodec>,
    writer: Writer,
    status: tokio::time::Interval,
}

/// An open way to a bus.
pub enum Link {
    /// SLCAN over a serial port or TCP.
    Slcan(SlcanLink),
    /// A SocketCAN interface.
    Socket(SocketLink),
    /// A log file being replayed.
    Replay(Replay),
}

impl Link {
    /// Opens the bus `cfg` names (and, for SLCAN, opens the adapter's channel).
    pub async fn open(cfg: &CanConfig) -> io::Result<Link> {
        let missing =
            |k: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("no {k} configured"));
        match cfg.interface {
            Interface::Slcan => {
                let path = cfg.path.as_deref().ok_or_else(|| missing("path"))?;
                let stream = crate::source::port::open(path, cfg.baud())?;
                let (r, w) = tokio::io::split(stream);
                Link::slcan(Box::new(r), Box::new(w), cfg).await
            }
            Interface::SlcanTcp => {
                let address = cfg.address.as_deref().ok_or_else(|| missing("address"))?;
                let tcp =
                    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
                        .await
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
                        })??;
                tcp.set_nodelay(true)?;
                let (r, w) = tcp.into_split();
                Link::slcan(Box::new(r), Box::new(w), cfg).await
            }
            Interface::Socketcan => {
                let ifname = cfg.ifname.as_deref().ok_or_else(|| missing("ifname"))?;
                Ok(Link::Socket(SocketLink::open(ifname)?))
            }
            Interface::Candump => {
                let path = cfg.path.as_deref().ok_or_else(|| missing("path"))?;
                Ok(Link::Replay(
                    Replay::open(path, cfg.speed(), cfg.repeat.unwrap_or(false)).await?,
                ))
            }
        }
    }

    async fn slcan(reader: Reader, mut writer: Writer, cfg: &CanConfig) -> io::Result<Link> {
        writer
            .write_all(&slcan::open_commands(cfg.bitrate_command(), cfg.writable))
            .await?;
        writer.flush().await?;
        let start = tokio::time::Instant::now() + STATUS_EVERY;
        let mut status = tokio::time::interval_at(start, STATUS_EVERY);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Link::Slcan(SlcanLink {
            reader: FramedRead::with_capacity(reader, SlcanCodec::default(), READ_BUFFER),
            writer,
            status,
        }))
    }

    /// Whether the end of input means "done" (a replay) rather than "device lost".
    pub fn is_replay(&self) -> bool {
        matches!(self, Link::Replay(_))
    }

    /// The next event; `None` at the end of input.
    pub async fn next(&mut self) -> Option<io::Result<Event>> {
        match self {
            Link::Slcan(l) => l.next().await,
            Link::Socket(s) => Some(s.read().await.map(|f| match f {
                Ok(frame) => Event::Frame(frame, None),
                Err(reason) => Event::Invalid(reason, "error frame from the controller".into()),
            })),
            Link::Replay(r) => r.next().await.map(|item| {
                item.map(|logged| match logged {
                    Ok(l) => match l.frame {
                        Ok(frame) => Event::Frame(frame, Some(l.ts_ms)),
                        Err(reason) => {
                            Event::Invalid(reason, format!("error frame logged at {}", l.ts))
                        }
                    },
                    Err((reason, detail)) => Event::Invalid(reason, detail),
                })
            }),
        }
    }

    /// Transmits a frame on the bus.
    pub async fn send(&mut self, frame: &CanFrame) -> io::Result<()> {
        match self {
            Link::Slcan(l) => {
                l.writer.write_all(&slcan::encode(frame)).await?;
                l.writer.flush().await
            }
            Link::Socket(s) => s.write(frame).await,
            Link::Replay(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a replay cannot transmit",
            )),
        }
    }
}

impl SlcanLink {
    async fn next(&mut self) -> Option<io::Result<Event>> {
        loop {
            let item = tokio::select! {
                item = self.reader.next() => item,
                _ = self.status.tick() => {
                    if let Err(e) = self.writer.write_all(b"F\r").await {
                        return Some(Err(e));
                    }
                    continue;
                }
            };
            return match item? {
                Err(e) => Some(Err(e)),
                Ok(Ok(Line::Frame(f, _adapter_ms))) => Some(Ok(Event::Frame(f, None))),
                Ok(Ok(Line::Status(flags))) => match status_event(flags) {
                    Some(ev) => Some(Ok(ev)),
                    None => continue,
                },
                Ok(Ok(Line::Nack)) => {
                    tracing::debug!("adapter refused a command");
                    continue;
                }
                Ok(Ok(Line::Ack | Line::Info | Line::Command)) => continue,
                Ok(Err(bad)) => Some(Ok(Event::Invalid(bad.reason(), bad.to_string()))),
            };
        }
    }
}

/// The event an `F` reply's flags call for, if any.
fn status_event(flags: u8) -> Option<Event> {
    if flags & FLAGS_OVERRUN != 0 {
        Some(Event::Invalid(
            "overrun",
            format!("adapter status flags {flags:#04x}: frames lost"),
        ))
    } else if flags & FLAGS_BUS_ERROR != 0 {
        Some(Event::Invalid(
            "bus_error",
            format!("adapter status flags {flags:#04x}: bus errors"),
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_flags_become_counted_events() {
        assert_eq!(status_event(0x00), None);
        assert_eq!(
            status_event(0x40),
            None,
            "arbitration lost is normal bus life"
        );
        assert!(matches!(
            status_event(0x08),
            Some(Event::Invalid("overrun", _))
        ));
        assert!(matches!(
            status_event(0x01),
            Some(Event::Invalid("overrun", _))
        ));
        assert!(matches!(
            status_event(0x80),
            Some(Event::Invalid("bus_error", _))
        ));
        assert!(matches!(
            status_event(0x20),
            Some(Event::Invalid("bus_error", _))
        ));
    }

    /// The adapter side of a TCP link gets the open commands and a transmitted frame; what
    /// it sends comes back as events, and its close ends the input.
    #[tokio::test]
    async fn tcp_link_opens_the_adapter_and_polls_status() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let cfg: CanConfig = toml::from_str(&format!(
            "name = \"t\"\ninterface = \"slcan-tcp\"\naddress = \"{addr}\"\nbitrate = 250000\nwritable = true\n"
        ))
        .expect("config");
        let (link, accepted) = tokio::join!(Link::open(&cfg), server.accept());
        let (mut link, (mut peer, _)) = (link.expect("open"), accepted.expect("accept"));
        let mut got = vec![0u8; 64];
        let n = peer.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"C\rS5\rO\r");
        link.send(&CanFrame::new(0x123, false, &[0xAB]).expect("f"))
            .await
            .expect("send");
        let n = peer.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"t1231AB\r");
        peer.write_all(b"F08\rt1000\rjunk\r").await.expect("write");
        assert!(matches!(
            link.next().await,
            Some(Ok(Event::Invalid("overrun", _)))
        ));
        assert_eq!(
            link.next().await.expect("frame").expect("io"),
            Event::Frame(CanFrame::new(0x100, false, &[]).expect("f"), None)
        );
        assert!(matches!(
            link.next().await,
            Some(Ok(Event::Invalid("bad_slcan", _)))
        ));
        drop(peer);
        let end = link.next().await;
        assert!(end.is_none(), "peer closed: end of input");
    }
}
