//! CAN through the whole gateway: a candump log written by python-can replayed into the
//! journal, synced to MongoDB (SecantusDB) and relayed over WebSocket; a technician's
//! `command` transmitted on a writable SLCAN bus to python-can (and refused on a
//! listen-only one), audited; a SocketCAN source on a kernel without CAN reported in
//! `/api/status` and the log while the rest runs on; the demo's simulated CAN adapter.

mod common;

use common::can::{assert_same_signals, test_dbc, test_resolution, Peer, Socat};
use common::mongo::{unique_db, MongoServer};
use common::{free_port, run_cli, ws_connect, ws_next_of, ws_send, Gateway};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Writes a gateway config with `sources` and returns (path, port, admin key, control key).
fn gateway_config(dir: &Path, extra: &str) -> (std::path::PathBuf, u16, String, String) {
    let port = free_port();
    let path = dir.join("gateway.toml");
    let text = format!(
        "[gateway]\nid = \"gw-can\"\n[journal]\npath = \"{}\"\nflush_ms = 5\n[listen]\naddress = \"127.0.0.1:{port}\"\n{extra}",
        dir.join("journal").display()
    );
    std::fs::write(&path, text).expect("config");
    let cfg = path.to_string_lossy().to_string();
    let key = |name: &str, scopes: &str| {
        let (code, out, err) =
            run_cli(&["keys", "add", name, "--scopes", scopes, "--config", &cfg]);
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    };
    (
        path.clone(),
        port,
        key("admin", "admin"),
        key("tech", "read,control"),
    )
}

fn source<'a>(st: &'a Value, name: &str) -> &'a Value {
    &st["sources"][name]
}

#[test]
fn candump_log_from_python_can_reaches_mongo_and_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("bus.log");
    let dbc = test_dbc();
    let expected = Peer::start(
        &[
            "log",
            &dbc.to_string_lossy(),
            &log.to_string_lossy(),
            "300",
            "7",
        ],
        false,
    )
    .rest();
    assert_eq!(expected.len(), 300);
    let mongo = MongoServer::start();
    let db = unique_db("can");
    let extra = format!(
        "[mongo]\nuri = \"{}\"\ndatabase = \"{db}\"\nbatch_ms = 20\n\
         [[sources.can]]\nname = \"replay\"\ninterface = \"candump\"\npath = {log:?}\nspeed = 0\n\
         dbc = [{dbc:?}]\ndevice = \"logger\"\nvehicle = \"van-3\"\n",
        mongo.uri()
    );
    let (cfg, port, admin, _) = gateway_config(dir.path(), &extra);
    let gw = Gateway::run(&cfg, port, &admin, dir.path());
    let st = gw.status_until(LONG, |s| {
        source(s, "replay")["state"] == "stopped"
            && s["sinks"]["mongo"]["lag"] == 0
            && s["sinks"]["mongo"]["acked_seq"].as_u64() >= Some(300)
    });
    assert_eq!(source(&st, "replay")["frames"], 300, "{st}");
    assert_eq!(source(&st, "replay")["invalid"], 0, "{st}");

    // MongoDB has every frame once, with the recorded time and cantools' values.
    let mut docs = mongo.docs(&db, "frames", bson::doc! {});
    docs.sort_by_key(|d| d.get_i64("seq").unwrap_or(0));
    let docs: Vec<(Option<i64>, Value)> = docs
        .into_iter()
        .map(|d| {
            let recorded = d
                .get_datetime("device_ts")
                .ok()
                .map(|t| t.timestamp_millis());
            (
                recorded,
                serde_json::to_value(bson::Bson::Document(d).into_relaxed_extjson()).expect("json"),
            )
        })
        .filter(|(_, d)| d["kind"] == "can")
        .collect();
    assert_eq!(docs.len(), 300);
    for (i, ((recorded, d), want)) in docs.iter().zip(&expected).enumerate() {
        assert_eq!(d["source"], "can:replay");
        assert_eq!(d["device"], "logger");
        assert_eq!(d["vehicle"], "van-3");
        assert_same_signals(&d["payload"], want, test_resolution);
        assert_eq!(*recorded, Some(1_700_000_000_000i64 + 10 * i as i64), "{d}");
    }

    // A technician replays the bus over WebSocket from the start.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let (mut ws, _) = ws_connect(port, "/", Some(&admin), Some("tech"))
            .await
            .expect("ws");
        ws_send(
            &mut ws,
            json!({"type": "subscribe", "data": {"kinds": ["can"], "from_seq": 1}}),
        )
        .await;
        ws_next_of(&mut ws, "subscribed").await;
        for want in &expected {
            let m = ws_next_of(&mut ws, "frame").await;
            assert_same_signals(&m["data"]["payload"], want, test_resolution);
        }
    });
    assert!(gw.stop().success());
}

