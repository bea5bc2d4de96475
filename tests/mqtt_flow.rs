//! The MQTT source under pressure, against a real mosquitto and `fieldgate run`.
//!
//! - A disk that stops answering in the middle of a QoS1 flood (the journal on an ext4 image
//!   frozen with `fsfreeze`: every write blocks until it is thawed): the gateway stops
//!   reading from the broker instead of queueing without bound or dropping, its write queue
//!   stays within `journal.pending_max_bytes`, and every message the publisher got a PUBACK
//!   for is in the journal afterwards.
//! - A burst through a broker on Debian's stock config (`max_inflight_messages 20`,
//!   `max_queued_messages 1000`): fieldgate journals at least as many messages as a
//!   `mosquitto_sub -q 1` subscribed beside it receives, and the broker's own drop counter
//!   shows in `/api/status`. Ignored for now: fieldgate acks after the fsync and still
//!   falls behind `mosquitto_sub` in some rounds.

mod common;

use common::mqtt::{journal_ids, probe_until, Mosquitto, Publisher};
use common::{run_cli, Gateway};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOURCE: &str = "broker";

/// A gateway config with one MQTT source (`extra` lines added to it); returns (config,
/// port, key).
fn config(dir: &Path, journal: &Path, broker_url: &str, extra: &str) -> (PathBuf, u16, String) {
    let port = common::free_port();
    let path = dir.join("fieldgate.toml");
    let text = format!(
        r#"
[gateway]
id = "gw-flow"
[journal]
path = "{journal}"
flush_ms = 20
[listen]
address = "127.0.0.1:{port}"
[[sources.mqtt]]
name = "{SOURCE}"
url = "{broker_url}"
client_id = "fieldgate-flow"
keep_alive_s = 5
{extra}
subscriptions = [{{ topic = "fleet/{{vehicle}}/{{device}}/{{kind}}", qos = 1 }}]
"#,
        journal = journal.display(),
    );
    std::fs::write(&path, text).expect("write config");
    let cfg = path.to_string_lossy().to_string();
    let (code, out, err) = run_cli(&["keys", "add", "t", "--scopes", "admin", "--config", &cfg]);
    assert_eq!(code, 0, "keys add: {err}");
    (path, port, out.trim().to_string())
}

fn start(cfg: &Path, port: u16, key: &str, logs: &Path) -> Gateway {
    let gw = Gateway::run(cfg, port, key, logs);
    gw.status_until(Duration::from_secs(60), |s| {
        s["sources"][SOURCE]["state"] == "running"
    });
    gw
}

fn journal_u64(status: &Value, key: &str) -> u64 {
    status["journal"][key].as_u64().unwrap_or(0)
}

/// Run a command to success.
fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ext4 filesystem on a loop-mounted image file (needs root, as CI has); unmounted on
/// drop.
struct LoopDisk {
    mnt: PathBuf,
}

impl LoopDisk {
    fn mount(dir: &Path, mib: u64) -> LoopDisk {
        let img = dir.join("disk.img");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mount point");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image file");
        sh("mkfs.ext4", &["-q", "-F", &img.to_string_lossy()]);
        sh(
            "mount",
            &["-o", "loop", &img.to_string_lossy(), &mnt.to_string_lossy()],
        );
        LoopDisk { mnt }
    }

    /// Freeze the filesystem: every write to it blocks until the guard is dropped.
    fn freeze(&self) -> Frozen {
        sh("fsfreeze", &["-f", &self.mnt.to_string_lossy()]);
        Frozen(self.mnt.clone())
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// A frozen filesystem; thawed on drop. Declare it after the gateway that writes to it, so
/// a failing test thaws the disk before it kills the gateway (a process blocked on a
/// frozen disk cannot die).
struct Frozen(PathBuf);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).status();
    }
}

