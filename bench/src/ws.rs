//! `fieldgate-bench ws`: publish → WebSocket receive latency, fieldgate vs mosquitto.
//!
//! One MQTT stream (publishes stamped with their send time; QoS1, or QoS0 with `--qos 0`)
//! is relayed to N WebSocket receivers twice, in sequence: by fieldgate (MQTT source →
//! journal → hub → WS) and by mosquitto's own WebSocket listener (MQTT-over-WebSocket
//! subscribers). Publisher and receivers are compiled Rust in this process; receivers only
//! scan for the timestamp, so the measuring side stays light. Two more figures place the
//! time: fieldgate's own part (its relay latency histogram, read from `/metrics` around
//! the load) and, between the two relays, the broker hop alone (one bare QoS1 subscriber
//! on mosquitto, no relay).
//! mosquitto's WebSocket listener binds every interface: run this inside a loopback-only
//! network namespace (`scripts/bench-ws` does).

use crate::broker::{
    connect_packet, encode, free_port, subscribe_packet, take_packets, Mosquitto, RawPublisher,
};
use crate::scrape;
use bytes::BytesMut;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{Packet, PubAck};
use rumqttc::mqttbytes::QoS;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `bench ws`.
#[derive(Args)]
pub struct WsArgs {
    /// Messages per second published.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// WebSocket receivers per relay.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Seconds of publishing per relay.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Instead of one load: raise the rate by this many msg/s per step until drops, and
    /// report the highest fan-out (deliveries/s, all clients) each relay sustains.
    #[arg(long)]
    saturate: Option<u64>,
    /// With `--saturate`: a step whose p99 exceeds this (ms) counts as falling behind.
    #[arg(long, default_value_t = 50.0)]
    max_p99_ms: f64,
    /// QoS of the publisher's messages (0 or 1); fieldgate subscribes at QoS1, mosquitto's
    /// WebSocket subscribers at QoS0.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// The mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// The gateway binary (default: `fieldgate` beside this program, as cargo builds both
    /// into one target directory).
    #[arg(long)]
    fieldgate: Option<PathBuf>,
}

