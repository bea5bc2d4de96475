//! Serial sources over real pseudo-terminals: every framing with garbage between good
//! frames, a 100k-sentence NMEA burst at 921600 baud, unplug/replug, and the binary.

mod common;

use common::serial::{Device, InProcess};
use common::{free_port, run_cli, Gateway};
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::source::framing::{encode_cobs, encode_len_crc16};
use fieldgate::source::nmea::with_checksum;
use fieldgate::source::serial::{self, SerialConfig};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn config(path: &std::path::Path, framing: &str, baud: u32, max_frame: u32) -> SerialConfig {
    let text = format!(
        "name = \"port\"\npath = {path:?}\nbaud = {baud}\nframing = \"{framing}\"\n\
         max_frame = {max_frame}\ndevice = \"dev1\"\nvehicle = \"van-1\"\n"
    );
    toml::from_str(&text).expect("serial config")
}

/// A GGA sentence whose altitude carries `i`, so order and completeness can be checked.
fn gga(i: u64) -> String {
    let secs = i % 86_400;
    let t = format!("{:02}{:02}{:02}.00", secs / 3600, secs / 60 % 60, secs % 60);
    with_checksum(&format!(
        "GPGGA,{t},5332.7660,N,00957.9660,E,1,09,0.9,{i}.0,M,46.9,M,,"
    ))
}

