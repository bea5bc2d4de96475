//! The MongoDB sink end to end against a real MongoDB-wire server (SecantusDB, or the
//! server of `FIELDGATE_TEST_MONGODB_URI`): outages, gateway crashes, replays and a server
//! that is missing at start all end with every journaled frame in `frames` exactly once.

mod common;

use bson::doc;
use common::mongo::{assert_exactly_once, unique_db, MongoServer};
use common::{free_port, run_cli, signal, wait_exit, Gateway};
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::sink::mongo::encode;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GATEWAY: &str = "gw-test";

/// A gateway set-up: config file, journal, API key, port.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    key: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Setup {
            dir,
            port: free_port(),
            key: String::new(),
        };
        // A config without [mongo] to create the key with.
        s.write_config("mongodb://127.0.0.1:1/", "unused", None);
        let cfg = s.config_path().to_string_lossy().to_string();
        let (code, out, err) =
            run_cli(&["keys", "add", "test", "--scopes", "admin", "--config", &cfg]);
        assert_eq!(code, 0, "keys add: {err}");
        Setup {
            key: out.trim().to_string(),
            ..s
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("fieldgate.toml")
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    /// Write the config: sync to `uri`/`db`; with `sim_interval_ms`, a simulated vehicle
    /// producing 2 frames per interval.
    fn write_config(&self, uri: &str, db: &str, sim_interval_ms: Option<u64>) {
        let mut text = format!(
            r#"
[gateway]
id = "{GATEWAY}"

[journal]
path = "{journal}"
flush_ms = 20

[listen]
address = "127.0.0.1:{port}"

[mongo]
uri = "{uri}"
database = "{db}"
batch_max = 500
batch_ms = 50
backoff_max = "2s"
"#,
            journal = self.journal_path().display(),
            port = self.port,
        );
        if let Some(ms) = sim_interval_ms {
            text.push_str(&format!(
                "\n[[sources.sim]]\nname = \"van\"\nvehicle = \"van-07\"\ninterval_ms = {ms}\n"
            ));
        }
        std::fs::write(self.config_path(), text).expect("write config");
    }

    fn run(&self) -> Gateway {
        self.run_as(&self.key)
    }

    /// Run with the API key `key` (one made after the journal was replaced).
    fn run_as(&self, key: &str) -> Gateway {
        Gateway::run(
            &self.config_path(),
            self.port,
            key,
            &self.dir.path().join("logs"),
        )
    }

    /// Restart without sources until the sink has acknowledged the whole journal, stop it,
    /// and return the seqs in the journal.
    fn drain(&self, uri: &str, db: &str) -> Vec<u64> {
        self.drain_as(&self.key, uri, db)
    }

    /// [`Setup::drain`] with the API key `key`.
    fn drain_as(&self, key: &str, uri: &str, db: &str) -> Vec<u64> {
        self.write_config(uri, db, None);
        let gw = self.run_as(key);
        let st = gw.status_until(Duration::from_secs(180), |s| {
            let m = &s["sinks"]["mongo"];
            m["state"] == "online" && m["lag"] == 0
        });
        assert!(st["sinks"]["mongo"]["acked_seq"].as_u64().unwrap_or(0) > 0);
        assert!(gw.stop().success(), "clean stop");
        journal_seqs(&self.journal_path())
    }
}

/// Every seq in the journal at `path` (the gateway must be stopped).
fn journal_seqs(path: &Path) -> Vec<u64> {
    let j = Journal::open(JournalConfig {
        path: path.to_path_buf(),
        ..JournalConfig::default()
    })
    .expect("open journal");
    let seqs = j.range(1, usize::MAX).iter().map(|f| f.seq).collect();
    j.close().expect("close journal");
    seqs
}

