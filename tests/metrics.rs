//! `/metrics` by the Prometheus rules, scraped from a real `fieldgate run` with a simulated
//! vehicle and an MQTT source on a real mosquitto: every family declared with `# HELP` and
//! `# TYPE`, rejects labelled by source and reason, and counters that never fall — across a
//! WebSocket client's disconnect in particular.

mod common;

use common::mqtt::{publish_all, Mosquitto};
use common::{free_port, run_cli, ws_connect, ws_next, Gateway};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One scrape: family → (help, type) and series (`name{labels}`) → value.
struct Scrape {
    families: BTreeMap<String, (Option<String>, Option<String>)>,
    series: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    /// Parse the text format, asserting the rules a scraper relies on.
    fn parse(text: String) -> Scrape {
        let mut families: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        let mut series = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                let f = families.entry(name.to_string()).or_default();
                assert!(f.0.is_none(), "two HELP lines for {name}");
                assert!(f.1.is_none(), "HELP after TYPE for {name}");
                f.0 = Some(help.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                let f = families.entry(name.to_string()).or_default();
                assert!(f.1.is_none(), "two TYPE lines for {name}");
                f.1 = Some(kind.to_string());
            } else {
                let (key, value) = line.rsplit_once(' ').expect("sample: series value");
                let name = key.split('{').next().unwrap_or(key);
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| name.strip_suffix(s))
                    .find(|f| {
                        families
                            .get(*f)
                            .is_some_and(|t| t.1.as_deref() == Some("histogram"))
                    })
                    .unwrap_or(name);
                let declared = families.get(family);
                assert!(
                    declared.is_some_and(|(h, t)| h.is_some() && t.is_some()),
                    "{name} has no # HELP and # TYPE before its samples:\n{text}"
                );
                if declared.and_then(|d| d.1.as_deref()) == Some("counter") {
                    assert!(name.ends_with("_total"), "counter {name} without _total");
                }
                let v: f64 = value.parse().expect("sample value");
                assert!(series.insert(key.to_string(), v).is_none(), "{key} twice");
            }
        }
        Scrape {
            families,
            series,
            text,
        }
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.series.get(key).copied()
    }

    /// Every series of a `counter` family (histogram buckets, sums and counts too).
    fn counters(&self) -> impl Iterator<Item = (&String, f64)> {
        self.series.iter().map(|(k, v)| (k, *v)).filter(|(k, _)| {
            let name = k.split('{').next().unwrap_or(k);
            let kind = |f: &str| self.families.get(f).and_then(|t| t.1.clone());
            kind(name).as_deref() == Some("counter")
                || ["_bucket", "_sum", "_count"].iter().any(|s| {
                    name.strip_suffix(s)
                        .is_some_and(|f| kind(f).as_deref() == Some("histogram"))
                })
        })
    }
}

async fn scrape(gw: &Gateway) -> Scrape {
    let resp = reqwest::Client::new()
        .get(gw.url("/metrics"))
        .header("x-api-key", &gw.key)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    Scrape::parse(resp.text().await.expect("text"))
}

#[test]
fn counters_never_fall_when_a_client_leaves_and_every_family_is_declared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path(), 100);
    let port = free_port();
    let cfg = dir.path().join("fieldgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"gw-metrics\"\n[journal]\npath = \"{}\"\nflush_ms = 5\n\
             [listen]\naddress = \"127.0.0.1:{port}\"\n\
             [[sources.sim]]\nname = \"sim\"\nvehicle = \"van-1\"\ninterval_ms = 10\n\
             [[sources.mqtt]]\nname = \"broker\"\nurl = \"{}\"\nclient_id = \"gw-metrics\"\n\
             subscriptions = [{{ topic = \"fleet/{{vehicle}}/{{device}}/{{kind}}\", qos = 1 }}]\n",
            dir.path().join("journal").display(),
            broker.url()
        ),
    )
    .expect("config");
    let cfg_s = cfg.to_string_lossy().to_string();
    let (code, key, err) = run_cli(&["keys", "add", "ops", "--scopes", "read", "--config", &cfg_s]);
    assert_eq!(code, 0, "keys add: {err}");
    let gw = Gateway::run(&cfg, port, key.trim(), dir.path());
    gw.status_until(Duration::from_secs(60), |s| {
        s["sources"]["broker"]["state"] == "running"
    });
    // Two rejects with different reasons: an empty payload and a topic without a vehicle.
    publish_all(
        broker.port,
        "metrics-publisher",
        vec![
            ("fleet/van-1/gps0/gps".into(), Vec::new()),
            ("fleet//gps0/gps".into(), b"{}".to_vec()),
        ],
    );
    gw.status_until(Duration::from_secs(30), |s| {
        s["sources"]["broker"]["invalid"].as_u64() >= Some(2)
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let first = scrape(&gw).await;
        for reason in ["empty", "wrong_topic"] {
            let key =
                format!("fieldgate_frames_invalid_total{{source=\"broker\",reason=\"{reason}\"}}");
            assert_eq!(first.get(&key), Some(1.0), "{key}:\n{}", first.text);
        }

        // A client receives frames, then leaves: what it was sent stays counted.
        let (mut ws, _) = ws_connect(gw.port, "/ws", Some(&gw.key), Some("leaver"))
            .await
            .expect("connect");
        let mut frames = 0;
        while frames < 50 {
            let m = ws_next(&mut ws).await.expect("open");
            if m["type"] == "frame" {
                frames += 1;
            }
        }
        let connected = scrape(&gw).await;
        let sent = connected
            .get("fieldgate_ws_frames_sent_total")
            .expect("sent counter");
        assert!(sent >= 50.0, "{sent} frames counted, 50 received");
        drop(ws);
        let t0 = Instant::now();
        loop {
            let (_, conns) =
                common::http_async("GET", &gw.url("/api/connections"), Some(&gw.key), None).await;
            if conns["clients"].as_array().is_some_and(|c| c.is_empty()) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "client never left: {conns}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = scrape(&gw).await;
        assert_eq!(left.get("fieldgate_ws_clients"), Some(0.0));
        for (key, before) in [&first, &connected].iter().flat_map(|s| s.counters()) {
            let after = left
                .get(key)
                .unwrap_or_else(|| panic!("counter {key} vanished:\n{}", left.text));
            assert!(
                after >= before,
                "counter {key} fell from {before} to {after}"
            );
        }
        assert!(
            left.get("fieldgate_ws_frames_sent_total") >= Some(sent),
            "frames sent to the client that left were taken out of the total"
        );
    });
}
