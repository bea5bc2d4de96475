//! The CAN source against peers nobody here wrote: python-can's SLCAN host on a socat
//! pseudo-terminal pair and a TCP SLCAN server, frames encoded by cantools from the test
//! DBC, fieldgate's decoded values equal to cantools' within each signal's resolution;
//! garbage counted and skipped; unplug/replug and a dropped connection resumed; J1939
//! reassembly, DM1 and FMS from a synthetic candump log; SocketCAN's EAFNOSUPPORT path;
//! DBC errors with file and line, and the opendbc collection parsed.

mod common;

use common::can::{assert_same_signals, test_dbc, test_resolution, Peer, Socat};
use common::serial::InProcess;
use fieldgate::frame::Frame;
use fieldgate::source::can::{self, CanConfig};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn config(text: &str) -> CanConfig {
    toml::from_str(&format!(
        "name = \"bus\"\ndevice = \"bus1\"\nvehicle = \"van-9\"\n{text}"
    ))
    .expect("can config")
}

fn can_frames(frames: &[Frame]) -> Vec<&Frame> {
    frames.iter().filter(|f| f.kind == "can").collect()
}

fn bad_slcan(src: &InProcess) -> u64 {
    src.state()
        .invalid_by_reason
        .get("bad_slcan")
        .copied()
        .unwrap_or(0)
}

#[test]
fn slcan_values_equal_cantools_garbage_is_skipped_and_replug_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (dev, host) = (dir.path().join("dev"), dir.path().join("host"));
    let dbc = test_dbc();
    let socat = Socat::start(&dev, &host);
    let cfg = config(&format!(
        "interface = \"slcan\"\npath = {dev:?}\nbitrate = 500000\ndbc = [{dbc:?}]\ngather_ms = 5\n"
    ));
    let src = InProcess::start(dir.path(), "bus", "can", |ctx| can::run(cfg, ctx));
    src.wait_for(LONG, "adapter open", |s| s.state == "running");
    let mut peer = Peer::slcan(&host, 1);
    // 60 frames with a garbage or truncated line before every sixth.
    peer.send(json!({"op": "send", "count": 60, "garbage_every": 6}));
    let mut expected = peer.until("done");
    src.wait_for(LONG, "first 60 frames", |s| s.frames >= 60);
    assert_eq!(bad_slcan(&src), 10, "{:?}", src.state());

    // Unplug: both ends of the pty pair vanish.
    drop(peer);
    drop(socat);
    src.wait_for(LONG, "waiting after unplug", |s| s.state == "waiting");
    assert!(src.state().last_error.is_some());
    let _socat = Socat::start(&dev, &host);
    src.wait_for(LONG, "running after replug", |s| s.state == "running");
    let mut peer = Peer::slcan(&host, 2);
    peer.send(json!({"op": "send", "count": 40}));
    expected.extend(peer.until("done"));
    src.wait_for(LONG, "all 100 frames", |s| s.frames >= 100);
    let st = src.state();
    assert_eq!((st.frames, bad_slcan(&src)), (100, 10), "{st:?}");
    // The status detail is refreshed every second.
    src.wait_for(LONG, "status detail", |s| {
        s.detail.as_ref().is_some_and(|d| d["decoded"] == 100)
    });
    let detail = src.state().detail.expect("CAN status");
    assert_eq!(detail["unknown_frames"], 0);
    let journal = src.stop();
    let frames = journal.range(1, usize::MAX);
    let got = can_frames(&frames);
    assert_eq!(got.len(), expected.len());
    for (f, want) in got.iter().zip(&expected) {
        assert_eq!(
            (f.source.as_str(), f.device.as_str(), f.vehicle.as_deref()),
            ("can:bus", "bus1", Some("van-9"))
        );
        assert_same_signals(&f.payload, want, test_resolution);
    }
    // Every kind of signal was exercised.
    let messages: std::collections::BTreeSet<&str> = got
        .iter()
        .filter_map(|f| f.payload["message"].as_str())
        .collect();
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert!(
        got.iter()
            .any(|f| f.payload["signals"]["State"].is_string()),
        "enum of a multiplexed signal"
    );
    assert!(got.iter().any(|f| f.payload["units"]["Torque"] == "Nm"));
}

#[test]
fn slcan_tcp_resumes_after_a_mid_stream_disconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dbc = test_dbc();
    let port = common::free_port();
    let peer = Peer::start(
        &[
            "tcp",
            &dbc.to_string_lossy(),
            &port.to_string(),
            "50",
            "20",
            "3",
        ],
        true,
    );
    let cfg = config(&format!(
        "interface = \"slcan-tcp\"\naddress = \"127.0.0.1:{port}\"\ndbc = [{dbc:?}]\n"
    ));
    let src = InProcess::start(dir.path(), "bus", "can", |ctx| can::run(cfg, ctx));
    src.wait_for(LONG, "all 50 frames over two connections", |s| {
        s.frames >= 50
    });
    // The server is gone after the second connection: the source waits for it, and the
    // half line it sent last was counted.
    src.wait_for(LONG, "waiting for the server", |s| s.state == "waiting");
    assert_eq!(bad_slcan(&src), 1, "{:?}", src.state());
    let expected: Vec<Value> = peer
        .rest()
        .into_iter()
        .filter(|v| v.get("message").is_some())
        .collect();
    assert_eq!(expected.len(), 50);
    let journal = src.stop();
    let frames = journal.range(1, usize::MAX);
    let got = can_frames(&frames);
    assert_eq!(got.len(), 50);
    for (f, want) in got.iter().zip(&expected) {
        assert_same_signals(&f.payload, want, test_resolution);
    }
}

