//! One WebSocket client session: welcome, filters, backfill, client messages.
//!
//! Auth happened before the upgrade (see `api::live`). Live frames do not pass through the
//! session: the hub writes them into the client's [`Conn`]. The session reads the client's
//! messages, answers them through the same `Conn` (so replies and frames stay in order),
//! replays the journal for `from_seq`, and drains what the socket could not take at once.
//! Replay reads run on the blocking pool, a chunk bounded in frames and bytes at a time,
//! payloads copied as stored text (no `Value` tree).

use super::conn::{close_frame, text_frame, Conn, Mode, Stuck};
use super::hub::{ClientInfo, Hub, LiveFrame};
use super::tmd;
use crate::auth::{KeyInfo, Scope};
use crate::frame::Frame;
use crate::journal::Journal;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Largest client message; bigger ones close the connection with 1009.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Largest message read at all: up to here an oversize message is read whole before the
/// 1009 close (a clean close); beyond it the read fails at the frame header and the
/// connection may end in a reset.
pub const READ_LIMIT: usize = 1 << 20;
/// A client that takes nothing for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames per journal read during backfill.
const REPLAY_CHUNK: usize = 512;
/// Bytes of encoded frames per journal read during backfill (the frame that crosses it
/// is the chunk's last).
const REPLAY_BYTES: usize = 1 << 20;

/// What a session needs from the gateway.
#[derive(Clone)]
pub struct SessionCtx {
    /// Gateway id (for `welcome`).
    pub gateway: String,
    /// The journal (backfill, command audit).
    pub journal: Journal,
    /// The live hub.
    pub hub: Arc<Hub>,
    /// Fires on shutdown.
    pub shutdown: CancellationToken,
}

/// A client's subscription filters.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Only these device ids.
    pub devices: Option<Vec<String>>,
    /// Only these vehicle ids.
    pub vehicles: Option<Vec<String>>,
    /// Only these kinds.
    pub kinds: Option<Vec<String>>,
    /// Replay the journal from this seq first.
    pub from_seq: Option<u64>,
}

impl Filters {
    /// Whether a frame with these routing fields passes.
    pub fn matches(&self, device: &str, vehicle: Option<&str>, kind: &str) -> bool {
        let ok = |list: &Option<Vec<String>>, v: Option<&str>| {
            list.as_ref()
                .is_none_or(|l| v.is_some_and(|v| l.iter().any(|x| x == v)))
        };
        ok(&self.devices, Some(device))
            && ok(&self.vehicles, vehicle)
            && ok(&self.kinds, Some(kind))
    }
}

/// A client message: the TMD envelope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    data: Value,
}

/// A command for a device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The device it is for.
    pub device: String,
    /// What to write to it.
    #[serde(default)]
    pub payload: Value,
    /// A CAN frame to transmit (see `source::can::command`).
    #[serde(default)]
    pub can: Option<Value>,
}

/// A client message, parsed: the TMD envelope and the `data` its type expects.
#[derive(Debug)]
pub enum ClientMessage {
    /// `ping`: answered by a `pong` carrying the same data.
    Ping(Value),
    /// `subscribe`: the new filters (and replay start).
    Subscribe(Filters),
    /// `unsubscribe`.
    Unsubscribe,
    /// `broadcast` (scope `publish`): data relayed to every client.
    Broadcast(Value),
    /// `command` (scope `control`): a payload for one device (a `can` frame checked and
    /// moved into it).
    Command(Command),
}

