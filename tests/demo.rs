//! `fieldgate demo`: frames flow, the key is enforced, SIGTERM is clean, a corrupt
//! journal is quarantined instead of crashing the service.

mod common;

use common::{http_get, Gateway};
use std::time::Duration;

#[test]
fn demo_journals_frames_and_shuts_down_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("journal");
    let gw = Gateway::demo(&data, &[]);
    let st = gw.status_until(Duration::from_secs(10), |s| {
        s["journal"]["durable_seq"].as_u64().unwrap_or(0) >= 6
    });
    // The OBD frames come from the emulated adapter, which starts after the GPS: wait for
    // the first one to be journaled (on a busy box six frames can all be GPS).
    gw.get_until(
        "/api/frames?kind=obd&limit=1",
        Duration::from_secs(10),
        |b| b["count"] == 1,
    );
    assert_eq!(st["journal"]["first_seq"], 1);
    assert!(st["journal"]["bytes"].as_u64().unwrap_or(0) > 0);
    assert_eq!(st["journal"]["evicted"], 0);
    assert!(st["journal"]["quarantine"].is_null());

    let (code, body) = http_get(&gw.url("/api/status"), None);
    assert_eq!(code, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (code, _) = http_get(&gw.url("/api/status"), Some("fg_wrong"));
    assert_eq!(code, 401);
    let (code, _) = http_get(
        &format!("{}?api_key={}", gw.url("/api/status"), gw.key),
        None,
    );
    assert_eq!(code, 200, "api_key query parameter works");
    let (code, _) = http_get(&gw.url("/healthz"), None);
    assert_eq!(code, 200);

    let status = gw.stop();
    assert!(status.success(), "SIGTERM exit: {status:?}");

    let journal = fieldgate::journal::Journal::open(fieldgate::journal::JournalConfig {
        path: data.clone(),
        ..Default::default()
    })
    .expect("reopen");
    let last = journal.stats().last_seq;
    let frames = journal.range(1, usize::MAX);
    assert_eq!(
        frames.len() as u64,
        last,
        "every frame of the run is on disk after SIGTERM"
    );
    assert!(frames
        .iter()
        .any(|f| f.kind == "gps" && f.payload["lat"].is_f64()));
    assert!(frames
        .iter()
        .any(|f| f.kind == "obd" && f.payload["rpm"].is_number()));
    journal.close().expect("close");
    drop(journal);

    // A restart continues right after the last seq: a clean stop leaves no gap.
    let gw = Gateway::demo(&data, &[]);
    let st = gw.status_until(Duration::from_secs(10), |s| {
        s["journal"]["last_seq"].as_u64().unwrap_or(0) > last
    });
    assert_eq!(st["journal"]["first_seq"], 1);
    let (code, _) = gw.get("/api/status");
    assert_eq!(code, 200);
    assert!(gw.stop().success());
}

#[test]
fn corrupt_journal_is_quarantined_and_service_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("journal");
    std::fs::create_dir_all(data.join("blobs")).expect("mkdir");
    std::fs::write(data.join("conf"), b"segment_size: banana\n\x00\xff").expect("write");
    std::fs::write(data.join("db"), vec![0x5Au8; 300_000]).expect("write");
    std::fs::write(data.join("snap.0000000000001"), b"\x01\x02\x03").expect("write");
    let gw = Gateway::demo(&data, &[]);
    let st = gw.status_until(Duration::from_secs(10), |s| {
        s["journal"]["last_seq"].as_u64().unwrap_or(0) >= 2
    });
    let q = &st["journal"]["quarantine"];
    let moved = q["moved_to"].as_str().expect("quarantine in status");
    assert!(moved.contains("journal.corrupt-"), "{q}");
    assert!(std::path::Path::new(moved).join("db").exists());
    assert!(!q["error"].as_str().unwrap_or("").is_empty());
    assert!(gw.log().contains("quarantined"));
    assert!(gw.stop().success());
}

#[test]
fn systemd_notify_ready_watchdog_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let sock_s = sock_path.to_string_lossy().to_string();
    let gw = Gateway::demo_env(
        &dir.path().join("journal"),
        &[],
        &[("NOTIFY_SOCKET", &sock_s), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 3) {
        let n = sock.recv(&mut buf).expect("notification within 20 s");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(seen.contains("STATUS="), "{seen}");
    let mut child = gw;
    common::signal(&child.child, libc::SIGTERM);
    while !seen.contains("STOPPING=1") {
        let n = sock.recv(&mut buf).expect("STOPPING within 20 s");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let st = common::wait_exit(&mut child.child, Duration::from_secs(15)).expect("exit");
    assert!(st.success());
}

#[test]
fn demo_starts_without_warnings_and_the_simulator_counts_what_it_produces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::demo(&dir.path().join("journal"), &[]);
    // Both pty-fed sources journal frames; the simulator itself journals none.
    gw.get_until(
        "/api/frames?kind=obd&limit=1",
        Duration::from_secs(10),
        |b| b["count"] == 1,
    );
    let st = gw.status_until(Duration::from_secs(10), |s| {
        let sim = &s["sources"]["sim"]["produced"];
        sim["nmea"].as_u64().unwrap_or(0) >= 3 && sim["elm327"].as_u64().unwrap_or(0) >= 1
    });
    let sources = &st["sources"];
    assert_eq!(sources["sim"]["frames"], 0, "{sources}");
    for name in ["gps", "obd"] {
        assert_eq!(sources[name]["state"], "running", "{sources}");
        assert!(sources[name]["last_error"].is_null(), "{name}: {sources}");
        assert!(
            sources[name]["last_error_at_ms"].is_null(),
            "{name}: {sources}"
        );
        assert!(
            sources[name]["frames"].as_u64().unwrap_or(0) > 0,
            "{sources}"
        );
    }
    let log = gw.log();
    assert!(
        !log.lines()
            .any(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
        "the demo's own start-up is not a warning:\n{log}"
    );
    assert!(gw.stop().success());
}