/// A candump log line.
fn line(t: f64, id: u32, data: &[u8]) -> String {
    let hex: String = data.iter().map(|b| format!("{b:02X}")).collect();
    if id > 0x7FF {
        format!("({t:.6}) can0 {id:08X}#{hex}\n")
    } else {
        format!("({t:.6}) can0 {id:03X}#{hex}\n")
    }
}

/// The DT frames of a TP session: 7 bytes each, padded with 0xFF.
fn packets(data: &[u8]) -> Vec<Vec<u8>> {
    data.chunks(7)
        .enumerate()
        .map(|(i, c)| {
            let mut p = vec![i as u8 + 1];
            p.extend_from_slice(c);
            p.resize(8, 0xFF);
            p
        })
        .collect()
}

#[test]
fn j1939_sessions_dm1_and_fms_from_a_synthetic_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    // DM1 of SA 0x00: MIL on; SPN 110 FMI 0 OC 2; SPN 190 FMI 2 OC 1; SPN 524287-1 FMI 31.
    let big_spn: u32 = 0x7FFFE;
    let dm1: Vec<u8> = [
        &[0x40, 0xFF][..],
        &[110, 0, 0, 2],
        &[190, 0, 2, 1],
        &[
            (big_spn & 0xFF) as u8,
            (big_spn >> 8 & 0xFF) as u8,
            ((big_spn >> 16) as u8) << 5 | 31,
            0x7F,
        ],
    ]
    .concat();
    // VIN of SA 0x17, 18 bytes with the delimiter.
    let vin = b"YS2R4X20005399401*".to_vec();
    let bam = |size: usize, pgn: u32| {
        vec![
            32,
            size as u8,
            0,
            size.div_ceil(7) as u8,
            0xFF,
            pgn as u8,
            (pgn >> 8) as u8,
            (pgn >> 16) as u8,
        ]
    };
    let mut log = String::new();
    let mut t = 1_700_000_000.0;
    let mut add = |id: u32, data: &[u8]| {
        t += 0.01;
        log.push_str(&line(t, id, data));
    };
    add(0x1CECFF00, &bam(dm1.len(), 0xFECA));
    add(0x1CECFF17, &bam(vin.len(), 0xFEEC));
    // Interleaved packets of the two sessions, with FMS broadcasts between them.
    let (a, b) = (packets(&dm1), packets(&vin));
    for i in 0..a.len().max(b.len()) {
        if let Some(p) = a.get(i) {
            add(0x1CEBFF00, p);
        }
        add(
            0x0CF00400,
            &[0xFF, 0xFF, 0x7D + i as u8, 0x40, 0x1F, 0xFF, 0xFF, 0xFF],
        );
        if let Some(p) = b.get(i) {
            add(0x1CEBFF17, p);
        }
    }
    // An RTS/CTS session to SA 0x3D (DM1 from SA 0x21, one code), with the receiver's CTS.
    let dm1b = [0x00, 0xFF, 0x64, 0x00, 0x03, 0x05, 0xFF, 0xFF, 0xFF, 0xFF];
    add(0x1CEC3D21, &[16, 10, 0, 2, 2, 0xCA, 0xFE, 0x00]);
    add(0x1CEC213D, &[17, 2, 1, 0xFF, 0xFF, 0xCA, 0xFE, 0x00]);
    for p in packets(&dm1b) {
        add(0x1CEB3D21, &p);
    }
    // CCVS1: 84.5 km/h, ET1: 90 °C, LFE1: 20 L/h, DD1: 80 %; HOURS not available.
    add(
        0x18FEF100,
        &[0x00, 0x80, 0x54, 0x00, 0xFF, 0xFF, 0xFF, 0xFF],
    );
    add(
        0x18FEEE00,
        &[0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
    );
    add(
        0x18FEF200,
        &[0x90, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
    );
    add(0x18FEFC00, &[0xFF, 200, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    add(0x18FEE500, &[0xFF; 8]);
    let path = dir.path().join("truck.log");
    std::fs::write(&path, log).expect("log");
    let cfg = config(&format!(
        "interface = \"candump\"\npath = {path:?}\nspeed = 0\nj1939 = true\n"
    ));
    let src = InProcess::start(dir.path(), "bus", "can", |ctx| can::run(cfg, ctx));
    src.wait_for(LONG, "replay finished", |s| s.state == "stopped");
    let st = src.state();
    assert_eq!(st.invalid, 0, "{st:?}");
    assert_eq!(
        st.detail.as_ref().expect("detail")["j1939"],
        json!({"sessions": 0, "reassembled": 3})
    );
    let journal = src.stop();
    let frames = journal.range(1, usize::MAX);
    let dtc: Vec<&Frame> = frames.iter().filter(|f| f.kind == "dtc").collect();
    assert_eq!(dtc.len(), 2, "{dtc:?}");
    assert_eq!(dtc[0].payload["source_address"], 0);
    assert_eq!(
        dtc[0].payload["codes"],
        json!([
            "SPN 110 FMI 0",
            "SPN 190 FMI 2",
            format!("SPN {big_spn} FMI 31")
        ])
    );
    assert_eq!(
        dtc[0].payload["dtcs"][0],
        json!({"spn": 110, "fmi": 0, "oc": 2})
    );
    assert_eq!(dtc[0].payload["lamps"]["mil"], "on");
    assert_eq!(dtc[1].payload["source_address"], 0x21);
    assert_eq!(dtc[1].payload["codes"], json!(["SPN 100 FMI 3"]));
    let by = |m: &str| -> Vec<&Frame> {
        frames
            .iter()
            .filter(|f| f.payload["message"] == m)
            .collect()
    };
    assert_eq!(
        by("VI")[0].payload["signals"]["VehicleIdentificationNumber"],
        "YS2R4X20005399401"
    );
    assert_eq!(by("VI")[0].payload["sa"], 0x17);
    // EEC1: 0x1F40 × 0.125 = 1000 rpm; torque 0x7D + i - 125 = i %.
    let eec1 = by("EEC1");
    assert_eq!(eec1.len(), 3);
    for (i, f) in eec1.iter().enumerate() {
        assert_eq!(
            f.payload["signals"],
            json!({"EngineSpeed": 1000.0, "ActualEnginePercentTorque": i})
        );
        assert_eq!(f.device_ts_ms.map(|t| t / 1000), Some(1_700_000_000));
    }
    assert_eq!(
        by("CCVS1")[0].payload["signals"],
        json!({"ParkingBrakeSwitch": "off", "WheelBasedVehicleSpeed": 84.5,
        "CruiseControlActive": "off", "BrakeSwitch": "off", "ClutchSwitch": "off"})
    );
    assert_eq!(
        by("ET1")[0].payload["signals"],
        json!({"EngineCoolantTemperature": 90})
    );
    assert_eq!(
        by("LFE1")[0].payload["signals"],
        json!({"EngineFuelRate": 20.0})
    );
    assert_eq!(by("DD1")[0].payload["signals"], json!({"FuelLevel1": 80.0}));
    assert!(
        by("HOURS").is_empty(),
        "not available is omitted, and an empty message is not journaled"
    );
}

#[test]
fn socketcan_without_kernel_support_waits_and_says_why() {
    if let Ok(()) = fieldgate::source::can::socketcan::probe() {
        eprintln!("this kernel has CAN sockets: the EAFNOSUPPORT path cannot be tested here");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = InProcess::start(dir.path(), "bus", "can", |ctx| {
        can::run(
            config("interface = \"socketcan\"\nifname = \"can0\"\n"),
            ctx,
        )
    });
    src.wait_for(LONG, "waiting with the reason", |s| {
        s.state == "waiting"
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("EAFNOSUPPORT") && e.contains("can0"))
    });
    src.stop();
}

#[test]
fn dbc_errors_name_file_and_line_in_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.dbc");
    let text = std::fs::read_to_string(test_dbc())
        .expect("dbc")
        .replace(" SG_ Flags : 28|4@1+", " SG_ Flags : 28|4@1x");
    std::fs::write(&bad, text).expect("write");
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!("[gateway]\nid = \"gw\"\n[[sources.can]]\nname = \"bus\"\ninterface = \"candump\"\npath = \"/x.log\"\ndbc = [{:?}, {bad:?}]\n", test_dbc()),
    )
    .expect("config");
    let (code, _out, err) = common::run_cli(&["check-config", &cfg.to_string_lossy()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("sources.can[0].dbc: {}:15:", bad.display())),
        "{err}"
    );
    std::fs::write(&bad, std::fs::read(test_dbc()).expect("dbc")).expect("fix");
    let (code, out, err) = common::run_cli(&["check-config", &cfg.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Every DBC of the opendbc collection (the `opendbc` wheel scripts/test installs) parses.
#[test]
fn the_opendbc_collection_parses() {
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/lib");
    let Some(dir) = std::fs::read_dir(&site)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("site-packages/opendbc/dbc"))
        .filter(|d| d.is_dir())
    else {
        panic!(
            "opendbc not installed under {} (run scripts/test)",
            site.display()
        );
    };
    let mut files = Vec::new();
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "dbc") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 100, "{} files", files.len());
    let mut messages = 0;
    for f in &files {
        let db = can::dbc::Database::load(&[f], &[]).unwrap_or_else(|e| panic!("{e}"));
        messages += db.messages.len();
    }
    assert!(messages > 3_000, "{messages} messages");
}
