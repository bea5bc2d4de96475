//! Bench plumbing shared by the MQTT and WebSocket benches: a mosquitto started for the
//! run, and a blocking MQTT 3.1.1 QoS1 publisher that keeps a window of messages in flight
//! without ever reusing an unacknowledged packet id. Packets are encoded and decoded by
//! rumqttc's codec (`rumqttc::mqttbytes`), the gateway's own MQTT dependency.

use anyhow::{bail, Context};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Disconnect, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest MQTT packet the benches read (mosquitto's default limit is far above any
/// bench message; this only bounds a corrupt length).
pub const MAX_PACKET: usize = 1 << 20;

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A mosquitto started for a bench; stopped on drop.
pub struct Mosquitto(Child);

impl Mosquitto {
    /// Start `bin` with `conf` (listeners and limits) and wait until every port in `ports`
    /// accepts connections.
    pub fn start(bin: &Path, dir: &Path, conf: &str, ports: &[u16]) -> anyhow::Result<Mosquitto> {
        if !bin.is_file() {
            bail!(
                "mosquitto not found at {} (apt install mosquitto, or pass --mosquitto PATH)",
                bin.display()
            );
        }
        // As root, mosquitto would otherwise switch to the `mosquitto` user.
        let user = if unsafe { libc::getuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, format!("{user}log_dest none\n{conf}"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let broker = Mosquitto(child);
        for port in ports {
            let t0 = Instant::now();
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                if t0.elapsed() > Duration::from_secs(20) {
                    bail!("mosquitto did not listen on {port}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(broker)
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bytes of one MQTT packet.
pub fn encode(packet: Packet) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::with_capacity(packet.size());
    packet
        .write(&mut out, MAX_PACKET)
        .map_err(|e| anyhow::anyhow!("encoding MQTT packet: {e:?}"))?;
    Ok(out)
}

/// An MQTT 3.1.1 CONNECT (clean session) for `client_id` with `keep_alive_s` (0: off).
pub fn connect_packet(client_id: &str, keep_alive_s: u16) -> anyhow::Result<BytesMut> {
    let mut c = Connect::new(client_id);
    c.keep_alive = keep_alive_s;
    encode(Packet::Connect(c))
}

/// A SUBSCRIBE (packet id 1) to one `filter` at `qos`.
pub fn subscribe_packet(filter: &str, qos: QoS) -> anyhow::Result<BytesMut> {
    let mut s = Subscribe::new(filter, qos);
    s.pkid = 1;
    encode(Packet::Subscribe(s))
}

/// Take every whole MQTT packet off the front of `buf`, handing each to `each`; a partial
/// packet stays for the next read.
pub fn take_packets(buf: &mut BytesMut, mut each: impl FnMut(Packet)) -> anyhow::Result<()> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => each(p),
            Err(MqttError::InsufficientBytes(_)) => return Ok(()),
            Err(e) => bail!("malformed MQTT packet from the broker: {e:?}"),
        }
    }
}

/// A blocking MQTT 3.1.1 publisher (clean session, no keep-alive) for loading a broker.
///
/// rumqttc's client wraps packet ids at its in-flight limit and stalls on a collision
/// under sustained load; this one numbers 1..=65535 in order and never has more than
/// `window` (< 65535) unacknowledged, and the broker acks QoS1 in order, so no id is
/// reused while outstanding.
pub struct RawPublisher {
    out: BufWriter<TcpStream>,
    acked: Arc<AtomicU64>,
    /// Set when a PUBACK arrived out of order (its id was not the next one expected).
    disorder: Arc<AtomicBool>,
    sent: u64,
    window: u64,
    qos: QoS,
    pkt: BytesMut,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RawPublisher {
    /// Connect as `client_id` with at most `window` QoS1 messages unacknowledged.
    pub fn connect(port: u16, client_id: &str, window: u16) -> anyhow::Result<RawPublisher> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.write_all(&connect_packet(client_id, 0)?)?;
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 64];
        let connack = loop {
            let n = s.read(&mut chunk)?;
            anyhow::ensure!(n > 0, "broker closed before CONNACK");
            buf.extend_from_slice(&chunk[..n]);
            match Packet::read(&mut buf, MAX_PACKET) {
                Ok(p) => break p,
                Err(MqttError::InsufficientBytes(_)) => continue,
                Err(e) => bail!("bad CONNACK: {e:?}"),
            }
        };
        match connack {
            Packet::ConnAck(a) if a.code == rumqttc::mqttbytes::v4::ConnectReturnCode::Success => {}
            other => bail!("broker refused the publisher: {other:?}"),
        }
        let acked = Arc::new(AtomicU64::new(0));
        let disorder = Arc::new(AtomicBool::new(false));
        let mut rd = s.try_clone()?;
        let counter = Arc::clone(&acked);
        let out_of_order = Arc::clone(&disorder);
        let reader = std::thread::Builder::new()
            .name("bench-puback".into())
            .spawn(move || {
                let mut buf = BytesMut::with_capacity(8 << 10);
                let mut chunk = [0u8; 4096];
                loop {
                    match rd.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    let mut acks = 0;
                    let mut other = None;
                    let base = counter.load(Relaxed);
                    let read = take_packets(&mut buf, |p| match p {
                        Packet::PubAck(a) => {
                            // The broker acks in order: the k-th ack is for packet id k.
                            if u64::from(a.pkid) != (base + acks) % 65_535 + 1 {
                                out_of_order.store(true, Relaxed);
                            }
                            acks += 1;
                        }
                        p => other = Some(p),
                    });
                    counter.fetch_add(acks, Relaxed);
                    if let Err(e) = read {
                        eprintln!("publisher: {e:#}");
                        return;
                    }
                    if let Some(p) = other {
                        eprintln!("publisher: unexpected packet from broker: {p:?}");
                        return;
                    }
                }
            })?;
        Ok(RawPublisher {
            out: BufWriter::with_capacity(64 << 10, s),
            acked,
            disorder,
            sent: 0,
            window: u64::from(window.clamp(1, 65_000)),
            qos: QoS::AtLeastOnce,
            pkt: BytesMut::with_capacity(1024),
            reader: Some(reader),
        })
    }

    /// Publish at QoS 0 (`qos` 0: no packet id, no PUBACK, no window) or QoS 1 (any other).
    pub fn with_qos(mut self, qos: u8) -> RawPublisher {
        self.qos = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self
    }

    /// Publish one message; at QoS1, wait while the window is full.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let qos1 = self.qos == QoS::AtLeastOnce;
        if qos1 && self.sent - self.acked.load(Relaxed) >= self.window {
            self.out.flush()?;
            while self.sent - self.acked.load(Relaxed) >= self.window {
                if self.reader.as_ref().is_some_and(|r| r.is_finished()) {
                    bail!("broker closed the publisher's connection");
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let mut p = Publish::new(topic, self.qos, payload);
        if qos1 {
            p.pkid = (self.sent % 65_535 + 1) as u16;
            // `sent` counts QoS1 messages only: the ones a PUBACK answers.
            self.sent += 1;
        }
        self.pkt.clear();
        p.write(&mut self.pkt)
            .map_err(|e| anyhow::anyhow!("encoding PUBLISH: {e:?}"))?;
        Ok(self.out.write_all(&self.pkt)?)
    }

    /// QoS1 messages published so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// QoS1 messages the broker acknowledged so far: the first `acked()` published, as
    /// long as [`RawPublisher::acks_in_order`] holds.
    pub fn acked(&self) -> u64 {
        self.acked.load(Relaxed)
    }

    /// Whether every PUBACK so far answered the oldest unacknowledged message.
    pub fn acks_in_order(&self) -> bool {
        !self.disorder.load(Relaxed)
    }

    /// Whether the connection is still up (the PUBACK reader has not seen it end).
    pub fn connected(&self) -> bool {
        self.reader.as_ref().is_some_and(|r| !r.is_finished())
    }

    /// Write out what [`RawPublisher::publish`] buffered.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.out.flush()?)
    }

    /// Flush, and wait (up to `limit`) until every QoS1 message published is acknowledged.
    pub fn wait_acked(&mut self, limit: Duration) -> anyhow::Result<()> {
        self.out.flush()?;
        let t0 = Instant::now();
        while self.acked.load(Relaxed) < self.sent {
            if t0.elapsed() > limit {
                bail!(
                    "broker acknowledged {} of {} messages",
                    self.acked.load(Relaxed),
                    self.sent
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
}

impl Drop for RawPublisher {
    fn drop(&mut self) {
        self.pkt.clear();
        if Disconnect.write(&mut self.pkt).is_ok() {
            let _ = self.out.write_all(&self.pkt);
        }
        let _ = self.out.flush();
        let _ = self.out.get_ref().shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_whole_packets_and_keeps_the_rest() -> anyhow::Result<()> {
        let mut p = Publish::new("a/b", QoS::AtLeastOnce, vec![b'x'; 200]); // 2-byte length
        p.pkid = 7;
        let qos1 = encode(Packet::Publish(p.clone()))?;
        let ack = encode(Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(7)))?;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&qos1);
        buf.extend_from_slice(&ack);
        buf.extend_from_slice(&qos1[..5]);
        let mut seen = Vec::new();
        take_packets(&mut buf, |p| seen.push(p))?;
        assert_eq!(
            seen,
            vec![
                Packet::Publish(p),
                Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(7))
            ]
        );
        assert_eq!(
            &buf[..],
            &qos1[..5],
            "the partial packet waits for more bytes"
        );
        let mut bad = BytesMut::from(&[0xF0u8, 0][..]); // packet type 15 does not exist
        assert!(take_packets(&mut bad, |_| {}).is_err());
        Ok(())
    }

    /// The publisher's bytes as a broker reads them: QoS1 with ids 1, 2, then QoS0 without.
    #[test]
    fn publishes_at_either_qos() -> anyhow::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let broker = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let (mut s, _) = listener.accept()?;
            s.write_all(&[0x20, 2, 0, 0])?; // CONNACK accepted
            let mut seen = Vec::new();
            s.read_to_end(&mut seen)?;
            Ok(seen)
        });
        let mut p = RawPublisher::connect(port, "t", 10)?;
        p.publish("a/b", b"one")?;
        p.publish("a/b", b"two")?;
        let mut p = p.with_qos(0);
        p.publish("a/b", b"three")?;
        p.wait_acked(Duration::from_millis(100))
            .err()
            .context("two QoS1 messages unacked")?;
        drop(p);
        let bytes = broker
            .join()
            .map_err(|_| anyhow::anyhow!("broker thread"))??;
        let mut buf = BytesMut::from(&bytes[..]);
        let mut got = Vec::new();
        take_packets(&mut buf, |p| got.push(p))?;
        assert!(matches!(&got[0], Packet::Connect(c) if c.client_id == "t" && c.clean_session));
        let publish = |payload: &[u8], qos, pkid| {
            let mut p = Publish::new("a/b", qos, payload);
            p.pkid = pkid;
            Packet::Publish(p)
        };
        assert_eq!(
            got[1..],
            [
                publish(b"one", QoS::AtLeastOnce, 1),
                publish(b"two", QoS::AtLeastOnce, 2),
                publish(b"three", QoS::AtMostOnce, 0),
                Packet::Disconnect,
            ]
        );
        Ok(())
    }
}
