//! A loopback TCP proxy between the gateway and a server, which can sever every connection
//! at once and reads the bytes as they pass: the gateway's own MQTT PUBACKs (which messages
//! it reported durable) and the MongoDB inserts it has in flight (to kill a server mid-batch).
//! It forwards bytes unchanged; the inspectors only read copies.

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::QoS;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Reads the two directions of one proxied connection.
pub trait Inspect: Send + 'static {
    /// Bytes from the client (the gateway) towards the server.
    fn up(&mut self, bytes: &[u8]);
    /// Bytes from the server towards the client.
    fn down(&mut self, bytes: &[u8]);
}

/// Makes one inspector per connection.
pub type Inspector = Arc<dyn Fn() -> Box<dyn Inspect> + Send + Sync>;

/// A running proxy from a loopback port to `target`.
pub struct Proxy {
    port: u16,
    target: String,
    inspector: Option<Inspector>,
    stop: Option<CancellationToken>,
    rt: tokio::runtime::Handle,
}

impl Proxy {
    /// Listen on a free loopback port, forwarding to `target` (`host:port`).
    pub fn start(
        rt: &tokio::runtime::Handle,
        target: &str,
        inspector: Option<Inspector>,
    ) -> anyhow::Result<Proxy> {
        let mut p = Proxy {
            port: fieldgate_bench::broker::free_port()?,
            target: target.to_string(),
            inspector,
            stop: None,
            rt: rt.clone(),
        };
        p.resume()?;
        Ok(p)
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Close the listener and sever every connection (both sides see it end).
    pub fn sever(&mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
    }

    /// Listen again on the same port after [`Proxy::sever`].
    pub fn resume(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.stop.is_none(), "proxy already running");
        let port = self.port;
        let listener = crate::rig::until(
            std::time::Duration::from_secs(30),
            "the proxy's port",
            || Ok(std::net::TcpListener::bind(("127.0.0.1", port)).ok()),
        )?;
        listener.set_nonblocking(true)?;
        let stop = CancellationToken::new();
        let (target, inspector, token) =
            (self.target.clone(), self.inspector.clone(), stop.clone());
        self.rt.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else { continue };
                let inspect = inspector.as_ref().map(|make| make());
                tokio::spawn(pipe(inbound, target.clone(), inspect, token.clone()));
            }
        });
        self.stop = Some(stop);
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.sever();
    }
}

/// Forward one connection until either side closes or the proxy is severed.
async fn pipe(
    inbound: TcpStream,
    target: String,
    inspect: Option<Box<dyn Inspect>>,
    stop: CancellationToken,
) {
    let Ok(outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let inspect = inspect.map(|i| Arc::new(Mutex::new(i)));
    let (mut ci, mut co) = inbound.into_split();
    let (mut si, mut so) = outbound.into_split();
    let up_inspect = inspect.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match ci.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if let Some(i) = &up_inspect {
                crate::rig::locked(i).up(&buf[..n]);
            }
            if so.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match si.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if let Some(i) = &inspect {
                crate::rig::locked(i).down(&buf[..n]);
            }
            if co.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either direction ending ends both: the sockets drop, each peer sees the close.
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = up => {}
        _ = down => {}
    }
}

/// Which messages the gateway acknowledged (PUBACK) to its broker, by the `n` in their
/// payload, over all its connections.
#[derive(Default)]
pub struct Acks {
    acked: Mutex<HashSet<u64>>,
    count: AtomicU64,
}

impl Acks {
    /// PUBACKs the gateway sent so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The `n`s of every message the gateway acknowledged so far.
    pub fn acked(&self) -> HashSet<u64> {
        crate::rig::locked(&self.acked).clone()
    }

    /// An inspector feeding this log (one per connection).
    pub fn inspector(self: &Arc<Self>) -> Inspector {
        let log = Arc::clone(self);
        Arc::new(move || {
            Box::new(MqttAcks {
                log: Arc::clone(&log),
                up: BytesMut::new(),
                down: BytesMut::new(),
                inflight: HashMap::new(),
            })
        })
    }
}

/// Pairs the broker's QoS1 PUBLISHes (packet id → message `n`) with the gateway's PUBACKs.
struct MqttAcks {
    log: Arc<Acks>,
    up: BytesMut,
    down: BytesMut,
    inflight: HashMap<u16, u64>,
}

impl Inspect for MqttAcks {
    fn up(&mut self, bytes: &[u8]) {
        self.up.extend_from_slice(bytes);
        while let Ok(p) = Packet::read(&mut self.up, fieldgate_bench::broker::MAX_PACKET) {
            if let Packet::PubAck(a) = p {
                if let Some(n) = self.inflight.remove(&a.pkid) {
                    crate::rig::locked(&self.log.acked).insert(n);
                }
                self.log.count.fetch_add(1, Relaxed);
            }
        }
    }

    fn down(&mut self, bytes: &[u8]) {
        self.down.extend_from_slice(bytes);
        while let Ok(p) = Packet::read(&mut self.down, fieldgate_bench::broker::MAX_PACKET) {
            if let Packet::Publish(p) = p {
                if p.qos == QoS::AtLeastOnce {
                    if let Some(n) = crate::load::message_n(&p.payload) {
                        self.inflight.insert(p.pkid, n);
                    }
                }
            }
        }
    }
}