/// Parses one client text message; the error is the text of the `error` reply.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, String> {
    let parsed: Incoming = serde_json::from_str(text).map_err(|e| format!("bad message: {e}"))?;
    let _ = parsed.message;
    match parsed.kind.as_str() {
        "ping" => Ok(ClientMessage::Ping(parsed.data)),
        "subscribe" => {
            let data = if parsed.data.is_null() {
                json!({})
            } else {
                parsed.data
            };
            serde_json::from_value(data)
                .map(ClientMessage::Subscribe)
                .map_err(|e| format!("bad subscribe: {e}"))
        }
        "unsubscribe" => Ok(ClientMessage::Unsubscribe),
        "broadcast" => Ok(ClientMessage::Broadcast(parsed.data)),
        "command" => {
            let mut cmd: Command =
                serde_json::from_value(parsed.data).map_err(|e| format!("bad command: {e}"))?;
            cmd.payload = crate::source::can::command::routed_payload(cmd.payload, cmd.can.take())
                .map_err(|e| format!("bad command: {e}"))?;
            Ok(ClientMessage::Command(cmd))
        }
        other => Err(format!("unknown message type {other:?}")),
    }
}

/// Why a session ended (for the log).
enum End {
    Closed,
    Shutdown,
    Close(u16, &'static str),
}

impl From<Stuck> for End {
    fn from(s: Stuck) -> Self {
        match s {
            Stuck::Gone => End::Closed,
            Stuck::NotReading => End::Close(1008, "client not reading"),
        }
    }
}

/// The read half of a client socket, as tungstenite's stream: reads come from the socket;
/// what the WebSocket layer writes by itself (pongs, the close reply) joins the `Conn`'s
/// queue, in order with everything else.
struct ReadSide {
    rd: OwnedReadHalf,
    conn: Arc<Conn>,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().rd).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.reply_nowait(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

type Socket = WebSocketStream<ReadSide>;
type ClientMsg = Option<Result<Message, WsError>>;

/// The session state between messages.
struct Session {
    ctx: SessionCtx,
    key: KeyInfo,
    id: u64,
    conn: Arc<Conn>,
}

/// Run a session on an upgraded connection (`read_buf`: bytes already read past the
/// handshake) until the client leaves or the gateway stops.
pub async fn run(io: TcpStream, read_buf: Bytes, ctx: SessionCtx, key: KeyInfo, info: ClientInfo) {
    let name = info.name.clone();
    let addr = info.address;
    let (rd, wr) = io.into_split();
    let conn = Arc::new(Conn::new(
        wr,
        Arc::clone(&ctx.hub.relay_latency),
        Arc::clone(&ctx.hub.delivery),
    ));
    // tungstenite zero-fills `read_buffer_size` bytes on every read attempt: 4 KiB, not its
    // 128 KiB default, keeps that cheap and small per client. Messages over MAX_MESSAGE are
    // read whole (up to READ_LIMIT) and refused with 1009, so the close is clean.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .max_message_size(Some(READ_LIMIT))
        .max_frame_size(Some(READ_LIMIT));
    let side = ReadSide {
        rd,
        conn: Arc::clone(&conn),
    };
    let mut socket =
        WebSocketStream::from_partially_read(side, read_buf.to_vec(), Role::Server, Some(config))
            .await;
    let id = ctx.hub.add_client(info, Arc::clone(&conn));
    let span = tracing::info_span!("ws", client = %name, %addr, id);
    async move {
        tracing::info!(key = %key.id, "client connected");
        let mut s = Session { ctx, key, id, conn };
        let end = s.serve(&mut socket, &name).await;
        let close = match &end {
            End::Close(code, why) => Some(close_frame(*code, why)),
            End::Shutdown => Some(close_frame(1001, "gateway shutting down")),
            End::Closed => None,
        };
        if close.is_none() {
            // tungstenite queues its reply to a client's close until the next read or flush.
            let _ = tokio::time::timeout(Duration::from_millis(100), socket.flush()).await;
        }
        s.conn.close(close, Duration::from_secs(1)).await;
        s.ctx.hub.remove_client(id);
        match end {
            End::Closed => tracing::info!("client disconnected"),
            End::Shutdown => tracing::info!("client closed for shutdown"),
            End::Close(code, why) => tracing::warn!(code, why, "client closed by gateway"),
        }
    }
    .instrument(span)
    .await
}

/// One backfill read from `next`: the encoded frames that pass `filters`, and the last seq
/// read (`None`: nothing stored at or after `next`). Blocking.
fn replay_read(
    journal: &Journal,
    next: u64,
    filters: &Filters,
) -> (Vec<(u64, Bytes)>, Option<u64>) {
    let mut wires = Vec::new();
    let (mut last, mut bytes) = (None, 0);
    journal.scan(next, REPLAY_CHUNK, |v| {
        if bytes >= REPLAY_BYTES {
            return false;
        }
        last = Some(v.seq);
        if filters.matches(v.device, v.vehicle, v.kind) {
            let wire = LiveFrame::encode(&v);
            bytes += wire.len();
            wires.push((v.seq, wire));
        }
        true
    });
    (wires, last)
}

impl Session {
    async fn serve(&mut self, socket: &mut Socket, name: &str) -> End {
        let welcome = tmd(
            "welcome",
            "welcome",
            json!({"gateway": self.ctx.gateway, "client": name, "last_seq": self.ctx.journal.last_seq(),
                   "scopes": self.key.scopes}),
        );
        // Live frames start right behind the welcome.
        if let Err(e) = self.reply_with(welcome, |st| st.mode = Mode::Live).await {
            return e;
        }
        let shutdown = self.ctx.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let conn = Arc::clone(&self.conn);
        loop {
            let replaying = matches!(conn.state().mode, Mode::Replay(_));
            let step = tokio::select! {
                biased;
                _ = &mut cancelled => Err(End::Shutdown),
                _ = conn.wake.notified() => self.on_wake().await,
                m = socket.next() => self.on_incoming(m).await,
                _ = std::future::ready(()), if replaying => self.replay_chunk().await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Queue a reply after `f` changed the delivery state (atomically) and wait until the
    /// socket took it.
    async fn reply_with(
        &self,
        text: String,
        f: impl FnOnce(&mut super::conn::State),
    ) -> Result<(), End> {
        Ok(self
            .conn
            .reply_with(text_frame(text), WRITE_TIMEOUT, f)
            .await?)
    }

    async fn reply(&self, text: String) -> Result<(), End> {
        self.reply_with(text, |_| {}).await
    }

    async fn error(&self, message: &str) -> Result<(), End> {
        self.reply(tmd("error", message, Value::Null)).await
    }

    /// The hub queued what the socket would not take, or asks for a close.
    async fn on_wake(&mut self) -> Result<(), End> {
        if let Some((code, why)) = self.conn.state().close {
            return Err(End::Close(code, why));
        }
        Ok(self.conn.drain(WRITE_TIMEOUT).await?)
    }

    /// Send one chunk of journal replay; switch to live when caught up.
    async fn replay_chunk(&mut self) -> Result<(), End> {
        let (next, filters) = {
            let st = self.conn.state();
            let Mode::Replay(next) = st.mode else {
                return Ok(());
            };
            (next, st.filters.clone())
        };
        // A frame counts in `last_seq` before it reaches the journal's readers or the hub,
        // so a read that finds nothing means nothing exists in `next..=issued`.
        let issued = self.ctx.journal.last_seq();
        let journal = self.ctx.journal.clone();
        let read = tokio::task::spawn_blocking(move || replay_read(&journal, next, &filters));
        let Ok((wires, last)) = read.await else {
            return Err(End::Close(1011, "journal read failed"));
        };
        let Some(last) = last else {
            // Caught up? Decide under the lock the hub delivers under: if nothing was
            // appended since `issued`, every later frame reaches this client live.
            let mut st = self.conn.state();
            if st.mode == Mode::Replay(next) {
                if self.ctx.journal.last_seq() == issued {
                    st.mode = Mode::Live;
                    st.last_sent = (next - 1).min(issued);
                } else {
                    st.mode = Mode::Replay(next.max(issued + 1));
                }
            }
            return Ok(());
        };
        for (seq, wire) in wires {
            self.conn.replayed(seq, wire, WRITE_TIMEOUT).await?;
        }
        let mut st = self.conn.state();
        if st.mode == Mode::Replay(next) {
            st.mode = Mode::Replay(last + 1);
            st.last_sent = last;
        }
        Ok(())
    }

    async fn on_incoming(&mut self, incoming: ClientMsg) -> Result<(), End> {
        let msg = match incoming {
            None => return Err(End::Closed),
            Some(Err(WsError::Capacity(e))) => {
                tracing::debug!(error = %e, "client message too big");
                return Err(End::Close(1009, "message too big (limit 64 KiB)"));
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read error");
                return Err(End::Closed);
            }
            Some(Ok(m)) => m,
        };
        if msg.len() > MAX_MESSAGE {
            return Err(End::Close(1009, "message too big (limit 64 KiB)"));
        }
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return Err(End::Closed),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
            Message::Binary(_) => {
                return self
                    .error("binary messages are not supported; send TMD JSON text")
                    .await
            }
        };
        let parsed = match parse_client_message(&text) {
            Ok(m) => m,
            Err(e) => return self.error(&e).await,
        };
        match parsed {
            ClientMessage::Ping(data) => self.reply(tmd("pong", "pong", data)).await,
            ClientMessage::Subscribe(filters) => {
                let shown = serde_json::to_value(&filters).unwrap_or(Value::Null);
                self.ctx
                    .hub
                    .update_client(self.id, |c| c.filters = shown.clone());
                let reply = tmd("subscribed", "subscribed", shown);
                // The new filters, the replay start and the reply in one step: the reply
                // comes before the first frame they select.
                self.reply_with(reply, move |st| {
                    st.complete = filters.from_seq.is_some();
                    st.mode = filters
                        .from_seq
                        .map_or(Mode::Live, |s| Mode::Replay(s.max(1)));
                    st.last_sent = 0;
                    st.filters = filters;
                })
                .await
            }
            ClientMessage::Unsubscribe => {
                let reply = tmd("subscribed", "unsubscribed", json!({"active": false}));
                self.reply_with(reply, |st| st.mode = Mode::Off).await
            }
            ClientMessage::Broadcast(data) => {
                if !self.key.allows(Scope::Publish) {
                    return self.error("broadcast needs the publish scope").await;
                }
                let msg = tmd(
                    "broadcast",
                    "broadcast",
                    json!({"from": self.key.name, "data": data}),
                );
                self.ctx.hub.broadcast(msg);
                Ok(())
            }
            ClientMessage::Command(cmd) => {
                if !self.key.allows(Scope::Control) {
                    return self.error("command needs the control scope").await;
                }
                let reply = self.command(cmd);
                self.reply(reply).await
            }
        }
    }

    /// Route a command to its device and audit it in the log and the journal.
    fn command(&self, cmd: Command) -> String {
        let routed = self.ctx.hub.route_command(&cmd.device, cmd.payload.clone());
        let mut audit = Frame::new(
            &self.ctx.gateway,
            "api:ws",
            &cmd.device,
            "command",
            json!({"by": self.key.name, "key_id": self.key.id, "payload": cmd.payload,
                   "routed": routed.is_ok(), "error": routed.as_ref().err()}),
        );
        audit.vehicle = None;
        let seq = self.ctx.journal.append(audit).ok();
        tracing::info!(device = %cmd.device, by = %self.key.name, ?seq, routed = routed.is_ok(), "command audited");
        match routed {
            Ok(()) => tmd(
                "command",
                "sent",
                json!({"device": cmd.device, "audit_seq": seq}),
            ),
            Err(e) => tmd("error", &e, json!({"device": cmd.device, "audit_seq": seq})),
        }
    }
}