/// Good frame `i` of a framing, and the payload it must become.
fn good(framing: &str, i: u64) -> (Vec<u8>, Value) {
    match framing {
        "lines" => (
            format!("line {i}\n").into_bytes(),
            json!({"line": format!("line {i}")}),
        ),
        "jsonl" => (format!("{{\"n\":{i}}}\r\n").into_bytes(), json!({"n": i})),
        "nmea" => (gga(i).into_bytes(), json!(i as f64)),
        "cobs" => {
            let p = [0, i as u8, 0, 7];
            (encode_cobs(&p), json!({"raw_b64": b64(&p)}))
        }
        _ => {
            let p = format!("frame {i}").into_bytes();
            (encode_len_crc16(&p), json!({"raw_b64": b64(&p)}))
        }
    }
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Garbage to put after good frame `i`, and the reason it must be counted under.
fn garbage(framing: &str, i: u64) -> (Vec<u8>, &'static str) {
    let odd = i % 2 == 1;
    match (framing, odd) {
        ("lines", false) => (b"\xff\xfe bad utf8\n".to_vec(), "invalid_utf8"),
        ("lines", true) => ([vec![b'x'; 300], b"\n".to_vec()].concat(), "too_long"),
        ("jsonl", false) => (b"not json\n".to_vec(), "bad_json"),
        ("jsonl", true) => (b"[1, 2]\n".to_vec(), "bad_json"),
        ("nmea", false) => {
            let mut s = gga(999_999).into_bytes();
            let star = s.iter().rposition(|&b| b == b'*').expect("star");
            s[star + 1] = if s[star + 1] == b'0' { b'1' } else { b'0' };
            (s, "bad_checksum")
        }
        ("nmea", true) => (b"noise without a start\r\n".to_vec(), "bad_nmea"),
        ("cobs", _) => (b"\x05\x01\x00".to_vec(), "cobs"),
        (_, false) => (b"noise".to_vec(), "garbage"),
        (_, true) => {
            let mut f = encode_len_crc16(b"corrupted");
            f[6] ^= 0x20;
            (f, "crc")
        }
    }
}

#[test]
fn every_framing_delivers_all_good_frames_and_counts_garbage_by_reason() {
    const N: u64 = 60;
    for framing in ["lines", "nmea", "jsonl", "cobs", "len_crc16"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut dev = Device::plug(&dir.path().join("tty"));
        let cfg = config(&dev.link, framing, 115_200, 256);
        let src = InProcess::start(dir.path(), "port", "serial", |ctx| serial::run(cfg, ctx));
        src.wait_for(LONG, "port open", |s| s.state == "running");
        let mut want_reasons: BTreeMap<String, u64> = BTreeMap::new();
        let mut want = Vec::new();
        for i in 0..N {
            let (bytes, payload) = good(framing, i);
            let (junk, reason) = garbage(framing, i);
            dev.write(&bytes);
            dev.write(&junk);
            want.push(payload);
            *want_reasons.entry(reason.into()).or_default() += 1;
        }
        // A last good frame ends the final garbage (len_crc16 reports noise at the next sync).
        let (bytes, payload) = good(framing, N);
        dev.write(&bytes);
        want.push(payload);
        src.wait_for(LONG, framing, |s| s.frames > N && s.invalid >= N);
        let st = src.state();
        assert_eq!(st.frames, N + 1, "{framing}: {st:?}");
        assert_eq!(st.invalid_by_reason, want_reasons, "{framing}");
        let frames = src.frames();
        let got: Vec<Value> = frames
            .iter()
            .map(|f| match framing {
                "nmea" => f.payload["alt_m"].clone(),
                _ => f.payload.clone(),
            })
            .collect();
        assert_eq!(got, want, "{framing}: payloads in order");
        let kind = match framing {
            "nmea" => "gps",
            "jsonl" => "json",
            _ => "raw",
        };
        for f in &frames {
            assert_eq!(
                (f.source.as_str(), f.device.as_str(), f.kind.as_str()),
                ("serial:port", "dev1", kind)
            );
            assert_eq!(f.vehicle.as_deref(), Some("van-1"));
        }
        src.stop();
    }
}

#[test]
fn nmea_burst_of_100k_sentences_at_921600_baud_loses_none() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dev = Device::plug(&dir.path().join("gps"));
    let cfg = config(&dev.link, "nmea", 921_600, 4096);
    let src = InProcess::start(dir.path(), "port", "serial", |ctx| serial::run(cfg, ctx));
    src.wait_for(LONG, "port open", |s| s.state == "running");
    let burst: Vec<u8> = (0..N).flat_map(|i| gga(i).into_bytes()).collect();
    let bytes = burst.len() as f64;
    let t0 = std::time::Instant::now();
    // Written as fast as the pty takes it: faster than a 921600-baud wire (92,160 B/s).
    let writer = std::thread::spawn(move || {
        for chunk in burst.chunks(4096) {
            dev.write(chunk);
        }
        dev
    });
    src.wait_for(Duration::from_secs(240), "all sentences journaled", |s| {
        s.frames >= N
    });
    let secs = t0.elapsed().as_secs_f64();
    let _dev = writer.join().expect("writer");
    eprintln!(
        "burst: {N} sentences ({:.1} MB) journaled in {secs:.2} s = {:.0} B/s \
         (921600 baud = 92160 B/s)",
        bytes / 1e6,
        bytes / secs
    );
    let st = src.state();
    assert_eq!((st.frames, st.invalid), (N, 0), "{st:?}");
    let journal = src.stop();
    let frames = journal.range(1, usize::MAX);
    assert_eq!(
        frames.len() as u64,
        N,
        "every sentence is a frame in the journal"
    );
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.payload["alt_m"], json!(i as f64), "frame {i} in order");
    }
}

#[test]
fn unplug_shows_waiting_and_replug_at_the_same_path_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dev = Device::plug(&dir.path().join("gps"));
    let cfg = config(&dev.link, "nmea", 9600, 4096);
    let src = InProcess::start(dir.path(), "port", "serial", |ctx| serial::run(cfg, ctx));
    src.wait_for(LONG, "port open", |s| s.state == "running");
    dev.write(gga(1).as_bytes());
    src.wait_for(LONG, "first frame", |s| s.frames == 1);

    let before_unplug = fieldgate::frame::now_ms();
    dev.unplug();
    src.wait_for(LONG, "waiting after unplug", |s| s.state == "waiting");
    let st = src.state();
    assert!(st.last_error.is_some());
    assert!(
        st.last_error_at_ms.is_some_and(|t| t >= before_unplug),
        "the error carries its time: {st:?}"
    );
    // The link now dangles: the source keeps retrying, still waiting.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(src.state().state, "waiting");

    dev.replug();
    src.wait_for(LONG, "running after replug", |s| s.state == "running");
    let st = src.state();
    assert_eq!(
        (st.last_error, st.last_error_at_ms),
        (None, None),
        "running again clears the outage's error"
    );
    dev.write(gga(2).as_bytes());
    dev.write(gga(3).as_bytes());
    src.wait_for(LONG, "frames after replug", |s| s.frames == 3);
    let alts: Vec<Value> = src
        .frames()
        .iter()
        .map(|f| f.payload["alt_m"].clone())
        .collect();
    assert_eq!(alts, [json!(1.0), json!(2.0), json!(3.0)]);
    src.stop();
}

