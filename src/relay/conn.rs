//! One client's socket, shared by the hub and the client's session.
//!
//! The hub writes each live frame (encoded once as a WebSocket frame for every client)
//! straight into every client socket that takes it, the way a broker's event loop does: no
//! per-client task is woken per frame. What a socket does not take waits in the client's
//! queue, and the session task (woken once) drains it as the socket becomes writable. The
//! session's own replies go through the same queue, so every byte leaves in order.
//!
//! The queue is bounded: a client that falls [`CLIENT_QUEUE`] frames behind loses its
//! oldest queued frames and is told `lagged` at the gap (or, if it asked for `from_seq`,
//! switches back to journal replay so it still gets every frame).

use super::latency::LatencyHistogram;
use super::socket::WriteHalf;
use super::ws::Filters;
use crate::sync::lock;
use bytes::Bytes;
use serde_json::json;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};

/// Frames a client may have queued before it loses the oldest (the per-client bound).
pub const CLIENT_QUEUE: usize = 2_048;
/// Lag events within [`LAG_WINDOW`] that mark a client as persistently slow (close 1008).
const LAG_LIMIT: usize = 3;
const LAG_WINDOW: Duration = Duration::from_secs(30);
/// Bytes of control replies (e.g. pongs to WebSocket pings) a client that does not read
/// may have queued; beyond this they are dropped.
const REPLY_BYTES_MAX: usize = 1 << 20;
/// Most queued messages handed to one `writev`.
const WRITEV_MAX: usize = 64;

/// A server WebSocket text frame (unmasked), ready for the socket.
pub fn text_frame(text: impl Into<Bytes>) -> Bytes {
    encode(Frame::message(text.into(), OpCode::Data(Data::Text), true))
}

/// A WebSocket close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &'static str) -> Bytes {
    encode(Frame::close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    })))
}

fn encode(frame: Frame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out.into()
}

/// Which frames the hub sends to this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// None (the client unsubscribed).
    Off,
    /// Live frames as they come.
    Live,
    /// The session is replaying the journal from this seq; the hub leaves the client alone.
    Replay(u64),
}

/// What a queued message is: decides whether it may be dropped when the client lags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Frame(u64),
    Broadcast,
    Reply,
}

struct Out {
    wire: Bytes,
    kind: Kind,
    appended: Option<Instant>,
}

/// The client's delivery state, under the connection's lock.
pub struct State {
    /// What the hub sends.
    pub mode: Mode,
    /// The client's filters.
    pub filters: Filters,
    /// Highest seq queued for the client (nothing at or below it is queued again).
    pub last_sent: u64,
    /// The client asked for every frame (`from_seq`): recover lag from the journal.
    pub complete: bool,
    queue: VecDeque<Out>,
    /// Bytes of the queue's head already written.
    head_done: usize,
    /// Frames and broadcasts in the queue (the droppable part).
    droppable: usize,
    /// Bytes ever queued / written or dropped: a reply is out once `done` passes its end.
    queued: u64,
    done: u64,
    lag_events: Vec<Instant>,
    /// A close the hub asks the session to perform.
    pub close: Option<(u16, &'static str)>,
    /// No more messages are accepted (the session is ending).
    closed: bool,
    /// The socket failed.
    broken: bool,
    /// Append times of the frames just written (reused).
    appended: Vec<Instant>,
}

/// Why a wait for the socket ended early.
#[derive(Debug, PartialEq, Eq)]
pub enum Stuck {
    /// The socket failed or the client went away.
    Gone,
    /// The client took nothing for the whole timeout.
    NotReading,
}

/// Frames sent to and dropped for every client of the gateway, connected now or gone: the
/// Prometheus counters, which must never fall when a client leaves.
#[derive(Debug, Default)]
pub struct DeliveryTotals {
    /// Frames written to client sockets.
    pub sent: AtomicU64,
    /// Frames dropped because their client lagged.
    pub dropped: AtomicU64,
}

/// One client's socket and delivery state.
pub struct Conn {
    io: WriteHalf,
    state: Mutex<State>,
    /// Wakes the session: a backlog to drain, a mode change or a close request.
    pub wake: Notify,
    /// Frames written to the socket.
    pub sent: AtomicU64,
    /// Frames dropped because the client lagged.
    pub dropped: AtomicU64,
    latency: Arc<LatencyHistogram>,
    totals: Arc<DeliveryTotals>,
}

impl Conn {
    /// A connection writing to `io`, with no filters and not yet live (the session turns it
    /// live together with its welcome, so no frame can go out before it), counting its
    /// deliveries in `latency` and `totals` too (shared by all clients).
    pub fn new(io: WriteHalf, latency: Arc<LatencyHistogram>, totals: Arc<DeliveryTotals>) -> Self {
        Conn {
            io,
            state: Mutex::new(State {
                mode: Mode::Off,
                filters: Filters::default(),
                last_sent: 0,
                complete: false,
                queue: VecDeque::new(),
                head_done: 0,
                droppable: 0,
                queued: 0,
                done: 0,
                lag_events: Vec::new(),
                close: None,
                closed: false,
                broken: false,
                appended: Vec::new(),
            }),
            wake: Notify::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            latency,
            totals,
        }
    }