/// The gateway binary to measure: `given`, else `fieldgate` in this program's directory.
fn fieldgate_bin(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let exe = match given {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("fieldgate"),
    };
    anyhow::ensure!(
        exe.is_file(),
        "no gateway binary at {} (cargo build --release builds it; or pass --fieldgate PATH)",
        exe.display()
    );
    Ok(exe)
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The send timestamp inside a payload: the digits after `"t_ns":`.
pub fn stamp(text: &[u8]) -> Option<u64> {
    let key = b"\"t_ns\":";
    let at = memchr::memmem::find(text, key)? + key.len();
    let digits = text[at..].iter().take_while(|c| c.is_ascii_digit());
    Some(digits.fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Latency samples (µs) and count of one receiver (one each, so receivers on different
/// threads never contend for it).
#[derive(Default)]
struct Tally {
    lat_us: Mutex<Vec<u32>>,
    received: AtomicU64,
}

impl Tally {
    fn record(&self, payload: &[u8]) {
        if let Some(t) = stamp(payload) {
            let us = unix_ns().saturating_sub(t) / 1000;
            self.received.fetch_add(1, Relaxed);
            if let Ok(mut v) = self.lat_us.lock() {
                v.push(us.min(u64::from(u32::MAX)) as u32);
            }
        }
    }
}

/// CPU seconds and RSS (kB) of a process.
fn proc_usage(pid: u32) -> (f64, u64) {
    let tick = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let ut: f64 = rest.get(11)?.parse().ok()?;
            let st: f64 = rest.get(12)?.parse().ok()?;
            Some((ut + st) / tick)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0);
    (cpu, rss)
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("nothing listening on port {port}")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One load: `rate` msg/s at `qos` for `secs` seconds, to `clients` receivers per relay.
#[derive(Clone, Copy)]
struct Load {
    rate: u64,
    clients: usize,
    secs: u64,
    qos: u8,
}

/// Publish the load's `rate`/s for `secs` seconds, each stamped; returns how many were
/// published.
///
/// A blocking thread with its own raw MQTT connection: every millisecond it writes the
/// messages due by then in one write (so the measuring side costs one syscall per tick,
/// not per message), stamping each as it is encoded.
fn publish(port: u16, load: Load) -> anyhow::Result<u64> {
    let Load {
        rate, secs, qos, ..
    } = load;
    let mut publisher =
        RawPublisher::connect(port, &format!("bench-pub-{}", unix_ns()), 60_000)?.with_qos(qos);
    let total = rate * secs;
    let t0 = Instant::now();
    let pad = "x".repeat(120);
    let (mut n, mut tick) = (0u64, 0u32);
    while n < total {
        let elapsed = t0.elapsed().as_nanos();
        let due = (elapsed * u128::from(rate) / 1_000_000_000 + 1).min(u128::from(total)) as u64;
        while n < due {
            let body = format!(
                "{{\"t_ns\":{},\"n\":{n},\"speed_kmh\":42.5,\"pad\":\"{pad}\"}}",
                unix_ns()
            );
            publisher.publish(&format!("bench/dev{}/json", n % 4), body.as_bytes())?;
            n += 1;
        }
        publisher.flush()?;
        tick += 1;
        if let Some(rest) =
            (t0 + Duration::from_millis(u64::from(tick))).checked_duration_since(Instant::now())
        {
            std::thread::sleep(rest);
        }
    }
    publisher.wait_acked(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(total)
}

/// Connect a receiver: TCP_NODELAY, and a 4 KiB read buffer — tungstenite zero-fills its
/// whole read buffer (128 KiB by default) on every read, which at 100,000 messages/s made
/// the receivers, not the relays, the busiest thing on the box.
async fn connect(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> anyhow::Result<(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
)> {
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 << 10);
    Ok(tokio_tungstenite::connect_async_with_config(req, Some(cfg), true).await?)
}

/// An MQTT 3.1.1 over WebSocket subscriber (QoS 0), fed to `tally`.
async fn mqtt_ws_subscriber(port: u16, id: usize, tally: Arc<Tally>) -> anyhow::Result<()> {
    let mut req = format!("ws://127.0.0.1:{port}/mqtt").into_client_request()?;
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse()?);
    let (mut ws, _) = connect(req).await?;
    let cid = format!("bench-ws-{id}");
    for pkt in [
        connect_packet(&cid, 60)?,
        subscribe_packet("bench/#", QoS::AtMostOnce)?,
    ] {
        ws.send(Message::Binary(pkt.freeze())).await?;
    }
    let mut buf = BytesMut::new();
    while let Some(msg) = ws.next().await {
        let Message::Binary(b) = msg? else { continue };
        buf.extend_from_slice(&b);
        take_packets(&mut buf, |p| {
            if let Packet::Publish(p) = p {
                tally.record(&p.payload);
            }
        })?;
    }
    Ok(())
}

/// A QoS1 MQTT subscriber straight on the broker (plain TCP, acks each read's publishes in
/// one write), fed to `tally`: the broker hop with no relay after it.
async fn mqtt_tcp_subscriber(port: u16, tally: Arc<Tally>) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    let mut hello = connect_packet("bench-hop", 60)?;
    hello.extend_from_slice(&subscribe_packet("bench/#", QoS::AtLeastOnce)?);
    s.write_all(&hello).await?;
    let (mut buf, mut chunk) = (BytesMut::new(), vec![0u8; 64 << 10]);
    let mut acks = BytesMut::new();
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut ids = Vec::new();
        take_packets(&mut buf, |p| {
            if let Packet::Publish(p) = p {
                tally.record(&p.payload);
                if p.qos == QoS::AtLeastOnce {
                    ids.push(p.pkid);
                }
            }
        })?;
        for id in ids {
            acks.extend_from_slice(&encode(Packet::PubAck(PubAck::new(id)))?);
        }
        if !acks.is_empty() {
            s.write_all(&acks).await?;
            acks.clear();
        }
    }
}

/// A fieldgate WebSocket receiver fed to `tally`.
async fn fieldgate_subscriber(port: u16, key: String, tally: Arc<Tally>) -> anyhow::Result<()> {
    let mut req = format!("ws://127.0.0.1:{port}/ws").into_client_request()?;
    req.headers_mut().insert("x-api-key", key.parse()?);
    let (mut ws, _) = connect(req).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            if t.as_bytes().starts_with(b"{\"type\":\"frame\"") {
                tally.record(t.as_bytes());
            }
        }
    }
    Ok(())
}

/// What one relay did at one load.
struct Outcome {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    delivered_per_s: f64,
    drops: u64,
    cpu_pct: f64,
    rss_kb: u64,
    /// fieldgate only: p50 and p99 (ms) of its own part, journal append → socket.
    own_ms: Option<(f64, f64)>,
}

