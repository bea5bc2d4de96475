//! One WebSocket client session: welcome, filters, backfill, live frames, client messages.
//!
//! Auth happened before the upgrade (see `api::ws_upgrade`). The session owns its position
//! in the hub's ring; when it falls behind it either recovers from the journal (clients
//! that asked for `from_seq` want every frame) or drops the oldest and says `lagged`.

use super::hub::{ClientCounters, ClientInfo, Hub, LiveFrame};
use super::tmd;
use crate::auth::{KeyInfo, Scope};
use crate::frame::Frame;
use crate::journal::Journal;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Largest client message; bigger ones close the connection with 1009.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Largest message read at all: up to here an oversize message is read whole before the
/// 1009 close (a clean close); beyond it the read fails at the frame header and the
/// connection may end in a reset.
pub const READ_LIMIT: usize = 1 << 20;
/// A client that cannot take a message for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lag events within [`LAG_WINDOW`] that mark a client as persistently slow (close 1008).
const LAG_LIMIT: usize = 3;
const LAG_WINDOW: Duration = Duration::from_secs(30);
/// Frames per journal read during backfill.
const REPLAY_CHUNK: usize = 512;

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
struct Command {
    device: String,
    payload: Value,
}

/// Why a session ended (for the log).
enum End {
    Closed,
    Shutdown,
    Close(u16, &'static str),
}

/// The session state between messages.
struct Session {
    ctx: SessionCtx,
    key: KeyInfo,
    id: u64,
    counters: Arc<ClientCounters>,
    filters: Filters,
    active: bool,
    /// Next journal seq to replay, while backfilling.
    replay: Option<u64>,
    /// Whether this client asked for completeness (recover lag from the journal).
    complete: bool,
    last_sent: u64,
    lag_events: Vec<Instant>,
    /// Append times of the burst being written (for the relay latency histogram).
    appended: Vec<Instant>,
}

/// Run a session until the client leaves or the gateway stops.
pub async fn run(socket: WebSocket, ctx: SessionCtx, key: KeyInfo, info: ClientInfo) {
    let name = info.name.clone();
    let addr = info.address;
    let (id, counters) = ctx.hub.add_client(info);
    let span = tracing::info_span!("ws", client = %name, %addr, id);
    let _g = span.enter();
    tracing::info!(key = %key.id, "client connected");
    let mut s = Session {
        ctx,
        key,
        id,
        counters,
        filters: Filters::default(),
        active: true,
        replay: None,
        complete: false,
        last_sent: 0,
        lag_events: Vec::new(),
        appended: Vec::new(),
    };
    let end = s.serve(socket, &name).await;
    s.ctx.hub.remove_client(id);
    match end {
        End::Closed => tracing::info!("client disconnected"),
        End::Shutdown => tracing::info!("client closed for shutdown"),
        End::Close(code, why) => tracing::warn!(code, why, "client closed by gateway"),
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;
type ClientMsg = Option<Result<Message, axum::Error>>;

/// Read client messages in their own task, woken only when the socket has data. Polling
/// the stream from the session loop instead cost a read attempt (and tungstenite's
/// read-buffer zeroing) for every live frame sent. The channel is small so a client that
/// floods messages is held back by TCP, not buffered here; `None` on the channel or a
/// closed channel means the client is gone.
fn spawn_reader(
    mut stream: futures_util::stream::SplitStream<WebSocket>,
) -> (
    tokio::sync::mpsc::Receiver<ClientMsg>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<ClientMsg>(4);
    let task = tokio::spawn(async move {
        loop {
            let m = stream.next().await;
            let last = !matches!(m, Some(Ok(_)));
            if tx.send(m).await.is_err() || last {
                return;
            }
        }
    });
    (rx, task)
}

/// Most live frames written to one client before a flush.
const FEED_MAX: usize = 256;

/// Write one message and flush.
async fn send(sink: &mut Sink, text: Utf8Bytes) -> Result<(), End> {
    written(tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Text(text))).await)
}

fn written<T, E>(r: Result<Result<T, E>, tokio::time::error::Elapsed>) -> Result<T, End> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(End::Closed),
        Err(_) => Err(End::Close(1008, "client not reading")),
    }
}