    /// The delivery state, locked.
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Hub: queue the frames of a burst this client wants and write what the socket takes.
    pub fn deliver(&self, burst: &[Arc<super::hub::LiveFrame>]) {
        let mut st = self.state();
        if st.closed || st.mode != Mode::Live {
            return;
        }
        let mut any = false;
        for f in burst {
            if f.seq > st.last_sent && st.filters.matches(&f.device, f.vehicle.as_deref(), &f.kind)
            {
                st.push(f.wire.clone(), Kind::Frame(f.seq), f.appended);
                st.last_sent = f.seq;
                any = true;
            }
        }
        if any {
            self.settle(&mut st);
        }
    }

    /// Hub: queue a client broadcast (sent whatever the client's mode).
    pub fn broadcast(&self, wire: &Bytes) {
        let mut st = self.state();
        if !st.closed {
            self.enqueue(&mut st, wire.clone(), Kind::Broadcast);
        }
    }

    /// Queue a reply without waiting for it (the WebSocket layer's pongs and close
    /// replies); dropped if the client already has too much unread.
    pub fn reply_nowait(&self, wire: Bytes) {
        let mut st = self.state();
        if st.closed || st.queued - st.done > REPLY_BYTES_MAX as u64 {
            return;
        }
        self.enqueue(&mut st, wire, Kind::Reply);
    }

    /// Session: queue a reply (after `f` changed the state, under the same lock, so no live
    /// frame slips between) and wait until it is written.
    pub async fn reply_with(
        &self,
        wire: Bytes,
        timeout: Duration,
        f: impl FnOnce(&mut State),
    ) -> Result<(), Stuck> {
        let end = {
            let mut st = self.state();
            f(&mut st);
            if st.closed {
                return Err(Stuck::Gone);
            }
            self.enqueue(&mut st, wire, Kind::Reply)
        };
        self.written_up_to(end, timeout).await
    }

    /// Session: queue a replayed journal frame and wait until it is written.
    pub async fn replayed(&self, seq: u64, wire: Bytes, timeout: Duration) -> Result<(), Stuck> {
        let end = self.enqueue(&mut self.state(), wire, Kind::Frame(seq));
        self.written_up_to(end, timeout).await
    }

    /// Session: write everything queued so far (waiting for the socket as needed).
    pub async fn drain(&self, timeout: Duration) -> Result<(), Stuck> {
        let end = self.state().queued;
        self.written_up_to(end, timeout).await
    }

    /// Session: accept nothing more, queue the close frame and give it `timeout` to go out.
    pub async fn close(&self, wire: Option<Bytes>, timeout: Duration) {
        let end = {
            let mut st = self.state();
            if let Some(w) = wire.filter(|_| !st.closed) {
                self.enqueue(&mut st, w, Kind::Reply);
            }
            st.closed = true;
            st.queued
        };
        let _ = tokio::time::timeout(timeout, self.written_up_to(end, timeout)).await;
    }

    /// Wait until `end` bytes have been written, giving up after `timeout` without progress.
    async fn written_up_to(&self, end: u64, timeout: Duration) -> Result<(), Stuck> {
        loop {
            {
                let mut st = self.state();
                if st.broken {
                    return Err(Stuck::Gone);
                }
                if st.done >= end {
                    return Ok(());
                }
                self.settle(&mut st);
                if st.done >= end {
                    return Ok(());
                }
            }
            match tokio::time::timeout(timeout, self.io.writable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    self.state().broken = true;
                    return Err(Stuck::Gone);
                }
                Err(_) => return Err(Stuck::NotReading),
            }
        }
    }