impl Outcome {
    /// `peer`: the relay's CPU seconds over `wall` seconds, and its RSS.
    fn from(
        tallies: &[Arc<Tally>],
        published: u64,
        clients: usize,
        secs: u64,
        peer: (f64, u64),
        wall: f64,
    ) -> Self {
        let mut lat = Vec::new();
        for t in tallies {
            if let Ok(v) = t.lat_us.lock() {
                lat.extend_from_slice(&v);
            }
        }
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .map_or(f64::NAN, |v| f64::from(*v) / 1000.0)
        };
        let got: u64 = tallies.iter().map(|t| t.received.load(Relaxed)).sum();
        Outcome {
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: lat.last().map_or(f64::NAN, |v| f64::from(*v) / 1000.0),
            delivered_per_s: got as f64 / secs as f64,
            drops: (published * clients as u64).saturating_sub(got),
            cpu_pct: peer.0 * 100.0 / wall,
            rss_kb: peer.1,
            own_ms: None,
        }
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<10} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  delivered {:>8.0}/s  drops {:>6}  relay CPU {:>5.1}%  RSS {:>6} kB",
            self.p50_ms, self.p99_ms, self.max_ms, self.delivered_per_s, self.drops, self.cpu_pct, self.rss_kb
        );
        if let Some((p50, p99)) = self.own_ms {
            println!("{:<10} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  (fieldgate's own part: journal append → socket, from its /metrics)", "");
        }
    }
}

/// The relay being measured and how to subscribe to it.
enum Relay {
    Fieldgate {
        port: u16,
        key: String,
        pid: u32,
    },
    Mosquitto {
        ws_port: u16,
        pid: u32,
    },
    /// No relay: one QoS1 subscriber straight on the broker, i.e. the hop every MQTT-fed
    /// relay pays before its own work (publisher → mosquitto → subscriber).
    BrokerHop {
        mqtt_port: u16,
        pid: u32,
    },
}

impl Relay {
    fn name(&self) -> &'static str {
        match self {
            Relay::Fieldgate { .. } => "fieldgate",
            Relay::Mosquitto { .. } => "mosquitto",
            Relay::BrokerHop { .. } => "broker hop",
        }
    }

    /// Connect the load's receivers, publish it, and measure.
    async fn measure(&self, mqtt_port: u16, load: Load) -> anyhow::Result<Outcome> {
        let clients = if matches!(self, Relay::BrokerHop { .. }) {
            1
        } else {
            load.clients
        };
        let tallies: Vec<Arc<Tally>> = (0..clients).map(|_| Arc::default()).collect();
        let recv: Vec<_> = tallies
            .iter()
            .enumerate()
            .map(|(i, tally)| match self {
                Relay::Fieldgate { port, key, .. } => {
                    tokio::spawn(fieldgate_subscriber(*port, key.clone(), tally.clone()))
                }
                Relay::Mosquitto { ws_port, .. } => {
                    tokio::spawn(mqtt_ws_subscriber(*ws_port, i, tally.clone()))
                }
                Relay::BrokerHop { mqtt_port, .. } => {
                    tokio::spawn(mqtt_tcp_subscriber(*mqtt_port, tally.clone()))
                }
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = match self {
            Relay::Fieldgate { pid, .. }
            | Relay::Mosquitto { pid, .. }
            | Relay::BrokerHop { pid, .. } => *pid,
        };
        // fieldgate's own latency histogram before the load (compared with after it).
        let own = match self {
            Relay::Fieldgate { port, key, .. } => {
                Some((*port, key, scrape::relay_histogram(*port, key).await?))
            }
            _ => None,
        };
        let (cpu0, t0) = (proc_usage(pid), Instant::now());
        let published = tokio::task::spawn_blocking(move || publish(mqtt_port, load)).await?;
        let cpu1 = proc_usage(pid);
        let wall = t0.elapsed().as_secs_f64();
        recv.iter().for_each(|h| h.abort());
        let mut o = Outcome::from(
            &tallies,
            published?,
            clients,
            load.secs,
            (cpu1.0 - cpu0.0, cpu1.1),
            wall,
        );
        if let Some((port, key, before)) = own {
            let after = scrape::relay_histogram(port, key).await?;
            o.own_ms = Some((
                scrape::quantile_ms(&before, &after, 0.50),
                scrape::quantile_ms(&before, &after, 0.99),
            ));
        }
        Ok(o)
    }
}

/// Raise the load's rate in steps of `step` until the relay drops or its p99 passes
/// `max_p99_ms`; returns the highest delivered rate it kept up with.
async fn saturate(
    relay: &Relay,
    mqtt_port: u16,
    step: u64,
    load: Load,
    max_p99_ms: f64,
) -> anyhow::Result<f64> {
    let mut best = 0.0;
    for k in 1..=40 {
        let rate = step * k;
        let o = relay.measure(mqtt_port, Load { rate, ..load }).await?;
        o.print(&format!("{}@{rate}", relay.name()));
        if o.drops > 0 || o.p99_ms > max_p99_ms {
            break;
        }
        best = o.delivered_per_s;
    }
    Ok(best)
}

/// fieldgate's MQTT client id in the bench.
const FIELDGATE_CLIENT_ID: &str = "fieldgate-bench";

fn start_fieldgate(
    exe: &Path,
    dir: &Path,
    mqtt_port: u16,
    port: u16,
) -> anyhow::Result<(Killed, String)> {
    let cfg = dir.join("fieldgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"bench\"\n[journal]\npath = \"{}\"\n[listen]\naddress = \"127.0.0.1:{port}\"\n\
             [[sources.mqtt]]\nname = \"broker\"\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"{FIELDGATE_CLIENT_ID}\"\n\
             subscriptions = [{{ topic = \"bench/{{device}}/{{kind}}\", qos = 1 }}]\n",
            dir.join("journal").display()
        ),
    )?;
    let out = Command::new(exe)
        .args(["keys", "add", "bench", "--scopes", "read", "--config"])
        .arg(&cfg)
        .output()?;
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    anyhow::ensure!(out.status.success(), "keys add failed");
    let child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((Killed(child), key))
}

