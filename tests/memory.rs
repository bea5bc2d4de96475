//! Peak memory where large payloads travel. 1,000 frames whose payload is 64 KiB of small
//! numbers (`{"lat":..,"lon":..,"a":[0,0,...]}`: 64 KiB as text, over a megabyte as a
//! `serde_json::Value` tree) must not blow up a gateway that has 1 GiB of RAM to share:
//! start-up (the live status is seeded from the newest frames), `GET /api/frames` paged
//! to the end, a WebSocket `subscribe {from_seq: 1}` read to the last frame, and MQTT
//! ingest of the same frames each stay under 64 MB peak RSS (`VmHWM` of a fresh
//! `fieldgate run`).

mod common;

use common::mqtt::{probe_until, publish_all, Mosquitto};
use common::{run_cli, ws_connect, ws_next_of, ws_send, Gateway};
use fieldgate::frame::Frame;
use fieldgate::journal::{Journal, JournalConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const FRAMES: u64 = 1_000;
/// The bound on every path, kB.
const PEAK_MAX_KB: u64 = 64 * 1024;

/// Just under 64 KiB of JSON (the MQTT source's default `max_frame` is 65,536 bytes).
fn big_payload() -> String {
    let zeros = vec!["0"; 32_740].join(",");
    let text = format!("{{\"lat\":52.52,\"lon\":13.40,\"a\":[{zeros}]}}");
    assert!(
        text.len() > 65_000 && text.len() <= 65_536,
        "{}",
        text.len()
    );
    text
}

/// A gateway config on `journal` (plus `extra` lines) with an admin key; returns (config
/// path, port, key).
fn config(dir: &Path, journal: &Path, extra: &str) -> (PathBuf, u16, String) {
    let port = common::free_port();
    let path = dir.join(format!("gw-{port}.toml"));
    let text = format!(
        "[gateway]\nid = \"gw-mem\"\n[journal]\npath = \"{}\"\nflush_ms = 10\n\
         [listen]\naddress = \"127.0.0.1:{port}\"\n{extra}",
        journal.display()
    );
    std::fs::write(&path, text).expect("write config");
    let cfg = path.to_string_lossy().to_string();
    let (code, out, err) = run_cli(&["keys", "add", "t", "--scopes", "admin", "--config", &cfg]);
    assert_eq!(code, 0, "keys add: {err}");
    (path, port, out.trim().to_string())
}

/// A journal holding `FRAMES` big frames of vehicle `van-1` (registered), seqs 1..=FRAMES.
fn big_journal(dir: &Path) -> PathBuf {
    let path = dir.join("journal");
    let j = Journal::open(JournalConfig {
        path: path.clone(),
        ..JournalConfig::default()
    })
    .expect("open journal");
    let payload: Value = serde_json::from_str(&big_payload()).expect("payload");
    for _ in 0..FRAMES {
        let mut f = Frame::new("gw-mem", "mqtt:big", "dev-1", "big", payload.clone());
        f.vehicle = Some("van-1".into());
        let seq = j.append(f).expect("append");
        j.wait_durable_blocking(seq).expect("durable");
    }
    j.tree("vehicles")
        .expect("tree")
        .insert("van-1", &br#"{"id":"van-1"}"#[..])
        .expect("register vehicle");
    j.close().expect("close");
    path
}

/// Start a gateway on the big journal; `check` runs against it; returns its peak RSS.
fn peak_of(dir: &Path, journal: &Path, what: &str, check: impl FnOnce(&Gateway)) -> u64 {
    let (cfg, port, key) = config(dir, journal, "");
    let gw = Gateway::run(&cfg, port, &key, &dir.join("logs"));
    check(&gw);
    let kb = gw.peak_rss_kb();
    eprintln!("{what}: peak RSS {kb} kB ({:.1} MB)", kb as f64 / 1024.0);
    gw.stop();
    kb
}

#[test]
fn start_up_seeds_the_live_status_without_parsing_whole_payloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = big_journal(dir.path());
    let kb = peak_of(dir.path(), &journal, "start-up", |gw| {
        // The live status came from the stored frames: last seq and position.
        let v = gw.get_until("/api/vehicles/van-1", Duration::from_secs(20), |v| {
            v["live"]["last_seq"] == FRAMES
        });
        assert_eq!(v["live"]["position"], json!([52.52, 13.40]), "{v}");
    });
    assert!(kb <= PEAK_MAX_KB, "start-up peaked at {kb} kB");
}

#[test]
fn api_frames_pages_large_frames_by_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = big_journal(dir.path());
    let kb = peak_of(dir.path(), &journal, "GET /api/frames", |gw| {
        let mut next = 1u64;
        let mut seqs = Vec::new();
        let mut pages = 0;
        loop {
            let (code, page) = gw.get(&format!("/api/frames?limit=1000&from_seq={next}"));
            assert_eq!(code, 200, "{page}");
            pages += 1;
            let frames = page["frames"].as_array().expect("frames");
            assert_eq!(page["count"], frames.len());
            for f in frames {
                assert_eq!(f["payload"]["a"].as_array().map(Vec::len), Some(32_740));
                seqs.push(f["seq"].as_u64().expect("seq"));
            }
            match page["next_seq"].as_u64() {
                Some(n) => {
                    assert_eq!(page["truncated"], true, "a short page says why");
                    next = n;
                }
                None => break,
            }
        }
        assert_eq!(
            seqs,
            (1..=FRAMES).collect::<Vec<_>>(),
            "every frame once, in order"
        );
        assert!(pages > 1, "1,000 frames of 64 KiB do not fit in one reply");
    });
    assert!(kb <= PEAK_MAX_KB, "GET /api/frames peaked at {kb} kB");
}

