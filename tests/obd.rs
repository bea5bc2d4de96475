//! The OBD poller against the ELM327-emulator (a real pseudo-terminal): decoded values equal
//! the emulator's answers, NO DATA is handled, DTCs are read, and an unplugged adapter is
//! waited for and picked up again at the same path.

mod common;

use common::serial::{Emulator, InProcess};
use fieldgate::frame::Frame;
use fieldgate::source::obd::{self, ObdConfig};
use fieldgate::source::sim_devices::publish_link;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn config(path: &Path, pids: &str) -> ObdConfig {
    let text = format!(
        "name = \"obd\"\npath = {path:?}\nbaud = 38400\npids = {pids}\ninterval_ms = 200\n\
         dtc_interval_ms = 1000\ndevice = \"elm1\"\nvehicle = \"van-3\"\n"
    );
    toml::from_str(&text).expect("obd config")
}

fn of_kind<'a>(frames: &'a [Frame], kind: &str) -> Vec<&'a Frame> {
    frames.iter().filter(|f| f.kind == kind).collect()
}

#[test]
fn decoded_values_equal_the_emulators_answers_and_no_data_is_handled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let elm = Emulator::start(dir.path());
    // The emulator's car scenario has no PID FF: it answers NO DATA.
    let cfg = config(&elm.pty, r#"["0C", "0D", "05", "FF"]"#);
    let src = InProcess::start(dir.path(), "obd", "obd", |ctx| obd::run(cfg, ctx));
    src.wait_for(LONG, "a few poll cycles and a DTC read", |s| s.frames >= 5);
    let st = src.state();
    assert_eq!(st.state, "running");
    assert!(
        st.invalid_by_reason.get("no_data").copied().unwrap_or(0) >= 1,
        "{st:?}"
    );
    let journal = src.stop();
    let frames = journal.range(1, usize::MAX);
    let obd_frames = of_kind(&frames, "obd");
    assert!(obd_frames.len() >= 3, "{frames:?}");

    // A fresh emulator's first answers: 41 0C 14 5F, 41 0D 0A, 41 05 5F.
    let first = &obd_frames[0];
    assert_eq!(first.payload["rpm"], json!(1303.75));
    assert_eq!(first.payload["speed_kmh"], json!(10.0));
    assert_eq!(first.payload["coolant_c"], json!(55.0));
    assert_eq!(first.payload["no_data"], json!(["FF"]));
    assert_eq!(first.payload["units"]["coolant_c"], "°C");
    assert_eq!(first.payload["units"]["rpm"], "rpm");
    assert_eq!(
        (
            first.source.as_str(),
            first.device.as_str(),
            first.vehicle.as_deref()
        ),
        ("obd:obd", "elm1", Some("van-3"))
    );

    // Every cycle equals what the emulator said it wrote, in order (its values vary).
    let decode = |bytes: &Vec<u8>, f: fn(&[u8]) -> f64| json!(f(bytes));
    let rpm = elm.answers(0x0C);
    let speed = elm.answers(0x0D);
    let coolant = elm.answers(0x05);
    assert!(
        rpm.len() >= obd_frames.len(),
        "emulator log: {}",
        elm.log_text()
    );
    for (i, f) in obd_frames.iter().enumerate() {
        let ab = |b: &[u8]| (f64::from(b[0]) * 256.0 + f64::from(b[1])) / 4.0;
        assert_eq!(f.payload["rpm"], decode(&rpm[i], ab), "cycle {i}");
        assert_eq!(
            f.payload["speed_kmh"],
            decode(&speed[i], |b| f64::from(b[0])),
            "cycle {i}"
        );
        let c = |b: &[u8]| f64::from(b[0]) - 40.0;
        assert_eq!(f.payload["coolant_c"], decode(&coolant[i], c), "cycle {i}");
    }
    let dtc = of_kind(&frames, "dtc");
    assert!(!dtc.is_empty(), "a DTC read happened");
    // The car scenario has no stored codes ("43 00").
    assert_eq!(dtc[0].payload, json!({"codes": [], "count": 0}));
}

#[test]
fn adapter_unplugged_is_waited_for_and_resumes_at_the_same_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("obd");
    let elm = Emulator::start(dir.path());
    publish_link(&link, &elm.pty).expect("link");
    let cfg = config(&link, r#"["0C", "0D"]"#);
    let src = InProcess::start(dir.path(), "obd", "obd", |ctx| obd::run(cfg, ctx));
    src.wait_for(LONG, "polling", |s| s.state == "running" && s.frames >= 2);

    elm.kill();
    src.wait_for(LONG, "waiting after unplug", |s| s.state == "waiting");
    let before = src.state().frames;

    let elm = Emulator::start(dir.path());
    publish_link(&link, &elm.pty).expect("relink");
    src.wait_for(LONG, "running again", |s| {
        s.state == "running" && s.frames >= before + 2
    });
    let journal = src.stop();
    let frames = journal.range(1, usize::MAX);
    let last = of_kind(&frames, "obd").pop().expect("obd frames");
    assert!(last.payload["rpm"].is_number(), "{last:?}");
    drop(elm);
}
