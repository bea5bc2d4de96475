//! `fieldgate bench mqtt`: QoS1 ingest through the real MQTT source into the durable
//! journal, side by side with a plain QoS1 subscriber receiving the same stream from the
//! same broker in the same run.
//!
//! A publisher thread sends N ~200-byte JSON telemetry messages at QoS1 as fast as the
//! broker takes them. The gateway source (the same `source::mqtt::run` as production:
//! manual acks after the journal flush) and a plain rumqttc subscriber (auto-ack, no
//! storage; it stands in for `mosquitto_sub`) both subscribe to `fleet/+/+/+`. Gateway
//! rate = N / (first frame appended → last frame durable); plain rate = N / (first →
//! last message received).

use anyhow::{bail, Context};
use clap::Args;
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::source::mqtt::{self, MqttConfig};
use fieldgate::source::{SourceCtx, SourceStates};
use fieldgate::units::{ByteSize, Positive};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Arguments of `bench mqtt`.
#[derive(Args)]
pub struct MqttArgs {
    /// Messages to publish.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Approximate JSON payload size, bytes.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Use this running broker (`mqtt://host:port`, anonymous) instead of starting one.
    #[arg(long)]
    broker: Option<String>,
    /// mosquitto binary to start.
    #[arg(
        long,
        env = "FIELDGATE_TEST_MOSQUITTO",
        default_value = "/usr/sbin/mosquitto"
    )]
    mosquitto: PathBuf,
    /// `max_inflight_messages` of the started broker (per client QoS1 window).
    #[arg(long, default_value_t = 10_000)]
    max_inflight: u32,
    /// Journal group-commit window, ms.
    #[arg(long, default_value_t = 20)]
    flush_ms: u64,
    /// Publisher's QoS1 in-flight window.
    #[arg(long, default_value_t = 1_000)]
    publisher_inflight: u16,
}

/// A mosquitto started for the bench; stopped on drop.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(bin: &Path, dir: &Path, max_inflight: u32) -> anyhow::Result<Broker> {
        if !bin.is_file() {
            bail!(
                "mosquitto not found at {} (install it, or pass --mosquitto PATH or --broker URL)",
                bin.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // As root, mosquitto would otherwise switch to the `mosquitto` user.
        let user = if unsafe { libc::getuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages {max_inflight}\nmax_queued_messages 0\n\
                 log_dest none\n"
            ),
        )?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let broker = Broker { child, port };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("mosquitto did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A realistic telemetry payload of roughly `size` bytes.
fn payload(i: u64, size: usize) -> Vec<u8> {
    let mut s = serde_json::json!({
        "id": i,
        "ts": 1_764_115_200_000u64 + i * 100,
        "lat": 53.5461 + (i % 1000) as f64 * 1e-5,
        "lon": 9.9661 - (i % 700) as f64 * 1e-5,
        "alt_m": 12.5,
        "speed_kmh": (i % 120) as f64 + 0.25,
        "course_deg": (i % 360) as f64,
        "rpm": 800 + (i % 2800),
        "coolant_c": 88,
        "fuel_pct": 61.5,
        "battery_v": 13.9,
    })
    .to_string();
    if s.len() + 12 < size {
        s.pop();
        s.push_str(&format!(
            ",\"pad\":\"{}\"}}",
            "x".repeat(size - s.len() - 10)
        ));
    }
    s.into_bytes()
}

/// What the plain subscriber saw.
#[derive(Default)]
struct SubResult {
    warm: AtomicBool,
    count: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn client_thread<F>(name: &str, f: F) -> anyhow::Result<std::thread::JoinHandle<()>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    Ok(std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(f),
                Err(e) => eprintln!("runtime: {e}"),
            }
        })?)
}

