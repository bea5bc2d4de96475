//! Bench plumbing shared by the MQTT and WebSocket benches: a mosquitto started for the
//! run, and a minimal blocking MQTT 3.1.1 QoS1 publisher that keeps a window of messages
//! in flight without ever reusing an unacknowledged packet id.

use anyhow::{bail, Context};
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// MQTT "remaining length" varint.
fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// An MQTT length-prefixed string.
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A whole MQTT packet: fixed-header byte `head`, remaining length, `body`.
pub fn packet(head: u8, body: &[u8]) -> Vec<u8> {
    let mut pkt = vec![head];
    put_len(&mut pkt, body.len());
    pkt.extend_from_slice(body);
    pkt
}

/// An MQTT 3.1.1 CONNECT (clean session) for `client_id` with `keep_alive_s` (0: off).
pub fn connect_packet(client_id: &str, keep_alive_s: u16) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0x02]); // level 4, clean session
    body.extend_from_slice(&keep_alive_s.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    packet(0x10, &body)
}

/// Take every whole MQTT packet off the front of `buf`, handing `each` its fixed-header
/// byte and body; a partial packet stays for the next read.
pub fn take_packets(buf: &mut Vec<u8>, mut each: impl FnMut(u8, &[u8])) {
    let mut at = 0;
    loop {
        // Fixed header, then the remaining-length varint (at most 4 bytes).
        let (mut len, mut shift, mut i, mut done) = (0usize, 0u32, at + 1, false);
        while let Some(&byte) = buf.get(i).filter(|_| shift < 28) {
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            i += 1;
            if byte & 0x80 == 0 {
                done = true;
                break;
            }
        }
        let Some(body) = buf.get(i..i + len).filter(|_| done) else {
            break;
        };
        each(buf[at], body);
        at = i + len;
    }
    buf.drain(..at);
}

/// A PUBLISH's packet id (QoS > 0) and payload; `None` for other packets or a malformed one.
pub fn publish_parts(head: u8, body: &[u8]) -> Option<(Option<u16>, &[u8])> {
    if head >> 4 != 3 {
        return None;
    }
    let tlen = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let rest = body.get(2 + tlen..)?;
    if head & 0x06 == 0 {
        return Some((None, rest));
    }
    let id = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    Some((Some(id), rest.get(2..)?))
}

/// A blocking MQTT 3.1.1 publisher (clean session, no keep-alive) for loading a broker.
///
/// rumqttc's publisher wraps packet ids at its in-flight limit and stalls on a collision
/// under sustained load; this one numbers 1..=65535 in order and never has more than
/// `window` (< 65535) unacknowledged, and the broker acks QoS1 in order, so no id is
/// reused while outstanding.
pub struct RawPublisher {
    out: BufWriter<TcpStream>,
    acked: Arc<AtomicU64>,
    sent: u64,
    window: u64,
    qos1: bool,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RawPublisher {
    /// Connect as `client_id` with at most `window` QoS1 messages unacknowledged.
    pub fn connect(port: u16, client_id: &str, window: u16) -> anyhow::Result<RawPublisher> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.write_all(&connect_packet(client_id, 0))?;
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack)?;
        if connack[0] != 0x20 || connack[3] != 0 {
            bail!("broker refused the publisher: CONNACK {connack:?}");
        }
        let acked = Arc::new(AtomicU64::new(0));
        let mut rd = s.try_clone()?;
        let counter = Arc::clone(&acked);
        let reader = std::thread::Builder::new()
            .name("bench-puback".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                let mut have = 0usize;
                loop {
                    match rd.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    // PUBACKs are 4 bytes each: 0x40 0x02 id id.
                    let whole = have / 4 * 4;
                    if buf[..whole].chunks(4).any(|c| c[0] != 0x40) {
                        eprintln!("publisher: unexpected packet from broker");
                        return;
                    }
                    counter.fetch_add((whole / 4) as u64, Relaxed);
                    buf.copy_within(whole..have, 0);
                    have -= whole;
                }
            })?;
        Ok(RawPublisher {
            out: BufWriter::with_capacity(64 << 10, s),
            acked,
            sent: 0,
            window: u64::from(window.clamp(1, 65_000)),
            qos1: true,
            reader: Some(reader),
        })
    }

    /// Publish at QoS 0 (`qos` 0: no packet id, no PUBACK, no window) or QoS 1 (any other).
    pub fn with_qos(mut self, qos: u8) -> RawPublisher {
        self.qos1 = qos != 0;
        self
    }

    /// Publish one message; at QoS1, wait while the window is full.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        if self.qos1 && self.sent - self.acked.load(Relaxed) >= self.window {
            self.out.flush()?;
            while self.sent - self.acked.load(Relaxed) >= self.window {
                if self.reader.as_ref().is_some_and(|r| r.is_finished()) {
                    bail!("broker closed the publisher's connection");
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let id_len = if self.qos1 { 2 } else { 0 };
        let mut pkt = Vec::with_capacity(payload.len() + topic.len() + 8);
        pkt.push(if self.qos1 { 0x32 } else { 0x30 });
        put_len(&mut pkt, 2 + topic.len() + id_len + payload.len());
        put_str(&mut pkt, topic.as_bytes());
        if self.qos1 {
            let pkid = (self.sent % 65_535 + 1) as u16;
            pkt.extend_from_slice(&pkid.to_be_bytes());
            // `sent` counts QoS1 messages only: the ones a PUBACK answers.
            self.sent += 1;
        }
        pkt.extend_from_slice(payload);
        Ok(self.out.write_all(&pkt)?)
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
        let _ = self.out.write_all(&[0xE0, 0]); // DISCONNECT
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
    fn takes_whole_packets_and_keeps_the_rest() {
        let mut body = Vec::new();
        put_str(&mut body, b"a/b");
        body.extend_from_slice(&7u16.to_be_bytes());
        body.extend_from_slice(&[b'x'; 200]); // a two-byte remaining length
        let qos1 = packet(0x32, &body);
        let mut buf = [qos1.clone(), vec![0x40, 2, 0, 7], qos1[..5].to_vec()].concat();
        let mut seen = Vec::new();
        take_packets(&mut buf, |head, body| {
            seen.push((head, publish_parts(head, body).map(|(id, p)| (id, p.len()))))
        });
        assert_eq!(seen, vec![(0x32, Some((Some(7), 200))), (0x40, None)]);
        assert_eq!(buf, qos1[..5], "the partial packet waits for more bytes");
        let qos0 = packet(0x30, &[0, 1, b't', b'p']);
        take_packets(&mut qos0.clone(), |head, body| {
            assert_eq!(publish_parts(head, body), Some((None, &b"p"[..])));
        });
        assert_eq!(publish_parts(0x32, &[0, 9, b'x']), None, "truncated");
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
        let mut bytes = broker
            .join()
            .map_err(|_| anyhow::anyhow!("broker thread"))??;
        let mut got = Vec::new();
        take_packets(&mut bytes, |head, body| {
            got.push((
                head,
                publish_parts(head, body).map(|(id, p)| (id, p.to_vec())),
            ))
        });
        assert_eq!(got[0].0, 0x10, "CONNECT first");
        assert_eq!(
            got[1..],
            [
                (0x32, Some((Some(1), b"one".to_vec()))),
                (0x32, Some((Some(2), b"two".to_vec()))),
                (0x30, Some((None, b"three".to_vec()))),
                (0xE0, None),
            ]
        );
        Ok(())
    }
}
