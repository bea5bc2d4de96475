//! The MQTT source end to end against a real mosquitto and the real `fieldgate run`:
//! QoS1 messages acknowledged only after the journal flush survive kill -9 of the gateway
//! and a broker restart with nothing lost, and malformed input is counted, logged and
//! acknowledged without disturbing the connection.

mod common;

use common::mqtt::{journal_ids, presubscribe, publish_all, Mosquitto, Publisher};
use common::{run_cli, Gateway};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SOURCE: &str = "broker";
const CLIENT_ID: &str = "fieldgate-test";

/// A gateway config with one MQTT source, its journal, port and API key.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    key: String,
}

impl Setup {
    fn new(broker_url: &str) -> Setup {
        Setup::with(broker_url, "")
    }

    /// A setup whose MQTT source section also has the lines `extra`.
    fn with(broker_url: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = common::free_port();
        let text = format!(
            r#"
[gateway]
id = "gw-mqtt"

[journal]
path = "{journal}"
flush_ms = 5

[listen]
address = "127.0.0.1:{port}"

[[sources.mqtt]]
name = "{SOURCE}"
url = "{broker_url}"
client_id = "{CLIENT_ID}"
keep_alive_s = 5
max_frame = 65536
{extra}
subscriptions = [{{ topic = "fleet/{{vehicle}}/{{device}}/{{kind}}", qos = 1 }}]
"#,
            journal = dir.path().join("journal").display(),
        );
        let config = dir.path().join("fieldgate.toml");
        std::fs::write(&config, text).expect("write config");
        let cfg = config.to_string_lossy().to_string();
        let (code, out, err) =
            run_cli(&["keys", "add", "test", "--scopes", "admin", "--config", &cfg]);
        assert_eq!(code, 0, "keys add: {err}");
        Setup {
            dir,
            port,
            key: out.trim().to_string(),
        }
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Start the gateway and wait until its MQTT source is connected.
    fn start(&self) -> Gateway {
        let gw = Gateway::run(
            &self.dir.path().join("fieldgate.toml"),
            self.port,
            &self.key,
            &self.logs(),
        );
        gw.status_until(Duration::from_secs(60), |s| source(s)["state"] == "running");
        gw
    }
}

fn source(status: &Value) -> &Value {
    &status["sources"][SOURCE]
}

fn topic(i: u64) -> String {
    format!("fleet/van-{}/dev-{}/telemetry", i % 3, i % 5)
}

/// Wait until the journal holds at least `n` frames and stops growing for 3 s.
fn wait_settled(gw: &Gateway, n: u64, limit: Duration) -> u64 {
    let t0 = Instant::now();
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let (code, s) = gw.get("/api/status");
        let frames = s["journal"]["frames"].as_u64().unwrap_or(0);
        if code == 200 && frames != last {
            (last, since) = (frames, Instant::now());
        }
        if last >= n && since.elapsed() >= Duration::from_secs(3) {
            return last;
        }
        assert!(
            t0.elapsed() < limit,
            "journal stuck at {last} frames (want {n}); log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Publish a marker message (device `marker`) and wait, bounded, until it is journaled;
/// the source's status then. The broker resends a session's unacknowledged and queued
/// messages when the gateway connects, before anything published later, so once the
/// marker is in, anything redelivered would be too.
fn after_marker(gw: &Gateway, broker_port: u16, payload: String) -> Value {
    publish_all(
        broker_port,
        "test-marker",
        vec![("fleet/van-0/marker/probe".into(), payload.into_bytes())],
    );
    gw.get_until("/api/frames?device=marker", Duration::from_secs(30), |f| {
        f["count"] == 1
    });
    gw.get("/api/status").1
}

/// Assert every id in 0..n is in the journal at `path`; returns the duplicate count.
fn assert_all_ids(path: &Path, n: u64) -> u64 {
    let (ids, other) = journal_ids(path);
    let missing: Vec<u64> = (0..n).filter(|i| !ids.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(other.is_empty(), "unexpected frames: {:?}", &other[..1]);
    ids.values().map(|c| c - 1).sum()
}

#[test]
fn qos1_stream_survives_two_gateway_kill9s_with_nothing_lost() {
    const N: u64 = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path(), 1000);
    let setup = Setup::new(&broker.url());
    let mut gw = setup.start();
    // ~100 messages per 20 ms: the stream lasts a few seconds, across both kills.
    let publisher = Publisher::start(
        broker.port,
        "test-publisher",
        N,
        100,
        Duration::from_millis(20),
        topic,
    );
    let mut kills = Vec::new();
    for _ in 0..2 {
        // Kill once this run has journaled something, i.e. mid-ingest.
        gw.status_until(Duration::from_secs(60), |s| {
            source(s)["frames"].as_u64().unwrap_or(0) >= 300
        });
        let queued = publisher.queued();
        gw.child.kill().expect("SIGKILL");
        gw.child.wait().expect("reap");
        kills.push(queued);
        drop(gw);
        gw = setup.start();
    }
    publisher.wait_acked(N, Duration::from_secs(120));
    let frames = wait_settled(&gw, N, Duration::from_secs(180));
    let st = gw.stop();
    assert!(st.success(), "gateway exit {st}");
    let dups = assert_all_ids(&setup.journal(), N);
    eprintln!(
        "{N} QoS1 messages, gateway kill -9'd after the publisher had queued {kills:?}: \
         0 lost, {frames} frames journaled, {dups} duplicates (journaled, not yet acked at the kill)"
    );
}

#[test]
fn a_backlog_delivered_all_at_once_is_journaled_and_the_gateway_stops_cleanly() {
    // A broker without an in-flight limit hands a reconnecting gateway its whole backlog at
    // once: more PUBACKs owed than rumqttc's request channel holds (4096). The event loop
    // must keep turning while the acks drain (a regression: it once waited on the ack
    // task, which waited on the event loop, and the source hung for good).
    const N: u64 = 12_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path(), 0);
    let setup = Setup::new(&broker.url());
    let gw = setup.start();
    assert!(gw.stop().success(), "first stop");
    let publisher = Publisher::start(
        broker.port,
        "test-backlog-publisher",
        N,
        1000,
        Duration::from_millis(10),
        topic,
    );
    publisher.wait_acked(N, Duration::from_secs(120));
    let gw = setup.start();
    let frames = wait_settled(&gw, N, Duration::from_secs(120));
    let (_, s) = gw.get("/api/status");
    assert_eq!(source(&s)["state"], "running", "{s}");
    let t0 = Instant::now();
    let st = gw.stop();
    assert!(st.success(), "gateway exit {st}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "slow stop: {:?}",
        t0.elapsed()
    );
    // Every journaled message was acked before the clean stop (most of them written
    // behind one PUBACK request per commit, see ack.rs): the broker redelivers nothing.
    let gw = setup.start();
    let s = after_marker(&gw, broker.port, format!("{{\"id\": {N}}}"));
    assert_eq!(
        source(&s)["frames"],
        1,
        "acked frames were redelivered (only the marker is new): {s}"
    );
    assert!(gw.stop().success(), "second stop");
    let dups = assert_all_ids(&setup.journal(), N);
    eprintln!("backlog of {N}: {frames} frames journaled, {dups} duplicates, 0 lost");
}

#[test]
fn broker_restart_mid_stream_reconnects_and_loses_nothing_acked() {
    const N: u64 = 5_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Mosquitto::start(dir.path(), 1000);
    let setup = Setup::new(&broker.url());
    let gw = setup.start();
    let publisher = Publisher::start(
        broker.port,
        "test-publisher",
        N,
        100,
        Duration::from_millis(20),
        topic,
    );
    gw.status_until(Duration::from_secs(60), |s| {
        source(s)["frames"].as_u64().unwrap_or(0) >= 500
    });
    broker.restart();
    // The source noticed the outage (or reconnected already) and comes back.
    gw.status_until(Duration::from_secs(60), |s| {
        let log = gw.log();
        source(s)["state"] == "running" && log.contains("MQTT broker connection restored")
    });
    publisher.wait_acked(N, Duration::from_secs(120));
    let frames = wait_settled(&gw, N, Duration::from_secs(180));
    let log = gw.log();
    assert_eq!(
        log.matches("MQTT broker unreachable").count(),
        1,
        "one log line per outage:\n{log}"
    );
    let st = gw.stop();
    assert!(st.success(), "gateway exit {st}");
    let dups = assert_all_ids(&setup.journal(), N);
    eprintln!(
        "{N} QoS1 messages across a broker restart: 0 lost, {frames} frames, {dups} duplicates"
    );
}

#[test]
fn bad_topics_empty_and_oversize_payloads_are_counted_acked_and_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path(), 100);
    let setup = Setup::new(&broker.url());
    // A session left over from an older config: the broker keeps delivering `legacy/#`.
    presubscribe(broker.port, CLIENT_ID, "legacy/#");
    let gw = setup.start();
    let big = vec![b'x'; 1 << 20];
    publish_all(
        broker.port,
        "test-bad-publisher",
        vec![
            ("fleet/van-1/gps0/gps".into(), br#"{"id": 1}"#.to_vec()),
            ("legacy/van-1/gps0".into(), br#"{"old": true}"#.to_vec()),
            ("fleet//gps0/gps".into(), br#"{"no": "vehicle"}"#.to_vec()),
            ("fleet/van-1/gps0/gps".into(), Vec::new()),
            ("fleet/van-1/cam0/image".into(), big),
            ("fleet/van-1/can0/raw".into(), vec![0xff, 0x00, 0x10]),
            ("fleet/van-1/obd0/rpm".into(), b"812".to_vec()),
            ("fleet/van-1/gps0/gps".into(), br#"{"id": 2}"#.to_vec()),
        ],
    );
    let s = gw.status_until(Duration::from_secs(60), |s| {
        source(s)["frames"].as_u64().unwrap_or(0) >= 4
            && source(s)["invalid"].as_u64().unwrap_or(0) >= 4
    });
    let src = source(&s);
    assert_eq!(src["frames"], 4, "{src}");
    assert_eq!(src["invalid_by_reason"]["wrong_topic"], 2, "{src}");
    assert_eq!(src["invalid_by_reason"]["empty"], 1, "{src}");
    assert_eq!(src["invalid_by_reason"]["too_long"], 1, "{src}");
    assert_eq!(src["state"], "running", "{src}");
    let log = gw.log();
    for reason in ["wrong_topic", "empty", "too_long"] {
        assert!(
            log.contains("MQTT message rejected") && log.contains(&format!("reason=\"{reason}\"")),
            "no log line for {reason}:\n{log}"
        );
    }
    assert!(
        !log.contains("unreachable"),
        "the 1 MB payload disturbed the connection:\n{log}"
    );
    // Rejected messages were acknowledged: a restarted gateway does not get them again.
    gw.stop();
    let gw = setup.start();
    let s = after_marker(&gw, broker.port, r#"{"marker": true}"#.into());
    assert_eq!(source(&s)["invalid"], 0, "rejects were redelivered: {s}");
    assert_eq!(source(&s)["frames"], 1, "frames were redelivered: {s}");
    gw.stop();

    let (ids, other) = journal_ids(&setup.journal());
    assert_eq!(ids.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    let by_kind = |k: &str| {
        other
            .iter()
            .find(|f| f.kind == k)
            .unwrap_or_else(|| panic!("no {k} frame in {other:?}"))
    };
    let raw = by_kind("raw");
    assert_eq!(raw.payload, serde_json::json!({"raw_b64": "/wAQ"}));
    assert_eq!(
        (
            raw.device.as_str(),
            raw.vehicle.as_deref(),
            raw.source.as_str()
        ),
        ("can0", Some("van-1"), "mqtt:fleet/van-1/can0/raw")
    );
    assert_eq!(by_kind("rpm").payload, serde_json::json!({"value": 812}));
}

#[test]
fn topic_level_ids_are_validated_and_distinct_devices_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path(), 100);
    let setup = Setup::with(&broker.url(), "max_devices = 5");
    let gw = setup.start();
    let mut messages: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("fleet/van-1/dev-{i}/t"),
                format!("{{\"n\": {i}}}").into_bytes(),
            )
        })
        .collect();
    // A device already journaled stays welcome after the cap is reached.
    messages.push(("fleet/van-1/dev-0/t".into(), br#"{"n": 100}"#.to_vec()));
    for topic in [
        "fleet/<img src=x onerror=alert(1)>/gps0/gps",
        "fleet/van-1/dev ice/gps",
        &format!("fleet/van-1/{}/gps", "d".repeat(65)),
        "fleet/van-1/gps0/k\u{e9}",
    ] {
        messages.push((topic.to_string(), br#"{"x": 1}"#.to_vec()));
    }
    publish_all(broker.port, "test-many-devices", messages);
    let s = gw.status_until(Duration::from_secs(60), |s| {
        source(s)["frames"].as_u64().unwrap_or(0) + source(s)["invalid"].as_u64().unwrap_or(0) >= 25
    });
    let src = source(&s);
    assert_eq!(src["frames"], 6, "{src}");
    let reasons = &src["invalid_by_reason"];
    assert_eq!(reasons["too_many_devices"], 15, "{src}");
    assert_eq!(reasons["bad_vehicle_id"], 1, "{src}");
    assert_eq!(reasons["bad_device_id"], 2, "{src}");
    assert_eq!(reasons["bad_kind"], 1, "{src}");
    gw.stop();
    let (_, frames) = journal_ids(&setup.journal());
    let devices: std::collections::BTreeSet<&str> =
        frames.iter().map(|f| f.device.as_str()).collect();
    assert_eq!(
        devices,
        ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"]
            .into_iter()
            .collect()
    );
    assert!(frames.iter().all(|f| fieldgate::config::valid_id(&f.device)
        && f.vehicle
            .as_deref()
            .is_some_and(fieldgate::config::valid_id)
        && fieldgate::config::valid_id(&f.kind)));
}

#[test]
fn websocket_commands_are_published_to_the_device_command_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path(), 100);
    let setup = Setup::new(&broker.url());
    // [[sources.mqtt]] is the config's last table: append its command topic.
    let cfg = setup.dir.path().join("fieldgate.toml");
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(
        "command_topic = \"fleet/{vehicle}/{device}/cmd\"\ncommand_devices = [\"gps*\"]\n",
    );
    std::fs::write(&cfg, text).expect("config");
    // A device-side listener with a persistent session: the broker queues its commands.
    common::mqtt::presubscribe(broker.port, "device-gps0", "fleet/van-1/gps0/cmd");
    let gw = setup.start();
    common::mqtt::publish_all(
        broker.port,
        "device-gps0-pub",
        vec![("fleet/van-1/gps0/gps".into(), br#"{"lat": 53.5}"#.to_vec())],
    );
    gw.status_until(Duration::from_secs(30), |s| source(s)["frames"] == 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let reply = rt.block_on(async {
        let (mut ws, _) = common::ws_connect(setup.port, "/ws", Some(&setup.key), Some("tech"))
            .await
            .expect("ws");
        common::ws_send(
            &mut ws,
            serde_json::json!({"type": "command",
            "data": {"device": "gps0", "payload": {"rate_hz": 5}}}),
        )
        .await;
        common::ws_next_of(&mut ws, "command").await
    });
    assert_eq!(reply["message"], "sent", "{reply}");
    let got = rt.block_on(async {
        let mut o = rumqttc::MqttOptions::new("device-gps0", "127.0.0.1", broker.port);
        o.set_clean_session(false);
        let (_client, mut ev) = rumqttc::AsyncClient::new(o, 10);
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = ev.poll().await {
                    return (p.topic, p.payload.to_vec());
                }
            }
        })
        .await
        .expect("command delivered to the device within 20 s")
    });
    assert_eq!(got.0, "fleet/van-1/gps0/cmd");
    assert_eq!(got.1, br#"{"rate_hz":5}"#.to_vec());
    assert!(gw.stop().success());
}

/// Run openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, plus an unrelated CA.
fn make_certs(dir: &Path) {
    let ext = dir.join("san.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").expect("san.ext");
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=fieldgate test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

#[test]
fn mqtts_to_mosquitto_with_a_private_ca_and_a_wrong_ca_is_refused() {
    const N: u64 = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    make_certs(&certs);
    let tls_port = common::free_port();
    let broker = Mosquitto::start_with(
        dir.path(),
        1000,
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/server.pem\nkeyfile {c}/server.key\n",
            c = certs.display()
        ),
    );
    let url = format!("mqtts://127.0.0.1:{tls_port}");

    // Trusting another CA: the handshake fails, the source says why and keeps retrying.
    let wrong = Setup::with(
        &url,
        &format!("ca_file = \"{}/other-ca.pem\"", certs.display()),
    );
    let gw = Gateway::run(
        &wrong.dir.path().join("fieldgate.toml"),
        wrong.port,
        &wrong.key,
        &wrong.logs(),
    );
    let s = gw.status_until(Duration::from_secs(30), |s| {
        source(s)["state"] == "waiting" && source(s)["last_error"].is_string()
    });
    let err = source(&s)["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(err.contains("certificate") || err.contains("tls"), "{err}");
    assert!(gw.stop().success());

    // Trusting the broker's CA: connected over TLS, every message journaled.
    let setup = Setup::with(&url, &format!("ca_file = \"{}/ca.pem\"", certs.display()));
    let gw = setup.start();
    let publisher = Publisher::start(
        broker.port,
        "test-tls-publisher",
        N,
        100,
        Duration::from_millis(10),
        topic,
    );
    publisher.wait_acked(N, Duration::from_secs(60));
    let frames = wait_settled(&gw, N, Duration::from_secs(60));
    assert!(gw.stop().success());
    let dups = assert_all_ids(&setup.journal(), N);
    eprintln!("mqtts: {frames} frames, {dups} duplicates, 0 lost; wrong CA refused: {err}");
}
