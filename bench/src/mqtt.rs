//! `fieldgate-bench mqtt`: QoS1 ingest through the real MQTT source into the durable
//! journal, side by side with `mosquitto_sub` receiving the same stream from the same
//! broker in the same run.
//!
//! Both consumers hold a persistent session (`clean_session = false`) on a mosquitto started
//! for the run. With both offline, a publisher loads N ~200-byte JSON telemetry messages at
//! QoS1, so the broker queues the same N for each. Then each consumer drains its queue alone
//! (the 2 cores are not shared): the gateway source exactly as in production (manual
//! PUBACKs only after the journal flush that covers the frames), timed from the source's
//! start to the last frame durable; then `mosquitto_sub -c -q 1 -C N`, timed from process
//! start to exit. The rate the gateway reaches is bounded by the broker's
//! `max_inflight_messages` / the journal's commit interval, so both are printed.

use crate::broker::{free_port, Mosquitto, RawPublisher};
use anyhow::{bail, Context};
use clap::Args;
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::source::mqtt::{self, MqttConfig};
use fieldgate::source::{SourceCtx, SourceStates};
use fieldgate::units::{ByteSize, Positive};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    /// mosquitto binary to start.
    #[arg(
        long,
        env = "FIELDGATE_TEST_MOSQUITTO",
        default_value = "/usr/sbin/mosquitto"
    )]
    mosquitto: PathBuf,
    /// mosquitto_sub binary (Debian package mosquitto-clients).
    #[arg(long, default_value = "/usr/bin/mosquitto_sub")]
    mosquitto_sub: PathBuf,
    /// `max_inflight_messages` of the started broker (its per-client QoS1 window).
    #[arg(long, default_value_t = 1_000)]
    max_inflight: u32,
    /// Journal group-commit window, ms (the production default is 20).
    #[arg(long, default_value_t = 20)]
    flush_ms: u64,
    /// Publisher's QoS1 in-flight window.
    #[arg(long, default_value_t = 1_000)]
    publisher_window: u16,
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