/// Run `bench ws`.
pub fn run(a: WsArgs) -> anyhow::Result<()> {
    let exe = fieldgate_bin(a.fieldgate.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = std::env::temp_dir().join(format!("fieldgate-bench-ws-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (mqtt_port, ws_port, fg_port) = (free_port()?, free_port()?, free_port()?);
        let mosq = Mosquitto::start(
            &a.mosquitto,
            &dir,
            &format!(
                "per_listener_settings false\nallow_anonymous true\nset_tcp_nodelay true\n\
                 max_queued_messages 100000\nmax_inflight_messages 1000\n\
                 listener {mqtt_port} 127.0.0.1\nlistener {ws_port}\nprotocol websockets\n"
            ),
            &[mqtt_port, ws_port],
        )?;
        let load = Load {
            rate: a.rate,
            clients: a.clients,
            secs: a.seconds,
            qos: a.qos,
        };
        match a.saturate {
            None => println!(
                "bench ws: {} msg/s for {} s to {} WebSocket clients per relay (QoS{} publish, ~200 B JSON)",
                a.rate, a.seconds, a.clients, a.qos
            ),
            Some(step) => println!(
                "bench ws --saturate: rate raised by {step} msg/s per {} s step, {} WebSocket clients per relay (QoS{} publish), until drops or p99 > {} ms",
                a.seconds, a.clients, a.qos, a.max_p99_ms
            ),
        }

        let (fg, key) = start_fieldgate(&exe, &dir, mqtt_port, fg_port)?;
        wait_port(fg_port).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut relays = vec![Relay::Fieldgate { port: fg_port, key, pid: fg.0.id() }];
        if a.saturate.is_none() {
            relays.push(Relay::BrokerHop { mqtt_port, pid: mosq.pid() });
        }
        relays.push(Relay::Mosquitto { ws_port, pid: mosq.pid() });
        let mut sustained = Vec::new();
        let mut fg = Some(fg);
        for relay in &relays {
            if !matches!(relay, Relay::Fieldgate { .. }) {
                if let Some(stopped) = fg.take() {
                    // fieldgate subscribes to the broker: stop it so it does not share the
                    // CPU, and end its persistent session (a clean-session connect with its
                    // client id), or mosquitto would go on queueing every message for it.
                    drop(stopped);
                    drop(RawPublisher::connect(mqtt_port, FIELDGATE_CLIENT_ID, 1)?);
                }
            }
            match a.saturate {
                None => relay
                    .measure(mqtt_port, load)
                    .await?
                    .print(relay.name()),
                Some(step) => sustained.push((
                    relay.name(),
                    saturate(relay, mqtt_port, step, load, a.max_p99_ms).await?,
                )),
            }
        }
        for (name, best) in sustained {
            println!("{name:<10} sustains {best:.0} deliveries/s without drops");
        }
        drop(mosq);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_stamp() {
        assert_eq!(
            super::stamp(br#"{"data":{"payload":{"t_ns":12345,"n":1}}}"#),
            Some(12345)
        );
        assert_eq!(super::stamp(b"no stamp"), None);
    }
}