/// MongoDB `insert` commands a gateway has sent and not yet had answered.
#[derive(Default)]
pub struct Inserts {
    open: Mutex<HashSet<(u64, i32)>>,
    sent: AtomicU64,
    next_conn: AtomicU64,
}

impl Inserts {
    /// Inserts awaiting their reply right now.
    pub fn in_flight(&self) -> usize {
        crate::rig::locked(&self.open).len()
    }

    /// Inserts sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// An inspector feeding this tally (one per connection).
    pub fn inspector(self: &Arc<Self>) -> Inspector {
        let log = Arc::clone(self);
        Arc::new(move || {
            let conn = log.next_conn.fetch_add(1, Relaxed);
            Box::new(MongoInserts {
                log: Arc::clone(&log),
                conn,
                up: BytesMut::new(),
                down: BytesMut::new(),
            })
        })
    }
}

/// Reads MongoDB wire messages: a request whose first command key is `insert` is open until
/// a reply answers its request id.
struct MongoInserts {
    log: Arc<Inserts>,
    conn: u64,
    up: BytesMut,
    down: BytesMut,
}

/// OP_MSG, the opcode of every command since MongoDB 3.6.
const OP_MSG: i32 = 2013;

/// One whole wire message off the front of `buf`: (request id, response to, op code, body).
fn wire_message(buf: &mut BytesMut) -> Option<(i32, i32, i32, BytesMut)> {
    if buf.len() < 16 {
        return None;
    }
    let len = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len = usize::try_from(len).ok().filter(|l| *l >= 16)?;
    if buf.len() < len {
        return None;
    }
    let mut msg = buf.split_to(len);
    msg.advance(4);
    let request = msg.get_i32_le();
    let response_to = msg.get_i32_le();
    let op = msg.get_i32_le();
    Some((request, response_to, op, msg))
}

/// The first key of an OP_MSG body's command document (section kind 0), if it has one.
fn command_name(body: &[u8]) -> Option<&str> {
    // flagBits (4), section kind (1) = 0, document length (4), element type (1), key.
    let rest = body.get(4..)?;
    if *rest.first()? != 0 {
        return None;
    }
    let key = rest.get(6..)?;
    let end = key.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&key[..end]).ok()
}

impl Inspect for MongoInserts {
    fn up(&mut self, bytes: &[u8]) {
        self.up.extend_from_slice(bytes);
        while let Some((request, _, op, body)) = wire_message(&mut self.up) {
            if op == OP_MSG && command_name(&body) == Some("insert") {
                crate::rig::locked(&self.log.open).insert((self.conn, request));
                self.log.sent.fetch_add(1, Relaxed);
            }
        }
    }

    fn down(&mut self, bytes: &[u8]) {
        self.down.extend_from_slice(bytes);
        while let Some((_, response_to, _, _)) = wire_message(&mut self.down) {
            crate::rig::locked(&self.log.open).remove(&(self.conn, response_to));
        }
    }
}

impl Drop for MongoInserts {
    fn drop(&mut self) {
        // A severed connection answers nothing more.
        crate::rig::locked(&self.log.open).retain(|(c, _)| *c != self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_command_of_an_op_msg() {
        let cmd = bson::doc! {"insert": "frames", "ordered": false};
        let mut doc = Vec::new();
        cmd.to_writer(&mut doc).expect("bson");
        let mut body = vec![0, 0, 0, 0, 0];
        body.extend_from_slice(&doc);
        let mut msg = BytesMut::new();
        msg.extend_from_slice(&(16 + body.len() as i32).to_le_bytes());
        msg.extend_from_slice(&7i32.to_le_bytes());
        msg.extend_from_slice(&0i32.to_le_bytes());
        msg.extend_from_slice(&OP_MSG.to_le_bytes());
        msg.extend_from_slice(&body);
        let whole = msg.clone();
        let mut partial = BytesMut::from(&whole[..20]);
        assert!(wire_message(&mut partial).is_none(), "waits for the rest");
        let (request, _, op, body) = wire_message(&mut msg).expect("one message");
        assert_eq!((request, op), (7, OP_MSG));
        assert_eq!(command_name(&body), Some("insert"));
        assert!(msg.is_empty());

        let log = Arc::new(Inserts::default());
        let mut i = (log.inspector())();
        i.up(&whole[..10]);
        assert_eq!(log.in_flight(), 0);
        i.up(&whole[10..]);
        assert_eq!((log.in_flight(), log.sent()), (1, 1));
        let mut reply = BytesMut::new();
        reply.extend_from_slice(&16i32.to_le_bytes());
        reply.extend_from_slice(&9i32.to_le_bytes());
        reply.extend_from_slice(&7i32.to_le_bytes());
        reply.extend_from_slice(&OP_MSG.to_le_bytes());
        i.down(&reply);
        assert_eq!(log.in_flight(), 0, "the reply to request 7 closes it");
    }
}
