//! WebSocket clients of the gateway's live relay: a watcher that timestamps every frame it
//! receives (the stall and resume figures), readers measuring publish → receive latency,
//! and stalled clients that connect with a tiny receive buffer and never read.

use crate::rig::locked;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// One live frame as a watcher received it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When it arrived.
    pub at: Instant,
    /// Its seq.
    pub seq: u64,
    /// Its source (`mqtt:...`, `serial:gps`).
    pub source: String,
    /// The load's send stamp, for MQTT load frames.
    pub t_ns: Option<u64>,
}

/// What a watcher saw.
#[derive(Default)]
pub struct Seen {
    /// Frames, in arrival order.
    pub frames: Mutex<Vec<Arrival>>,
    /// `lagged` notices.
    pub lagged: AtomicU64,
    /// Set once the connection ended.
    pub closed: AtomicBool,
}

impl Seen {
    /// The longest time between two frames arriving in `[from, to]` (also counting from
    /// `from` to the first and from the last to `to`).
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let frames = locked(&self.frames);
        let mut prev = from;
        let mut gap = Duration::ZERO;
        for a in frames.iter().filter(|a| a.at >= from && a.at <= to) {
            gap = gap.max(a.at - prev);
            prev = a.at;
        }
        gap.max(to.saturating_duration_since(prev))
    }

    /// The first frame after `t` whose source starts with `prefix`.
    pub fn first_after(&self, t: Instant, prefix: &str) -> Option<Arrival> {
        locked(&self.frames)
            .iter()
            .find(|a| a.at > t && a.source.starts_with(prefix))
            .cloned()
    }

    /// The highest seq received.
    pub fn max_seq(&self) -> u64 {
        locked(&self.frames)
            .iter()
            .map(|a| a.seq)
            .max()
            .unwrap_or(0)
    }
}

/// The relay's request for `port` with `key`.
fn request(
    port: u16,
    key: &str,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut req = format!("ws://127.0.0.1:{port}/ws").into_client_request()?;
    req.headers_mut().insert("x-api-key", key.parse()?);
    Ok(req)
}

/// A small read buffer (see `fieldgate_bench::ws`: tungstenite zero-fills its whole buffer
/// on every read).
fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 << 10)
}

/// Connect a watcher that records every live frame into the returned [`Seen`] until the
/// connection ends or the runtime stops.
pub async fn watch(port: u16, key: &str) -> anyhow::Result<Arc<Seen>> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(request(port, key)?, Some(config()), true)
            .await?;
    let seen = Arc::new(Seen::default());
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let at = Instant::now();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                continue;
            };
            match v["type"].as_str() {
                Some("frame") => {
                    let d = &v["data"];
                    locked(&out.frames).push(Arrival {
                        at,
                        seq: d["seq"].as_u64().unwrap_or(0),
                        source: d["source"].as_str().unwrap_or("").to_string(),
                        t_ns: d["payload"]["t_ns"].as_u64(),
                    });
                }
                Some("lagged") => {
                    out.lagged.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
        out.closed.store(true, Relaxed);
    });
    Ok(seen)
}

/// Publish → receive latencies (µs) of one reading client.
#[derive(Default)]
pub struct Latencies {
    /// One sample per load frame received.
    pub us: Mutex<Vec<u32>>,
    /// `lagged` notices (a reading client should never get one).
    pub lagged: AtomicU64,
    /// Set once the handshake is done.
    pub connected: AtomicBool,
}

/// A client that reads every frame and records its latency from the send stamp into
/// `lat`, until the connection ends.
pub async fn read_into(port: u16, key: String, lat: Arc<Latencies>) -> anyhow::Result<()> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(request(port, &key)?, Some(config()), true)
            .await?;
    lat.connected.store(true, Relaxed);
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        let text = t.as_bytes();
        if let Some(sent) = fieldgate_bench::ws::stamp(text) {
            let us = crate::load::unix_ns().saturating_sub(sent) / 1000;
            locked(&lat.us).push(us.min(u64::from(u32::MAX)) as u32);
        } else if text.starts_with(b"{\"type\":\"lagged\"") {
            lat.lagged.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}

/// A client that asked for frames and then stopped reading.
pub struct Stalled {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
}

/// What a stalled client finds once it reads again.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Frames that were still in its socket.
    pub frames: u64,
    /// `lagged` notices among them.
    pub lagged: u64,
    /// The close code the gateway sent, if its close frame got through.
    pub close_code: Option<u16>,
    /// Whether the connection had ended (closed or reset) by the end of the read.
    pub ended: bool,
}

/// Connect with `rcvbuf` bytes of socket receive buffer (set before connecting, so the
/// window is small from the handshake on) and never read.
pub async fn stalled(port: u16, key: &str, rcvbuf: u32) -> anyhow::Result<Stalled> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(rcvbuf)?;
    let tcp = sock.connect(([127, 0, 0, 1], port).into()).await?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request(port, key)?, tcp, Some(config()))
            .await?;
    // Ask for everything explicitly (the default is already all frames).
    ws.send(Message::text(r#"{"type":"subscribe","data":{}}"#))
        .await?;
    Ok(Stalled { ws })
}

impl Stalled {
    /// Read what is there until the connection ends or `limit` passes.
    pub async fn drain(mut self, limit: Duration) -> Backlog {
        let mut b = Backlog::default();
        let end = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(end, self.ws.next()).await;
            match next {
                Err(_) => return b,
                Ok(None) | Ok(Some(Err(_))) => {
                    b.ended = true;
                    return b;
                }
                Ok(Some(Ok(Message::Close(c)))) => {
                    b.close_code = c.map(|c| u16::from(c.code));
                    b.ended = true;
                    return b;
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    if t.as_str().starts_with("{\"type\":\"frame\"") {
                        b.frames += 1;
                    } else if t.as_str().starts_with("{\"type\":\"lagged\"") {
                        b.lagged += 1;
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// The `q` quantile of `samples` (sorted in place), in ms.
pub fn quantile_ms(samples: &mut [u32], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
    f64::from(samples[i]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_the_edges_of_the_window() {
        let t0 = Instant::now();
        let seen = Seen::default();
        for ms in [100, 300, 1_500] {
            locked(&seen.frames).push(Arrival {
                at: t0 + Duration::from_millis(ms),
                seq: ms,
                source: "mqtt:x".into(),
                t_ns: None,
            });
        }
        let to = t0 + Duration::from_millis(1_600);
        assert_eq!(seen.longest_gap(t0, to), Duration::from_millis(1_200));
        assert_eq!(
            seen.longest_gap(t0, t0 + Duration::from_millis(3_000)),
            Duration::from_millis(1_500),
            "silence at the end counts"
        );
        assert_eq!(
            seen.first_after(t0 + Duration::from_millis(200), "mqtt")
                .map(|a| a.seq),
            Some(300)
        );
        let mut s = vec![5_000, 1_000, 3_000, 2_000];
        assert_eq!(quantile_ms(&mut s, 0.5), 3.0);
        assert_eq!(quantile_ms(&mut s, 0.99), 5.0);
    }
}