#[test]
fn serial_source_runs_in_the_binary_from_a_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("dev/sensor");
    let journal = dir.path().join("journal");
    let port = free_port();
    let config = dir.path().join("fieldgate.toml");
    let text = format!(
        "[gateway]\nid = \"van-07\"\n[journal]\npath = {journal:?}\nflush_ms = 10\n\
         [listen]\naddress = \"127.0.0.1:{port}\"\n\
         [[sources.serial]]\nname = \"sensor\"\npath = {link:?}\nbaud = 115200\n\
         framing = \"jsonl\"\ndevice = \"mcu-1\"\nvehicle = \"van-07\"\n"
    );
    std::fs::write(&config, text).expect("config");
    let cfg_s = config.to_string_lossy().to_string();
    let (code, key, err) = run_cli(&[
        "keys", "add", "test", "--scopes", "admin", "--config", &cfg_s,
    ]);
    assert_eq!(code, 0, "{err}");
    let gw = Gateway::run(&config, port, key.trim(), dir.path());
    // No device yet: the source waits for it instead of failing the gateway.
    gw.status_until(LONG, |s| s["sources"]["sensor"]["state"] == "waiting");
    let mut dev = Device::plug(&link);
    gw.status_until(LONG, |s| s["sources"]["sensor"]["state"] == "running");
    for i in 0..20 {
        dev.write(format!("{{\"temp_c\": {i}.5}}\n").as_bytes());
    }
    dev.write(b"{broken\n");
    let st = gw.status_until(LONG, |s| {
        s["sources"]["sensor"]["frames"] == 20 && s["sources"]["sensor"]["invalid"] == 1
    });
    assert_eq!(
        st["sources"]["sensor"]["invalid_by_reason"],
        json!({"bad_json": 1})
    );
    assert_eq!(st["sources"]["sensor"]["kind"], "serial");

    // A WebSocket `command` for the device is written to its port (and audited).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let reply = rt.block_on(async {
        let (mut ws, _) = common::ws_connect(port, "/ws", Some(key.trim()), Some("tech"))
            .await
            .expect("ws");
        common::ws_send(
            &mut ws,
            json!({"type": "command", "data": {"device": "mcu-1", "payload": {"led": "on"}}}),
        )
        .await;
        common::ws_next_of(&mut ws, "command").await
    });
    assert_eq!(reply["message"], "sent", "{reply}");
    let wrote = dev.read_until(b"{\"led\":\"on\"}\r\n", LONG);
    assert!(
        String::from_utf8_lossy(&wrote).contains("{\"led\":\"on\"}\r\n"),
        "device got {:?}",
        String::from_utf8_lossy(&wrote)
    );
    assert!(gw.stop().success());

    let j = Journal::open(JournalConfig {
        path: journal,
        ..JournalConfig::default()
    })
    .expect("reopen journal");
    let (audit, frames): (Vec<_>, Vec<_>) = j
        .range(1, usize::MAX)
        .into_iter()
        .partition(|f| f.kind == "command");
    assert_eq!(audit.len(), 1, "the command is audited in the journal");
    assert_eq!(audit[0].payload["routed"], true);
    assert_eq!(frames.len(), 20);
    assert_eq!(frames[3].payload, json!({"temp_c": 3.5}));
    assert_eq!(
        (
            frames[0].source.as_str(),
            frames[0].device.as_str(),
            frames[0].kind.as_str()
        ),
        ("serial:sensor", "mcu-1", "json")
    );
    j.close().expect("close");
}