fn mongo(st: &Value) -> &Value {
    &st["sinks"]["mongo"]
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Per device, documents ordered by seq are ordered by gateway time too.
fn assert_device_order(server: &MongoServer, db: &str) {
    let docs = server.docs(db, "frames", doc! {"seq": 1, "device": 1, "ts": 1});
    let mut per_device: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for d in docs {
        per_device
            .entry(d.get_str("device").expect("device").to_string())
            .or_default()
            .push((
                d.get_i64("seq").expect("seq"),
                d.get_datetime("ts").expect("ts").timestamp_millis(),
            ));
    }
    assert!(!per_device.is_empty());
    for (dev, mut v) in per_device {
        v.sort();
        assert!(
            v.windows(2).all(|w| w[0].1 <= w[1].1),
            "device {dev}: ts order differs from seq order"
        );
    }
}

/// Mongo `frames` == the journal's frames, each once.
fn assert_matches_journal(server: &MongoServer, db: &str, journal: &[u64]) {
    let docs = common::mongo::frame_seqs(server, db);
    let in_mongo: Vec<u64> = docs.iter().map(|d| d.0).collect();
    let in_mongo_set: BTreeSet<u64> = in_mongo.iter().copied().collect();
    assert_eq!(in_mongo.len(), in_mongo_set.len(), "a seq twice in MongoDB");
    let journal_set: BTreeSet<u64> = journal.iter().copied().collect();
    let missing: Vec<_> = journal_set.difference(&in_mongo_set).take(5).collect();
    let extra: Vec<_> = in_mongo_set.difference(&journal_set).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing in MongoDB: {missing:?}, not in journal: {extra:?} ({} vs {})",
        in_mongo.len(),
        journal.len()
    );
    for (seq, _, id) in &docs {
        assert_eq!(id, &format!("{GATEWAY}:{seq}"));
    }
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn outage_of_20s_loses_and_duplicates_nothing() {
    let mut server = MongoServer::start();
    let db = unique_db("outage");
    let setup = Setup::new();
    // 2 frames per 2 ms tick: ~1,000 frames/s.
    setup.write_config(&server.uri(), &db, Some(2));
    let gw = setup.run();
    let st = gw.status_until(Duration::from_secs(60), |s| {
        mongo(s)["state"] == "online" && u(&mongo(s)["acked_seq"]) >= 2_000
    });
    assert!(mongo(&st)["last_error"].is_null(), "{st}");

    server.stop();
    let st = gw.status_until(Duration::from_secs(60), |s| mongo(s)["state"] == "offline");
    let offline_at = u(&st["journal"]["last_seq"]);
    assert!(mongo(&st)["last_error"].is_string(), "{st}");
    // The outage itself: 20 s without a server while frames keep coming.
    std::thread::sleep(Duration::from_secs(20));
    let st = gw.status_until(Duration::from_secs(10), |s| {
        u(&s["journal"]["last_seq"]) > offline_at + 5_000
    });
    let m = mongo(&st);
    assert_eq!(m["state"], "offline");
    assert!(u(&m["lag"]) > 5_000, "lag counts the journaled frames: {m}");
    assert!(m["lag_seconds"].as_f64().unwrap_or(0.0) > 5.0, "{m}");

    server.restart();
    let behind = u(&st["journal"]["last_seq"]);
    let st = gw.status_until(Duration::from_secs(180), |s| {
        mongo(s)["state"] == "online" && u(&mongo(s)["acked_seq"]) > behind
    });
    // Batches are written with `j: true`: the killed server kept all it had acknowledged,
    // so the re-check on reconnection found nothing to send again.
    assert_eq!(u(&mongo(&st)["resent"]), 0, "{st}");
    let log = gw.log();
    assert!(gw.stop().success());
    assert_eq!(count_lines(&log, "mongo sink offline"), 1, "log:\n{log}");
    assert_eq!(
        count_lines(&log, "mongo sink back online"),
        1,
        "log:\n{log}"
    );

    let journal = setup.drain(&server.uri(), &db);
    let last = *journal.last().expect("frames journaled");
    assert_eq!(
        journal.len() as u64,
        last,
        "no crash, so the journal has no gaps"
    );
    assert_exactly_once(&server, &db, GATEWAY, last);
    assert_device_order(&server, &db);
    let keys = server.index_keys(&db, "frames");
    for want in [
        doc! {"device": 1, "ts": -1},
        doc! {"vehicle": 1, "ts": -1},
        doc! {"gateway": 1, "seq": 1},
    ] {
        assert!(keys.contains(&want), "index {want} missing: {keys:?}");
    }
}

#[test]
fn kill9_mid_batch_then_restart_loses_and_duplicates_nothing() {
    let server = MongoServer::start();
    let db = unique_db("crash");
    let setup = Setup::new();
    setup.write_config(&server.uri(), &db, Some(2));
    for round in 0..3 {
        let mut gw = setup.run();
        gw.status_until(Duration::from_secs(60), |s| {
            mongo(s)["state"] == "online" && u(&mongo(s)["delivered"]) >= 1_500
        });
        // Batches are in flight continuously at this rate; kill at a varying moment.
        std::thread::sleep(Duration::from_millis(37 * round));
        signal(&gw.child, libc::SIGKILL);
        assert!(wait_exit(&mut gw.child, Duration::from_secs(10)).is_some());
    }
    let journal = setup.drain(&server.uri(), &db);
    assert!(journal.len() > 4_000, "{} frames", journal.len());
    assert_matches_journal(&server, &db, &journal);
    assert_device_order(&server, &db);
}

#[test]
fn unreachable_at_start_then_syncs_when_the_server_appears() {
    let port = free_port();
    let db = unique_db("late");
    let setup = Setup::new();
    setup.write_config(&MongoServer::uri_for_port(port), &db, Some(10));
    let gw = setup.run();
    // The gateway serves and journals while MongoDB is absent.
    let st = gw.status_until(Duration::from_secs(60), |s| {
        mongo(s)["state"] == "offline" && u(&s["journal"]["durable_seq"]) >= 200
    });
    let m = mongo(&st);
    assert_eq!(u(&m["acked_seq"]), 0);
    assert!(m["last_error"].is_string(), "{m}");
    assert!(u(&m["lag"]) >= 200, "{m}");

    let server = MongoServer::start_on(port);
    let target = u(&st["journal"]["last_seq"]) + 100;
    let st = gw.status_until(Duration::from_secs(120), |s| {
        mongo(s)["state"] == "online" && u(&mongo(s)["acked_seq"]) >= target
    });
    assert!(u(&mongo(&st)["delivered"]) >= target);
    assert!(gw.stop().success());
    let journal = setup.drain(&server.uri(), &db);
    let last = *journal.last().expect("frames");
    assert_exactly_once(&server, &db, GATEWAY, last);
}

/// A new SD card: the journal and its seq floor file are gone, and the gateway journals
/// while MongoDB is away, reusing seqs MongoDB holds. When the server is back, every such
/// frame is counted as a collision (status and metrics) and arrives under a fresh seq.
#[test]
fn reused_seqs_are_counted_in_status_and_metrics_and_nothing_is_lost() {
    let mut server = MongoServer::start();
    let db = unique_db("newcard");
    let setup = Setup::new();
    setup.write_config(&server.uri(), &db, Some(2));
    let gw = setup.run();
    gw.status_until(Duration::from_secs(60), |s| {
        u(&mongo(s)["acked_seq"]) >= 3_000
    });
    assert!(gw.stop().success());
    let before = server.count(&db, "frames");

    std::fs::remove_dir_all(setup.journal_path()).expect("rm -rf journal");
    std::fs::remove_file(setup.dir.path().join("journal.seq")).expect("rm floor file");
    let cfg = setup.config_path().to_string_lossy().to_string();
    let (code, key, err) = run_cli(&["keys", "add", "t", "--scopes", "admin", "--config", &cfg]);
    assert_eq!(code, 0, "{err}");
    server.stop();
    let key = key.trim();
    let gw = setup.run_as(key);
    let st = gw.status_until(Duration::from_secs(60), |s| {
        u(&s["journal"]["durable_seq"]) >= 300
    });
    assert!(
        u(&st["journal"]["last_seq"]) < before,
        "offline frames reuse stored seqs"
    );
    server.restart();
    let reused = u(&st["journal"]["last_seq"]);
    let st = gw.status_until(Duration::from_secs(120), |s| {
        mongo(s)["state"] == "online"
            && u(&mongo(s)["collisions"]) >= reused
            && u(&mongo(s)["acked_seq"]) > before
    });
    let collisions = u(&mongo(&st)["collisions"]);
    let (code, text) = common::http_text(&gw.url("/metrics"), &gw.key);
    assert_eq!(code, 200);
    assert!(
        text.contains(&format!(
            "\nfieldgate_sink_collisions_total{{sink=\"mongo\"}} {collisions}\n"
        )),
        "{text}"
    );
    assert!(gw.stop().success());

    setup.drain_as(key, &server.uri(), &db);
    let frames = journal_frames(&setup.journal_path());
    let hashes: BTreeMap<String, i64> = server
        .docs(&db, "frames", doc! {"_id": 1, "h": 1})
        .iter()
        .map(|d| {
            (
                d.get_str("_id").expect("_id").into(),
                d.get_i64("h").unwrap_or(0),
            )
        })
        .collect();
    let mut delivered = BTreeSet::new();
    let mut collided = Vec::new();
    for f in &frames {
        let mine = hashes.get(&f.doc_id()) == Some(&encode::content_hash(f));
        if mine {
            delivered.insert((f.ts_ms, f.payload.to_string()));
        } else {
            collided.push(f);
        }
    }
    assert_eq!(collided.len() as u64, collisions);
    for f in collided {
        assert!(
            delivered.contains(&(f.ts_ms, f.payload.to_string())),
            "collided frame seq {} never arrived under a fresh seq",
            f.seq
        );
    }
    assert_eq!(
        hashes.len() as u64,
        before + frames.len() as u64 - collisions,
        "every frame in MongoDB once"
    );
}

/// Every frame in the journal at `path` (the gateway must be stopped).
fn journal_frames(path: &Path) -> Vec<fieldgate::frame::Frame> {
    let j = Journal::open(JournalConfig {
        path: path.to_path_buf(),
        ..JournalConfig::default()
    })
    .expect("open journal");
    let frames = j.range(1, usize::MAX);
    j.close().expect("close journal");
    frames
}