/// The plain QoS1 subscriber (auto-ack): counts bench messages until `n` or `stop`.
async fn subscriber(port: u16, n: u64, res: Arc<SubResult>, stop: Arc<AtomicBool>) {
    let mut o = MqttOptions::new("fieldgate-bench-sub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(o, 100);
    if client
        .subscribe("fleet/+/+/+", QoS::AtLeastOnce)
        .await
        .is_err()
    {
        return;
    }
    while !stop.load(Relaxed) {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic.starts_with("fleet/warm/") {
                    res.warm.store(true, Relaxed);
                    continue;
                }
                let now = Instant::now();
                lock(&res.first).get_or_insert(now);
                if res.count.fetch_add(1, Relaxed) + 1 >= n {
                    *lock(&res.last) = Some(now);
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("plain subscriber: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Publisher: warm-up messages until `warmed`, then (on `go`) the bench messages; records
/// when publishing started and when the last PUBACK arrived.
async fn publisher(
    port: u16,
    inflight: u16,
    messages: Vec<Vec<u8>>,
    warmed: Arc<AtomicBool>,
    go: Arc<AtomicBool>,
    done: Arc<Mutex<Option<(Instant, Instant)>>>,
) {
    let mut o = MqttOptions::new("fieldgate-bench-pub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(inflight.max(1))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(o, 10_000);
    let acks = Arc::new(AtomicU64::new(0));
    let acks_in = Arc::clone(&acks);
    let poller = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks_in.fetch_add(1, Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("publisher: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let mut warm = 0u64;
    while !warmed.load(Relaxed) {
        let _ = client
            .publish(
                "fleet/warm/up/json",
                QoS::AtLeastOnce,
                false,
                b"{}".to_vec(),
            )
            .await;
        warm += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while !go.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let n = messages.len() as u64;
    let t0 = Instant::now();
    for (i, m) in messages.into_iter().enumerate() {
        let topic = format!("fleet/van-{:02}/dev-{}/telemetry", i % 16, i % 4);
        if client
            .publish(topic, QoS::AtLeastOnce, false, m)
            .await
            .is_err()
        {
            break;
        }
    }
    let limit = Instant::now() + Duration::from_secs(300);
    while acks.load(Relaxed) < warm + n && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    *lock(&done) = Some((t0, Instant::now()));
    poller.abort();
}

/// Run `bench mqtt`.
pub fn run(args: MqttArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "fieldgate-bench-mqtt-{}-{}",
        std::process::id(),
        fieldgate::frame::now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(args: &MqttArgs, dir: &Path) -> anyhow::Result<()> {
    let n = args.messages.max(1);
    let (_broker, url, port) = match &args.broker {
        Some(url) => {
            let a = mqtt::parse_url(url).map_err(anyhow::Error::msg)?;
            (None, url.clone(), a.port)
        }
        None => {
            let b = Broker::start(&args.mosquitto, dir, args.max_inflight)?;
            let url = format!("mqtt://127.0.0.1:{}", b.port);
            let port = b.port;
            (Some(b), url, port)
        }
    };
    let cfg: MqttConfig = toml::from_str(&format!(
        "name = \"bench\"\nurl = \"{url}\"\nclient_id = \"fieldgate-bench-gw\"\n\
         subscriptions = [{{ topic = \"fleet/{{vehicle}}/{{device}}/{{kind}}\", qos = 1 }}]\n"
    ))
    .context("bench source config")?;
    let journal = Journal::open(JournalConfig {
        path: dir.join("journal"),
        flush_ms: Positive(args.flush_ms.max(1)),
        max_bytes: ByteSize(4 << 30),
        ..JournalConfig::default()
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let states = SourceStates::default();
    let shutdown = CancellationToken::new();
    let ctx = SourceCtx {
        gateway: "bench".into(),
        journal: journal.clone(),
        slot: states.register("bench", "mqtt"),
        shutdown: shutdown.clone(),
        commands: Default::default(),
    };
    let source = rt.spawn(mqtt::run(cfg, ctx));

    let messages: Vec<Vec<u8>> = (0..n).map(|i| payload(i, args.payload_bytes)).collect();
    let msg_bytes = messages.first().map_or(0, Vec::len);
    let sub = Arc::new(SubResult::default());
    let stop = Arc::new(AtomicBool::new(false));
    let warmed = Arc::new(AtomicBool::new(false));
    let go = Arc::new(AtomicBool::new(false));
    let published = Arc::new(Mutex::new(None));
    let sub_thread = client_thread(
        "bench-sub",
        subscriber(port, n, Arc::clone(&sub), Arc::clone(&stop)),
    )?;
    let pub_thread = client_thread(
        "bench-pub",
        publisher(
            port,
            args.publisher_inflight,
            messages,
            Arc::clone(&warmed),
            Arc::clone(&go),
            Arc::clone(&published),
        ),
    )?;

    // Warm-up: both consumers are subscribed once each has seen a warm-up message.
    let base0 = journal.last_seq();
    let t0 = Instant::now();
    while !(journal.last_seq() > base0 && sub.warm.load(Relaxed)) {
        if t0.elapsed() > Duration::from_secs(30) {
            stop.store(true, Relaxed);
            warmed.store(true, Relaxed);
            go.store(true, Relaxed);
            bail!(
                "consumers never subscribed (gateway frames {}, plain subscriber warm {}); source state {:?}",
                journal.last_seq() - base0,
                sub.warm.load(Relaxed),
                states.snapshot().get("bench").map(|s| (s.state.clone(), s.last_error.clone()))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let warm-up messages still in flight land, then start the stream.
    warmed.store(true, Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let base = journal.last_seq();
    go.store(true, Relaxed);
    let target = base + n;
    let mut first_appended = None;
    let limit = Instant::now() + Duration::from_secs(120 + n / 1000);
    let last_durable = loop {
        let now = Instant::now();
        if first_appended.is_none() && journal.last_seq() > base {
            first_appended = Some(now);
        }
        if journal.durable_seq() >= target {
            break now;
        }
        if now > limit {
            stop.store(true, Relaxed);
            bail!(
                "gateway journaled only {} of {n} messages in time",
                journal.durable_seq().saturating_sub(base)
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let first_appended = first_appended.unwrap_or(last_durable);
    let _ = pub_thread.join();
    let sub_limit = Instant::now() + Duration::from_secs(60);
    while lock(&sub.last).is_none() && Instant::now() < sub_limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Relaxed);
    let got = sub.count.load(Relaxed);
    let (sub_first, sub_last) = (*lock(&sub.first), *lock(&sub.last));
    shutdown.cancel();
    let _ = rt.block_on(source);
    let snap = states.snapshot();
    journal.close()?;
    drop(rt);
    // The subscriber thread ends with its next event or keep-alive; don't wait for it.
    drop(sub_thread);

    let gw_s = (last_durable - first_appended).as_secs_f64().max(1e-9);
    let gw_rate = n as f64 / gw_s;
    println!(
        "mqtt bench: {n} QoS1 messages of {msg_bytes} B, mosquitto max_inflight_messages {}, journal flush_ms {}, publisher inflight {}",
        if args.broker.is_some() { "(external broker)".to_string() } else { args.max_inflight.to_string() },
        args.flush_ms,
        args.publisher_inflight
    );
    if let Some((p0, p1)) = *lock(&published) {
        let s = (p1 - p0).as_secs_f64().max(1e-9);
        println!(
            "  publisher (all PUBACKed):       {:.0} msg/s ({s:.2} s)",
            n as f64 / s
        );
    }
    println!("  gateway ingest, durable:        {gw_rate:.0} frames/s ({gw_s:.2} s, first append -> last durable)");
    if let Some(src) = snap.get("bench") {
        println!(
            "  gateway frames / rejected:      {} / {}",
            src.frames, src.invalid
        );
    }
    match (sub_first, sub_last) {
        (Some(a), Some(b)) => {
            let s = (b - a).as_secs_f64().max(1e-9);
            let sub_rate = n as f64 / s;
            println!("  plain QoS1 subscriber:          {sub_rate:.0} msg/s ({s:.2} s, first -> last received)");
            println!(
                "  ratio gateway / plain:          {:.2}",
                gw_rate / sub_rate
            );
        }
        _ => println!("  plain QoS1 subscriber:          received only {got} of {n}"),
    }
    Ok(())
}