/// A running bench source and its stop switch.
struct Running {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

fn start_source(
    rt: &tokio::runtime::Runtime,
    cfg: &MqttConfig,
    journal: &Journal,
    states: &SourceStates,
) -> Running {
    let stop = CancellationToken::new();
    let ctx = SourceCtx {
        gateway: "bench".into(),
        journal: journal.clone(),
        slot: states.register("bench", "mqtt"),
        shutdown: stop.clone(),
        commands: Default::default(),
    };
    Running {
        task: rt.spawn(mqtt::run(cfg.clone(), ctx)),
        stop,
    }
}

impl Running {
    fn stop(self, rt: &tokio::runtime::Runtime) {
        self.stop.cancel();
        let _ = rt.block_on(self.task);
    }
}

/// The bench topic of message `i`: 16 vehicles × 4 devices.
fn topic(i: u64) -> String {
    format!("fleet/van-{:02}/dev-{}/telemetry", i % 16, i % 4)
}

/// `mosquitto_sub` with the bench's persistent session; `extra` selects the mode.
fn mosquitto_sub(bin: &Path, port: u16, extra: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-i",
            "fieldgate-bench-sub",
            "-c",
            "-q",
            "1",
            "-t",
            "fleet/+/+/+",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c
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
    if !args.mosquitto_sub.is_file() {
        bail!(
            "mosquitto_sub not found at {} (apt install mosquitto-clients, or pass --mosquitto-sub PATH)",
            args.mosquitto_sub.display()
        );
    }
    let port = free_port()?;
    let _broker = Mosquitto::start(
        &args.mosquitto,
        dir,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages {}\nmax_queued_messages 0\nmax_queued_bytes 0\n",
            args.max_inflight
        ),
        &[port],
    )?;
    let url = format!("mqtt://127.0.0.1:{port}");
    let cfg: MqttConfig = toml::from_str(&format!(
        "name = \"bench\"\nurl = \"{url}\"\nclient_id = \"fieldgate-bench-gw\"\n\
         subscriptions = [{{ topic = \"fleet/{{vehicle}}/{{device}}/{{kind}}\", qos = 1 }}]\n"
    ))
    .context("bench source config")?;
    let journal = Journal::open(JournalConfig {
        path: dir.join("journal"),
        flush_ms: Positive(args.flush_ms.max(1)),
        max_bytes: ByteSize(8 << 30),
        ..JournalConfig::default()
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let states = SourceStates::default();
    let mut publisher = RawPublisher::connect(port, "fieldgate-bench-pub", args.publisher_window)?;

    // 1. The gateway's session: subscribed once a warm-up message is journaled; then it
    //    disconnects and the broker keeps its session.
    let src = start_source(&rt, &cfg, &journal, &states);
    let base0 = journal.durable_seq();
    let t0 = Instant::now();
    while journal.durable_seq() == base0 {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "the gateway's MQTT source never subscribed: {:?}",
                states.snapshot()
            );
        }
        publisher.publish("fleet/warm/up/json", b"{}")?;
        publisher.wait_acked(Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    src.stop(&rt);
    // 2. mosquitto_sub's session (-E: exit once subscribed).
    let st = mosquitto_sub(&args.mosquitto_sub, port, &["-E"]).status()?;
    anyhow::ensure!(st.success(), "mosquitto_sub -E failed: {st}");

    // 3. Load the broker: N messages queued for each offline session.
    let t0 = Instant::now();
    for i in 0..n {
        publisher.publish(&topic(i), &payload(i, args.payload_bytes))?;
    }
    publisher.wait_acked(Duration::from_secs(600))?;
    let pub_s = t0.elapsed().as_secs_f64();
    let msg_bytes = payload(0, args.payload_bytes).len();

    // 4. The gateway drains its queue into the durable journal.
    let base = journal.durable_seq();
    let t0 = Instant::now();
    let src = start_source(&rt, &cfg, &journal, &states);
    let limit = Duration::from_secs(120 + n / 500);
    let mut report = Instant::now();
    while journal.durable_seq() < base + n {
        if report.elapsed() > Duration::from_secs(5) {
            report = Instant::now();
            eprintln!(
                "  ... gateway {} of {n} durable ({} appended) after {:.0} s",
                journal.durable_seq() - base,
                journal.last_seq() - base,
                t0.elapsed().as_secs_f64()
            );
        }
        if t0.elapsed() > limit {
            src.stop(&rt);
            bail!(
                "gateway journaled only {} of {n} messages in {limit:?}",
                journal.durable_seq() - base
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let gw_s = t0.elapsed().as_secs_f64();
    src.stop(&rt);
    let (mut bench_frames, mut from) = (0u64, base + 1);
    loop {
        let frames = journal.range(from, 10_000);
        let Some(last) = frames.last() else { break };
        from = last.seq + 1;
        bench_frames += frames
            .iter()
            .filter(|f| f.source.starts_with("mqtt:fleet/van-"))
            .count() as u64;
    }
    journal.close()?;

    // 5. mosquitto_sub drains the same stream.
    let t0 = Instant::now();
    let mut child = mosquitto_sub(&args.mosquitto_sub, port, &["-C", &n.to_string()]).spawn()?;
    let st = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            bail!("mosquitto_sub did not receive {n} messages in {limit:?}");
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let sub_s = t0.elapsed().as_secs_f64();
    anyhow::ensure!(st.success(), "mosquitto_sub failed: {st}");

    let (gw_rate, sub_rate) = (n as f64 / gw_s, n as f64 / sub_s);
    println!(
        "mqtt bench: {n} QoS1 messages of {msg_bytes} B; mosquitto max_inflight_messages {}, journal flush_ms {}",
        args.max_inflight, args.flush_ms
    );
    println!(
        "  publisher (all PUBACKed):     {:>8.0} msg/s ({pub_s:.2} s)",
        n as f64 / pub_s
    );
    println!("  gateway ingest, durable:      {gw_rate:>8.0} frames/s ({gw_s:.2} s, source start -> last frame durable; {bench_frames} of {n} journaled)");
    println!("  mosquitto_sub alone:          {sub_rate:>8.0} msg/s ({sub_s:.2} s, start -> exit)");
    println!("  ratio gateway / mosquitto_sub: {:.2}", gw_rate / sub_rate);
    if bench_frames != n {
        bail!("the journal holds {bench_frames} bench frames, expected {n}");
    }
    Ok(())
}