impl Session {
    async fn serve(&mut self, socket: WebSocket, name: &str) -> End {
        let (mut sink, stream) = socket.split();
        let welcome = tmd(
            "welcome",
            "welcome",
            json!({"gateway": self.ctx.gateway, "client": name, "last_seq": self.ctx.journal.last_seq(),
                   "scopes": self.key.scopes}),
        );
        if let Err(e) = send(&mut sink, welcome.into()).await {
            return e;
        }
        let mut live = self.ctx.hub.subscribe();
        let mut msgs = self.ctx.hub.messages();
        let shutdown = self.ctx.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let (mut incoming, reader) = spawn_reader(stream);
        let end = loop {
            let step = tokio::select! {
                biased;
                _ = &mut cancelled => Err(End::Shutdown),
                m = incoming.recv() => self.on_incoming(m.flatten(), &mut sink, &mut live).await,
                m = msgs.recv() => match m {
                    Ok(text) => send(&mut sink, text).await,
                    Err(_) => Ok(()),
                },
                _ = std::future::ready(()), if self.replay.is_some() => self.replay_chunk(&mut sink).await,
                f = live.recv(), if self.active && self.replay.is_none() => self.on_live(f, &mut sink, &mut live).await,
            };
            if let Err(end) = step {
                break end;
            }
        };
        reader.abort();
        let close = |code: u16, reason: &'static str| {
            Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }))
        };
        match &end {
            End::Close(code, why) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close(*code, why)))
                    .await;
            }
            End::Shutdown => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    sink.send(close(1001, "gateway shutting down")),
                )
                .await;
            }
            End::Closed => {}
        }
        end
    }

    fn error(&self, message: &str) -> Utf8Bytes {
        tmd("error", message, Value::Null).into()
    }

    /// Write a live frame and every frame already waiting behind it (up to [`FEED_MAX`])
    /// with one flush: one syscall per burst instead of one per frame. The write timeout
    /// covers the whole burst (one timer per burst, not per frame).
    async fn on_live(
        &mut self,
        first: Result<Arc<LiveFrame>, RecvError>,
        sink: &mut Sink,
        live: &mut tokio::sync::broadcast::Receiver<Arc<LiveFrame>>,
    ) -> Result<(), End> {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut item = first;
        let mut fed = 0u64;
        // Ends with what stopped the burst early: the channel lagged or closed.
        let burst = async {
            let mut ended = None;
            for _ in 0..FEED_MAX {
                match item {
                    Ok(f) => {
                        if f.seq > self.last_sent
                            && self
                                .filters
                                .matches(&f.device, f.vehicle.as_deref(), &f.kind)
                        {
                            sink.feed(Message::Text(f.text.clone())).await?;
                            self.last_sent = f.seq;
                            self.appended.extend(f.appended);
                            fed += 1;
                        }
                    }
                    Err(e) => {
                        ended = Some(e);
                        break;
                    }
                }
                item = match live.try_recv() {
                    Ok(f) => Ok(f),
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(_) => break,
                };
            }
            if fed > 0 {
                sink.flush().await?;
            }
            Ok::<_, axum::Error>(ended)
        };
        let ended = written(tokio::time::timeout(WRITE_TIMEOUT, burst).await)?;
        self.counters.sent.fetch_add(fed, Relaxed);
        let hist = &self.ctx.hub.relay_latency;
        hist.observe(Instant::now(), self.appended.drain(..));
        match ended {
            Some(RecvError::Lagged(n)) => self.on_lagged(n, sink).await,
            Some(RecvError::Closed) => Err(End::Shutdown),
            None => Ok(()),
        }
    }

    /// The live channel dropped `n` frames for this client: resume from the journal if it
    /// asked for completeness, else tell it (and close it if it keeps lagging).
    async fn on_lagged(&mut self, n: u64, sink: &mut Sink) -> Result<(), End> {
        let now = Instant::now();
        self.lag_events
            .retain(|t| now.duration_since(*t) < LAG_WINDOW);
        self.lag_events.push(now);
        if self.complete {
            // Completeness wanted: pick up again from the journal.
            self.replay = Some(self.last_sent + 1);
            return Ok(());
        }
        self.counters.dropped.fetch_add(n, Relaxed);
        tracing::warn!(dropped = n, "client lagged; dropped its oldest frames");
        if self.lag_events.len() >= LAG_LIMIT {
            return Err(End::Close(1008, "client persistently too slow"));
        }
        send(
            sink,
            tmd(
                "lagged",
                "client too slow; oldest frames dropped",
                json!({"dropped": n}),
            )
            .into(),
        )
        .await
    }

    /// Send one chunk of journal replay; switch to live when caught up.
    async fn replay_chunk(&mut self, sink: &mut Sink) -> Result<(), End> {
        let Some(next) = self.replay else {
            return Ok(());
        };
        let frames: Vec<Frame> = self.ctx.journal.range(next, REPLAY_CHUNK);
        let Some(last) = frames.last().map(|f| f.seq) else {
            self.replay = None;
            return Ok(());
        };
        let mut sent = 0;
        for f in frames.iter().filter(|f| {
            self.filters
                .matches(&f.device, f.vehicle.as_deref(), &f.kind)
        }) {
            send(sink, LiveFrame::new(f, None).text).await?;
            sent += 1;
        }
        self.last_sent = last;
        self.replay = Some(last + 1);
        self.counters.sent.fetch_add(sent, Relaxed);
        Ok(())
    }

    async fn on_incoming(
        &mut self,
        incoming: ClientMsg,
        sink: &mut Sink,
        live: &mut tokio::sync::broadcast::Receiver<Arc<LiveFrame>>,
    ) -> Result<(), End> {
        let msg = match incoming {
            None => return Err(End::Closed),
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("Space limit exceeded")
                    || text.contains("too long")
                    || text.contains("too big")
                {
                    return Err(End::Close(1009, "message too big (limit 64 KiB)"));
                }
                tracing::debug!(error = %text, "websocket read error");
                return Err(End::Closed);
            }
            Some(Ok(m)) => m,
        };
        let size = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        if size > MAX_MESSAGE {
            return Err(End::Close(1009, "message too big (limit 64 KiB)"));
        }
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return Err(End::Closed),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
            Message::Binary(_) => {
                return send(
                    sink,
                    self.error("binary messages are not supported; send TMD JSON text"),
                )
                .await
            }
        };
        let parsed: Incoming = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                return send(sink, self.error(&format!("bad message: {e}"))).await;
            }
        };
        let _ = parsed.message;
        match parsed.kind.as_str() {
            "ping" => send(sink, tmd("pong", "pong", parsed.data).into()).await,
            "subscribe" => {
                let data = if parsed.data.is_null() {
                    json!({})
                } else {
                    parsed.data
                };
                let filters: Filters = match serde_json::from_value(data) {
                    Ok(f) => f,
                    Err(e) => return send(sink, self.error(&format!("bad subscribe: {e}"))).await,
                };
                // A fresh ring position first, so the replay below and live overlap.
                *live = self.ctx.hub.subscribe();
                self.complete = filters.from_seq.is_some();
                self.last_sent = 0;
                self.replay = filters.from_seq.map(|s| s.max(1));
                self.active = true;
                let shown = serde_json::to_value(&filters).unwrap_or(Value::Null);
                self.ctx
                    .hub
                    .update_client(self.id, |c| c.filters = shown.clone());
                self.filters = filters;
                send(sink, tmd("subscribed", "subscribed", shown).into()).await
            }
            "unsubscribe" => {
                self.active = false;
                self.replay = None;
                send(
                    sink,
                    tmd("subscribed", "unsubscribed", json!({"active": false})).into(),
                )
                .await
            }
            "broadcast" => {
                if !self.key.allows(Scope::Publish) {
                    return send(sink, self.error("broadcast needs the publish scope")).await;
                }
                let msg = tmd(
                    "broadcast",
                    "broadcast",
                    json!({"from": self.key.name, "data": parsed.data}),
                );
                self.ctx.hub.broadcast(msg);
                Ok(())
            }
            "command" => {
                if !self.key.allows(Scope::Control) {
                    return send(sink, self.error("command needs the control scope")).await;
                }
                let cmd: Command = match serde_json::from_value(parsed.data) {
                    Ok(c) => c,
                    Err(e) => return send(sink, self.error(&format!("bad command: {e}"))).await,
                };
                let reply = self.command(cmd);
                send(sink, reply.into()).await
            }
            other => send(sink, self.error(&format!("unknown message type {other:?}"))).await,
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