#[test]
fn technicians_transmit_on_a_writable_bus_and_not_on_a_listen_only_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (dev, host) = (dir.path().join("dev"), dir.path().join("host"));
    let (dev2, host2) = (dir.path().join("dev2"), dir.path().join("host2"));
    let _socat = Socat::start(&dev, &host);
    let _socat2 = Socat::start(&dev2, &host2);
    let extra = format!(
        "[[sources.can]]\nname = \"body\"\ninterface = \"slcan\"\npath = {dev:?}\nwritable = true\ndevice = \"body-bus\"\n\
         [[sources.can]]\nname = \"pt\"\ninterface = \"slcan\"\npath = {dev2:?}\ndevice = \"pt-bus\"\n"
    );
    let (cfg, port, admin, tech) = gateway_config(dir.path(), &extra);
    let gw = Gateway::run(&cfg, port, &admin, dir.path());
    gw.status_until(LONG, |s| {
        source(s, "body")["state"] == "running" && source(s, "pt")["state"] == "running"
    });
    let mut peer = Peer::slcan(&host, 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let (mut ws, _) = ws_connect(port, "/", Some(&tech), Some("tech")).await.expect("ws");
        let cmd = |device: &str, can: Value| json!({"type": "command", "data": {"device": device, "can": can}});
        ws_send(&mut ws, cmd("body-bus", json!({"id": "0x18DA10F1", "data": "02 10 03"}))).await;
        let sent = ws_next_of(&mut ws, "command").await;
        assert_eq!(sent["message"], "sent", "{sent}");
        // Malformed frames are refused before they are routed.
        ws_send(&mut ws, cmd("body-bus", json!({"id": 0x123, "data": "0011223344556677889900"}))).await;
        let refused = ws_next_of(&mut ws, "error").await;
        assert!(refused["message"].as_str().unwrap_or("").contains("at most 8 bytes"), "{refused}");
        // The listen-only bus owns its device but takes no commands.
        ws_send(&mut ws, cmd("pt-bus", json!({"id": 0x123, "data": "01"}))).await;
        let no_route = ws_next_of(&mut ws, "error").await;
        assert!(no_route["message"].as_str().unwrap_or("").contains("takes no commands"), "{no_route}");
    });
    // python-can, the host on the other end, received the frame.
    peer.send(json!({"op": "recv", "timeout": 10}));
    let got = peer.next();
    assert_eq!(
        got["recv"],
        json!({"id": 0x18DA10F1u32, "ext": true, "data": "021003"}),
        "{got}"
    );
    // Both sent commands are audited in the journal, the refused one not at all.
    let (_, audit) = common::http_get(&gw.url("/api/frames?kind=command"), Some(&admin));
    let audits = audit["frames"].as_array().cloned().unwrap_or_default();
    assert_eq!(audits.len(), 2, "{audit}");
    assert_eq!(
        audits[0]["payload"]["payload"],
        json!({"can": {"id": "0x18DA10F1", "data": "02 10 03"}})
    );
    assert_eq!(audits[0]["payload"]["routed"], true);
    assert_eq!(audits[1]["payload"]["routed"], false);
    assert!(gw.log().contains("CAN frame transmitted"), "{}", gw.log());
    assert!(gw.stop().success());
}

#[test]
fn socketcan_without_kernel_support_is_reported_and_the_gateway_runs_on() {
    if fieldgate::source::can::socketcan::probe().is_ok() {
        eprintln!("this kernel has CAN sockets: the EAFNOSUPPORT path cannot be tested here");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[[sources.sim]]\nname = \"sim\"\ninterval_ms = 50\n\
                 [[sources.can]]\nname = \"truck\"\ninterface = \"socketcan\"\nifname = \"can0\"\nj1939 = true\n";
    let (cfg, port, admin, _) = gateway_config(dir.path(), extra);
    let gw = Gateway::run(&cfg, port, &admin, dir.path());
    let st = gw.status_until(LONG, |s| {
        source(s, "truck")["state"] == "waiting" && source(s, "sim")["frames"].as_u64() >= Some(20)
    });
    let err = source(&st, "truck")["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains("EAFNOSUPPORT") && err.contains("modprobe can_raw"),
        "{st}"
    );
    assert_eq!(source(&st, "truck")["kind"], "can");
    let log = gw.log();
    assert!(log.contains("EAFNOSUPPORT"), "{log}");
    let (code, _) = common::http_get(&gw.url("/readyz"), None);
    assert_eq!(code, 200, "the gateway is ready without its CAN bus");
    assert!(gw.stop().success());
}

#[test]
fn the_demo_shows_decoded_can_signals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::demo(&dir.path().join("journal"), &[]);
    let body = gw.get_until("/api/frames?kind=can&limit=20", LONG, |b| {
        b["frames"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["payload"]["message"] == "ENGINE"))
    });
    let frames = body["frames"].as_array().cloned().unwrap_or_default();
    let engine = frames
        .iter()
        .find(|f| f["payload"]["message"] == "ENGINE")
        .expect("engine");
    assert!(
        engine["payload"]["signals"]["EngineSpeed"]
            .as_f64()
            .is_some_and(|r| (0.0..=6000.0).contains(&r)),
        "{engine}"
    );
    assert_eq!(engine["payload"]["units"]["EngineSpeed"], "rpm");
    assert_eq!(engine["device"], "sim-can");
    assert_eq!(engine["vehicle"], "demo-van");
    let st = gw.status_until(LONG, |s| source(s, "can")["state"] == "running");
    assert_eq!(source(&st, "can")["invalid"], 0, "{st}");
    assert!(gw.stop().success());
}