#[test]
fn websocket_backfill_of_large_frames_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = big_journal(dir.path());
    let kb = peak_of(dir.path(), &journal, "WS subscribe from_seq 1", |gw| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let (mut ws, _) = ws_connect(gw.port, "/ws", Some(&gw.key), Some("mem"))
                .await
                .expect("connect");
            ws_next_of(&mut ws, "welcome").await;
            ws_send(
                &mut ws,
                json!({"type": "subscribe", "data": {"from_seq": 1}}),
            )
            .await;
            ws_next_of(&mut ws, "subscribed").await;
            for want in 1..=FRAMES {
                let f = ws_next_of(&mut ws, "frame").await;
                assert_eq!(f["data"]["seq"], want);
                assert_eq!(f["data"]["payload"]["lat"], 52.52);
            }
        });
    });
    assert!(kb <= PEAK_MAX_KB, "WebSocket backfill peaked at {kb} kB");
}

#[test]
fn mqtt_ingest_of_large_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_conf(dir.path(), "max_queued_messages 0\n");
    let source = format!(
        "[[sources.mqtt]]\nname = \"broker\"\nurl = \"{}\"\nclient_id = \"gw-mem\"\n\
         subscriptions = [{{ topic = \"fleet/{{vehicle}}/{{device}}/{{kind}}\", qos = 1 }}]\n",
        broker.url()
    );
    let (cfg, port, key) = config(dir.path(), &dir.path().join("journal"), &source);
    let gw = Gateway::run(&cfg, port, &key, &dir.path().join("logs"));
    gw.status_until(Duration::from_secs(30), |s| {
        s["sources"]["broker"]["state"] == "running"
    });
    let last_seq = || {
        gw.get("/api/status").1["journal"]["last_seq"]
            .as_u64()
            .unwrap_or(0)
    };
    probe_until(broker.port, "fleet/van-1/dev-1/probe", last_seq);
    let base = last_seq();
    let text = big_payload().into_bytes();
    let messages = (0..FRAMES)
        .map(|_| ("fleet/van-1/dev-1/big".to_string(), text.clone()))
        .collect();
    publish_all(broker.port, "mem-pub", messages);
    gw.status_until(Duration::from_secs(120), |s| {
        s["journal"]["durable_seq"].as_u64() >= Some(base + FRAMES)
    });
    let kb = gw.peak_rss_kb();
    eprintln!(
        "MQTT ingest: peak RSS {kb} kB ({:.1} MB)",
        kb as f64 / 1024.0
    );
    gw.stop();
    assert!(kb <= PEAK_MAX_KB, "MQTT ingest peaked at {kb} kB");
}