    /// Queue one message, write what the socket takes; the byte count to wait for.
    fn enqueue(&self, st: &mut State, wire: Bytes, kind: Kind) -> u64 {
        st.push(wire, kind, None);
        self.settle(st);
        st.queued
    }

    /// Write what the socket takes; on a backlog keep the queue bounded and wake the session.
    fn settle(&self, st: &mut State) {
        match self.write(st) {
            Ok(true) => {}
            Ok(false) => {
                if st.droppable > CLIENT_QUEUE {
                    self.shed(st);
                }
                self.wake.notify_one();
            }
            Err(e) => {
                tracing::debug!(error = %e, "client socket write failed");
                st.broken = true;
                st.closed = true;
                self.wake.notify_one();
            }
        }
    }

    /// Write queued messages until the queue is empty (true) or the socket is full (false).
    fn write(&self, st: &mut State) -> io::Result<bool> {
        while !st.queue.is_empty() {
            let n = {
                let mut slices = [IoSlice::new(&[]); WRITEV_MAX];
                let mut k = 0;
                for (i, o) in st.queue.iter().take(WRITEV_MAX).enumerate() {
                    let skip = if i == 0 { st.head_done } else { 0 };
                    slices[i] = IoSlice::new(&o.wire[skip..]);
                    k = i + 1;
                }
                match self.io.try_write_vectored(&slices[..k]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            };
            self.advance(st, n);
        }
        Ok(true)
    }

    /// Account `n` written bytes: pop what is complete, count frames, time them.
    fn advance(&self, st: &mut State, mut n: usize) {
        st.done += n as u64;
        let mut frames = 0;
        while n > 0 {
            let Some(head) = st.queue.front() else { break };
            let rest = head.wire.len() - st.head_done;
            if n < rest {
                st.head_done += n;
                break;
            }
            n -= rest;
            st.head_done = 0;
            if let Some(o) = st.queue.pop_front() {
                if o.kind != Kind::Reply {
                    st.droppable -= 1;
                }
                if let Kind::Frame(_) = o.kind {
                    frames += 1;
                    st.appended.extend(o.appended);
                }
            }
        }
        if frames > 0 {
            self.sent.fetch_add(frames, Relaxed);
            self.totals.sent.fetch_add(frames, Relaxed);
            self.latency.observe(Instant::now(), st.appended.drain(..));
        }
    }

    /// The queue overflowed: a `from_seq` client goes back to the journal from its oldest
    /// unsent frame; any other loses its oldest unsent frames down to half the bound and is
    /// told `lagged` where the gap is (closed with 1008 if it keeps lagging).
    fn shed(&self, st: &mut State) {
        let complete = st.complete;
        let keep = if complete { 0 } else { CLIENT_QUEUE / 2 };
        let mut to_drop = st.droppable - keep;
        let mut kept = VecDeque::with_capacity(st.queue.len());
        let (mut frames, mut first, mut gap) = (0u64, None, None);
        for (i, o) in std::mem::take(&mut st.queue).into_iter().enumerate() {
            let started = i == 0 && st.head_done > 0;
            let frame = matches!(o.kind, Kind::Frame(_));
            if !started && to_drop > 0 && (frame || (!complete && o.kind == Kind::Broadcast)) {
                to_drop -= 1;
                st.droppable -= 1;
                st.done += o.wire.len() as u64;
                if let Kind::Frame(seq) = o.kind {
                    frames += 1;
                    first.get_or_insert(seq);
                }
                gap.get_or_insert(kept.len());
                continue;
            }
            kept.push_back(o);
        }
        st.queue = kept;
        let now = Instant::now();
        st.lag_events
            .retain(|t| now.duration_since(*t) < LAG_WINDOW);
        st.lag_events.push(now);
        if complete {
            if let Some(seq) = first {
                st.mode = Mode::Replay(seq);
                st.last_sent = seq - 1;
            }
            return;
        }
        self.dropped.fetch_add(frames, Relaxed);
        self.totals.dropped.fetch_add(frames, Relaxed);
        tracing::warn!(dropped = frames, "client lagged; dropped its oldest frames");
        let text = super::tmd(
            "lagged",
            "client too slow; oldest frames dropped",
            json!({"dropped": frames}),
        );
        let wire = text_frame(text);
        st.queued += wire.len() as u64;
        st.queue.insert(
            gap.unwrap_or(0),
            Out {
                wire,
                kind: Kind::Reply,
                appended: None,
            },
        );
        if st.lag_events.len() >= LAG_LIMIT {
            st.close = Some((1008, "client persistently too slow"));
        }
    }
}

impl State {
    fn push(&mut self, wire: Bytes, kind: Kind, appended: Option<Instant>) {
        self.queued += wire.len() as u64;
        if kind != Kind::Reply {
            self.droppable += 1;
        }
        self.queue.push_back(Out {
            wire,
            kind,
            appended,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::hub::LiveFrame;
    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpSocket, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// A `Conn` on a real loopback socket with a small send buffer, and its peer (which
    /// reads nothing until the test says so).
    async fn pair() -> (TcpStream, Conn) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let s = TcpSocket::new_v4().expect("socket");
        s.set_send_buffer_size(4096).expect("sndbuf");
        let ours = s
            .connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (peer, _) = l.accept().await.expect("accept");
        let (_rd, wr) = ours.into_split();
        let conn = Conn::new(wr.into(), Arc::default(), Arc::default());
        conn.state().mode = Mode::Live;
        (peer, conn)
    }

    fn frame(seq: u64) -> Arc<LiveFrame> {
        let f =
            crate::frame::Frame::new("gw", "sim", "dev1", "gps", json!({"pad": "x".repeat(200)}));
        let record = f.encode();
        let view = crate::frame::Frame::view(seq, &record).expect("view");
        Arc::new(LiveFrame::new(&view, None))
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_loses_its_oldest_frames_and_is_told_where() {
        let (peer, conn) = pair().await;
        for seq in 1..=10_000 {
            conn.deliver(&[frame(seq)]);
        }
        let dropped = conn.dropped.load(Relaxed);
        {
            let st = conn.state();
            assert!(
                st.droppable <= CLIENT_QUEUE,
                "queue {} frames",
                st.droppable
            );
            assert_eq!(st.close, Some((1008, "client persistently too slow")));
        }
        assert!(
            dropped > 3 * CLIENT_QUEUE as u64 / 2,
            "dropped only {dropped}"
        );
        // The peer now reads: every frame it gets is in order, and every gap in the seqs
        // comes right after a `lagged` that counts it exactly.
        let reader = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(peer, Role::Client, None).await;
            let (mut last, mut gap, mut got, mut told) = (0u64, None, 0u64, 0u64);
            while let Some(Ok(Message::Text(t))) = ws.next().await {
                let m: serde_json::Value = serde_json::from_str(&t).expect("json");
                match m["type"].as_str() {
                    Some("frame") => {
                        let seq = m["data"]["seq"].as_u64().expect("seq");
                        let expected = last + 1 + gap.take().unwrap_or(0);
                        assert_eq!(seq, expected, "after {last}");
                        last = seq;
                        got += 1;
                    }
                    Some("lagged") => {
                        let n = m["data"]["dropped"].as_u64().expect("dropped");
                        gap = Some(gap.unwrap_or(0) + n);
                        told += n;
                    }
                    other => panic!("unexpected message {other:?}"),
                }
            }
            (last, got, told)
        });
        conn.close(None, Duration::from_secs(5)).await;
        drop(conn);
        let (last, got, told) = reader.await.expect("reader");
        assert_eq!(last, 10_000);
        assert_eq!(told, dropped);
        assert_eq!(got + dropped, 10_000);
    }

    #[tokio::test]
    async fn a_from_seq_client_that_lags_goes_back_to_the_journal() {
        let (_peer, conn) = pair().await;
        conn.state().complete = true;
        let mut seq = 0;
        while conn.state().mode == Mode::Live {
            seq += 1;
            assert!(seq < 100_000, "never shed");
            conn.deliver(&[frame(seq)]);
        }
        let st = conn.state();
        let Mode::Replay(from) = st.mode else {
            panic!("mode {:?}", st.mode)
        };
        assert_eq!(st.last_sent, from - 1);
        // Only a frame the socket had started on stays queued.
        assert!(st.droppable <= 1, "{} frames still queued", st.droppable);
        assert!(st.close.is_none());
        assert_eq!(conn.dropped.load(Relaxed), 0);
        // Frames after the switch are left to the replay.
        drop(st);
        let before = conn.state().droppable;
        conn.deliver(&[frame(seq + 1)]);
        assert_eq!(conn.state().droppable, before);
    }
}
