//! The MQTT load: a publisher thread sending numbered QoS1 messages at a steady rate to
//! four devices, reconnecting by itself when the broker goes away, and remembering which
//! messages the broker acknowledged (PUBACK) — the ones that must end up in the journal.
//!
//! Message `n` goes to `chaos/van-1/dev-{n % 4}/json` with the payload
//! `{"n":N,"t_ns":SEND_TIME,"pad":"x..."}`, so every journaled frame names its message.

use fieldgate_bench::broker::RawPublisher;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Devices the messages are spread over.
pub const DEVICES: u64 = 4;

/// The topic of message `n`.
pub fn topic(n: u64) -> String {
    format!("chaos/van-1/dev-{}/json", n % DEVICES)
}

/// The device id the gateway gives message `n`'s frame.
pub fn device(n: u64) -> String {
    format!("dev-{}", n % DEVICES)
}

/// Nanoseconds since the Unix epoch (the send stamp).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The payload of message `n`, padded with `pad` bytes.
pub fn payload(n: u64, pad: usize) -> Vec<u8> {
    format!(
        "{{\"n\":{n},\"t_ns\":{},\"pad\":\"{}\"}}",
        unix_ns(),
        "x".repeat(pad)
    )
    .into_bytes()
}

/// The message number in a payload, if it is one of ours.
pub fn message_n(payload: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("n")?.as_u64()
}

/// What the publisher did.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Messages written to a connection (0..published).
    pub published: u64,
    /// Messages the broker acknowledged, as ranges of `n`.
    pub acked: Vec<Range<u64>>,
    /// Whether the broker acknowledged in order on every connection (what makes the ranges
    /// exact).
    pub in_order: bool,
    /// Connections opened after the first.
    pub reconnects: u64,
}

impl Published {
    /// How many messages the broker acknowledged.
    pub fn acked_count(&self) -> u64 {
        self.acked.iter().map(|r| r.end - r.start).sum()
    }

    /// Every acknowledged `n`.
    pub fn acked_ns(&self) -> impl Iterator<Item = u64> + '_ {
        self.acked.iter().flat_map(|r| r.clone())
    }
}

/// A running publisher.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<JoinHandle<Published>>,
}

impl Load {
    /// Publish `rate` messages/s with `pad` bytes of padding to the broker on `port`.
    pub fn start(port: u16, rate: u64, pad: usize) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&acked));
        let thread = std::thread::Builder::new()
            .name("chaos-publisher".into())
            .spawn(move || publish(port, rate.max(1), pad, &s, &a))?;
        Ok(Load {
            stop,
            acked,
            thread: Some(thread),
        })
    }

    /// Messages the broker acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Relaxed)
    }

    /// Stop publishing, wait (up to 30 s) for the broker's outstanding acks, and report.
    pub fn stop(mut self) -> Published {
        self.stop.store(true, Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One broker connection and the first message number sent on it.
struct Conn {
    publisher: RawPublisher,
    first: u64,
}

fn publish(port: u16, rate: u64, pad: usize, stop: &AtomicBool, live: &AtomicU64) -> Published {
    let mut out = Published {
        in_order: true,
        ..Published::default()
    };
    let mut conn: Option<Conn> = None;
    let mut connections = 0u64;
    // The schedule: message k is due at origin + k / rate.
    let mut origin = Instant::now();
    let mut n = 0u64;
    let close = |c: Conn, out: &mut Published| {
        out.in_order &= c.publisher.acks_in_order();
        let acked = c.publisher.acked();
        if acked > 0 {
            out.acked.push(c.first..c.first + acked);
        }
    };
    while !stop.load(Relaxed) {
        if conn.is_none() {
            match RawPublisher::connect(
                port,
                &format!("chaos-pub-{}-{connections}", std::process::id()),
                1000,
            ) {
                Ok(p) => {
                    connections += 1;
                    conn = Some(Conn {
                        publisher: p,
                        first: n,
                    });
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let due = (origin.elapsed().as_secs_f64() * rate as f64) as u64;
        // After an outage, carry on at the rate instead of bursting the missed messages.
        if due > n + rate {
            origin = Instant::now() - Duration::from_secs_f64(n as f64 / rate as f64);
        }
        let mut failed = !c.publisher.connected();
        while !failed && n < due.min(n + rate) {
            failed = c.publisher.publish(&topic(n), &payload(n, pad)).is_err();
            if !failed {
                n += 1;
            }
        }
        failed = failed || c.publisher.flush().is_err();
        let closed: u64 = out.acked.iter().map(|r| r.end - r.start).sum();
        live.store(closed + c.publisher.acked(), Relaxed);
        if failed {
            if let Some(c) = conn.take() {
                close(c, &mut out);
            }
            continue;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Some(mut c) = conn.take() {
        let _ = c.publisher.wait_acked(Duration::from_secs(30));
        close(c, &mut out);
    }
    out.published = n;
    out.reconnects = connections.saturating_sub(1);
    live.store(out.acked_count(), Relaxed);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_name_their_message() {
        let p = super::payload(42, 10);
        assert_eq!(super::message_n(&p), Some(42));
        assert_eq!(super::message_n(b"{\"n\":\"x\"}"), None);
        assert_eq!(super::topic(6), "chaos/van-1/dev-2/json");
        assert_eq!(super::device(6), "dev-2");
    }
}