/// Wait until the journal has written everything it was given and nothing new arrived
/// for 3 s; returns the last status.
fn settled(gw: &Gateway, limit: Duration) -> Value {
    let t0 = Instant::now();
    let (mut last, mut since) = (u64::MAX, Instant::now());
    loop {
        let (_, s) = gw.get("/api/status");
        let seq = journal_u64(&s, "last_seq");
        if seq != last {
            (last, since) = (seq, Instant::now());
        }
        if since.elapsed() >= Duration::from_secs(3) && journal_u64(&s, "durable_seq") == seq {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "journal never settled: {s}\nlog:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stalled_disk_under_a_qos1_flood_acks_nothing_it_did_not_write() {
    // More than the 262,144 frames the journal once queued before it dropped (and still
    // acked) the oldest.
    const N: u64 = 300_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = LoopDisk::mount(dir.path(), 512);
    // Unlimited in-flight window and queue: the broker pushes everything at us and keeps
    // everything we have not acked, so any loss is ours.
    let broker = Mosquitto::start_conf(
        dir.path(),
        "max_inflight_messages 0\nmax_queued_messages 0\nmax_queued_bytes 0\n",
    );
    let journal = disk.mnt.join("journal");
    let (cfg, port, key) = config(dir.path(), &journal, &broker.url(), "");
    let logs = dir.path().join("logs");
    let gw = start(&cfg, port, &key, &logs);
    let topic = |i: u64| format!("fleet/van-{}/dev-{}/flood", i % 3, i % 5);
    let publisher = Publisher::start(broker.port, "flood", N, 0, Duration::ZERO, topic);
    gw.status_until(Duration::from_secs(60), |s| {
        journal_u64(s, "durable_seq") >= 5_000
    });

    let frozen = disk.freeze();
    publisher.wait_acked(N, Duration::from_secs(300));
    // The broker holds all of it now; give the gateway time to take whatever it will.
    let (mut seen, mut since, mut paused) = (0, Instant::now(), false);
    while since.elapsed() < Duration::from_secs(3) {
        let (_, s) = gw.get("/api/status");
        paused |= s["sources"][SOURCE]["state"] == "paused";
        if journal_u64(&s, "last_seq") != seen {
            (seen, since) = (journal_u64(&s, "last_seq"), Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = gw.get("/api/status").1;
    eprintln!(
        "disk frozen: {seen} frames taken of {N}, write queue {} bytes (bound {}), source {}",
        during["journal"]["pending_bytes"],
        during["journal"]["pending_max_bytes"],
        during["sources"][SOURCE]["state"]
    );
    drop(frozen);

    let after = settled(&gw, Duration::from_secs(300));
    gw.stop();
    // A second run collects whatever the broker still holds for us (nothing it was told
    // is on disk may be missing, anything else it sends again).
    let gw = start(&cfg, port, &key, &logs);
    settled(&gw, Duration::from_secs(300));
    gw.stop();
    drop(publisher);

    let (ids, other) = journal_ids(&journal);
    let missing: Vec<u64> = (0..N).filter(|i| !ids.contains_key(i)).collect();
    eprintln!(
        "journal: {} of {N} ids, {} duplicates, {} missing",
        ids.len(),
        ids.values().map(|c| c - 1).sum::<u64>(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged messages are not on disk, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(other.is_empty(), "unexpected frames: {:?}", &other[..1]);
    let (peak, bound) = (
        journal_u64(&after, "pending_peak_bytes"),
        journal_u64(&after, "pending_max_bytes"),
    );
    assert!(
        bound > 0 && peak <= bound,
        "write queue peaked at {peak} of {bound} bytes"
    );
    assert!(
        journal_u64(&after, "full") > 0,
        "the flood never filled the write queue"
    );
    assert!(
        paused,
        "the source never showed as paused while the disk was frozen"
    );
}

/// Lines `mosquitto_sub` wrote to `path` whose payload is `{"id":N}` with N in `range`.
fn sub_received(path: &Path, range: std::ops::Range<u64>) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["id"].as_u64())
        .filter(|id| range.contains(id))
        .count() as u64
}

/// `mosquitto_pub -q 1 -l` of `{"id":N}` for every N in `ids`, unpaced, to completion.
fn burst(port: u16, topic: &str, ids: std::ops::Range<u64>) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (mosquitto-clients)");
    let mut lines = String::new();
    for id in ids {
        lines.push_str(&format!("{{\"id\":{id}}}\n"));
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(lines.as_bytes()).expect("write lines");
    drop(stdin);
    let st = common::wait_exit(&mut child, Duration::from_secs(120)).expect("mosquitto_pub exits");
    assert!(st.success(), "mosquitto_pub: {st}");
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `count` until it has not changed for 3 s (120 s at most).
fn stable(count: impl Fn() -> u64) -> u64 {
    let t0 = Instant::now();
    let (mut last, mut since) = (count(), Instant::now());
    while since.elapsed() < Duration::from_secs(3) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "count never settled"
        );
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

#[test]
#[ignore = "fails on a loaded 2-core box (2026-12-01: 4,444 and 2,522 of 5,000 journaled \
            while mosquitto_sub got 5,000); run with --ignored to print the counts"]
fn a_burst_through_a_stock_broker_loses_no_more_than_mosquitto_sub() {
    const BURST: u64 = 5_000;
    const ROUNDS: u64 = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    // Debian's mosquitto as installed: no tuning at all.
    let broker = Mosquitto::start_conf(dir.path(), "");
    let (cfg, port, key) = config(dir.path(), &dir.path().join("journal"), &broker.url(), "");
    let gw = start(&cfg, port, &key, &dir.path().join("logs"));
    let sub_out = dir.path().join("sub.txt");
    let _sub = Killed(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
            .args(["-t", "fleet/#", "-i", "burst-sub"])
            .stdout(std::fs::File::create(&sub_out).expect("sub output"))
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (mosquitto-clients)"),
    );
    let journaled = || {
        let (_, s) = gw.get("/api/status");
        s["sources"][SOURCE]["frames"].as_u64().unwrap_or(0)
    };
    let sub_lines = || {
        let text = std::fs::read_to_string(&sub_out).unwrap_or_default();
        text.lines().count() as u64
    };
    probe_until(broker.port, "fleet/probe/probe/probe", journaled);
    probe_until(broker.port, "fleet/probe/probe/probe", sub_lines);

    let mut counts = Vec::new();
    for round in 0..ROUNDS {
        let ids = round * BURST..(round + 1) * BURST;
        let before = stable(journaled);
        burst(broker.port, "fleet/van-1/dev-1/burst", ids.clone());
        let fieldgate = stable(journaled) - before;
        let subscriber = stable(|| sub_received(&sub_out, ids.clone()));
        eprintln!(
            "stock broker, burst of {BURST}: fieldgate journaled {fieldgate}, \
             mosquitto_sub received {subscriber}"
        );
        counts.push((fieldgate, subscriber));
    }
    let lost_any = counts.iter().any(|&(f, s)| f < BURST || s < BURST);
    for (round, &(fieldgate, subscriber)) in counts.iter().enumerate() {
        assert!(
            fieldgate >= subscriber,
            "round {round}: fieldgate journaled {fieldgate} of {BURST}, mosquitto_sub got {subscriber}"
        );
    }
    if lost_any {
        // The broker counts what it dropped; it publishes that every 10 s.
        gw.status_until(Duration::from_secs(30), |s| {
            s["sources"][SOURCE]["broker"]["publish/messages/dropped"].as_u64() > Some(0)
        });
    }
    let s = gw.status_until(Duration::from_secs(30), |s| {
        s["sources"][SOURCE]["broker"]["publish/messages/received"].as_u64() >= Some(ROUNDS * BURST)
    });
    eprintln!(
        "broker counters in /api/status: {}",
        s["sources"][SOURCE]["broker"]
    );
    gw.stop();
}
