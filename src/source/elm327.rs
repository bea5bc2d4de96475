//! The ELM327 dialect: parsing adapter replies, decoding mode-01 PIDs and mode-03 DTCs.
//!
//! An ELM327 answers each command with text lines ended by `\r` and a `>` prompt. Besides
//! data (`410C145F`, with or without spaces, headers off) it says `OK`, echoes commands,
//! prints `SEARCHING...` while it finds the bus protocol, and reports failures in words
//! (`NO DATA`, `?`, `UNABLE TO CONNECT`, `STOPPED`, `CAN ERROR`, ...). Long answers come as
//! ISO-TP multi-frame lines (`014`, `0: 49020157...`, `1: ...`). This module is pure: the
//! poller in [`super::obd`] does the IO, the simulator's adapter in [`super::sim_devices`]
//! encodes with the same PID table, so each formula is written once.

use serde_json::{Map, Value};

/// One standard mode-01 PID: field name, unit, data bytes, and both directions of its formula.
pub struct Pid {
    /// PID number.
    pub pid: u8,
    /// Payload field name (carries the unit: `coolant_c`, `speed_kmh`).
    pub field: &'static str,
    /// Unit, for the payload's `units` map.
    pub unit: &'static str,
    /// Data bytes in the answer.
    pub bytes: usize,
    /// Data bytes → value.
    pub decode: fn(&[u8]) -> f64,
    /// Value → data bytes (for the simulator).
    pub encode: fn(f64) -> Vec<u8>,
}

fn ab(d: &[u8]) -> f64 {
    f64::from(d[0]) * 256.0 + f64::from(d[1])
}
fn two(v: f64) -> Vec<u8> {
    let n = v.round().clamp(0.0, 65535.0) as u16;
    n.to_be_bytes().to_vec()
}
fn one(v: f64) -> Vec<u8> {
    vec![v.round().clamp(0.0, 255.0) as u8]
}
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The PIDs fieldgate decodes (at least the issue's list; unknown ones are kept as hex).
#[rustfmt::skip]
pub const PIDS: &[Pid] = &[
    Pid { pid: 0x04, field: "load_pct", unit: "%", bytes: 1,
        decode: |d| round2(f64::from(d[0]) * 100.0 / 255.0), encode: |v| one(v * 255.0 / 100.0) },
    Pid { pid: 0x05, field: "coolant_c", unit: "°C", bytes: 1,
        decode: |d| f64::from(d[0]) - 40.0, encode: |v| one(v + 40.0) },
    Pid { pid: 0x0B, field: "map_kpa", unit: "kPa", bytes: 1,
        decode: |d| f64::from(d[0]), encode: one },
    Pid { pid: 0x0C, field: "rpm", unit: "rpm", bytes: 2,
        decode: |d| ab(d) / 4.0, encode: |v| two(v * 4.0) },
    Pid { pid: 0x0D, field: "speed_kmh", unit: "km/h", bytes: 1,
        decode: |d| f64::from(d[0]), encode: one },
    Pid { pid: 0x0F, field: "intake_c", unit: "°C", bytes: 1,
        decode: |d| f64::from(d[0]) - 40.0, encode: |v| one(v + 40.0) },
    Pid { pid: 0x10, field: "maf_gs", unit: "g/s", bytes: 2,
        decode: |d| ab(d) / 100.0, encode: |v| two(v * 100.0) },
    Pid { pid: 0x11, field: "throttle_pct", unit: "%", bytes: 1,
        decode: |d| round2(f64::from(d[0]) * 100.0 / 255.0), encode: |v| one(v * 255.0 / 100.0) },
    Pid { pid: 0x1F, field: "run_time_s", unit: "s", bytes: 2,
        decode: ab, encode: two },
    Pid { pid: 0x2F, field: "fuel_pct", unit: "%", bytes: 1,
        decode: |d| round2(f64::from(d[0]) * 100.0 / 255.0), encode: |v| one(v * 255.0 / 100.0) },
    Pid { pid: 0x33, field: "baro_kpa", unit: "kPa", bytes: 1,
        decode: |d| f64::from(d[0]), encode: one },
    Pid { pid: 0x42, field: "module_v", unit: "V", bytes: 2,
        decode: |d| ab(d) / 1000.0, encode: |v| two(v * 1000.0) },
    Pid { pid: 0x46, field: "ambient_c", unit: "°C", bytes: 1,
        decode: |d| f64::from(d[0]) - 40.0, encode: |v| one(v + 40.0) },
    Pid { pid: 0x5C, field: "oil_c", unit: "°C", bytes: 1,
        decode: |d| f64::from(d[0]) - 40.0, encode: |v| one(v + 40.0) },
];

/// The table entry of `pid`, if fieldgate knows it.
pub fn pid_info(pid: u8) -> Option<&'static Pid> {
    PIDS.iter().find(|p| p.pid == pid)
}

/// What an adapter said in reply to one command (everything before the `>` prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Data messages (hex bytes), multi-frame lines already joined.
    Data(Vec<Vec<u8>>),
    /// `OK` or text without data (`ELM327 v1.5`, `13.1V`).
    Text(String),
    /// `NO DATA`: nobody on the bus answered (e.g. an unsupported PID).
    NoData,
    /// `?`: the adapter did not understand the command.
    Unknown,
    /// An adapter or bus error, with its stable reason label and the words it used.
    Error(&'static str, String),
}

impl Reply {
    /// The stable reason label of a reply that is not data.
    pub fn reason(&self) -> &'static str {
        match self {
            Reply::Data(_) | Reply::Text(_) => "bad_response",
            Reply::NoData => "no_data",
            Reply::Unknown => "unknown_command",
            Reply::Error(reason, _) => reason,
        }
    }
}

/// Classifies an error line, if it is one.
fn error_line(line: &str) -> Option<&'static str> {
    let l = line.trim_start_matches('<');
    if l.starts_with("UNABLE TO CONNECT") || (l.starts_with("BUS INIT") && l.contains("ERROR")) {
        Some("no_connection")
    } else if l.starts_with("STOPPED") {
        Some("stopped")
    } else if [
        "CAN ERROR",
        "BUS ERROR",
        "BUS BUSY",
        "FB ERROR",
        "DATA ERROR",
        "RX ERROR",
        "BUFFER FULL",
        "LV RESET",
        "ACT ALERT",
    ]
    .iter()
    .any(|e| l.starts_with(e))
        || (l.len() == 5 && l.starts_with("ERR"))
    {
        Some("bus_error")
    } else {
        None
    }
}

/// Hex digits (spaces allowed) → bytes; `None` unless every digit pairs up.
fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if digits.is_empty()
        || !digits.len().is_multiple_of(2)
        || !digits.iter().all(u8::is_ascii_hexdigit)
    {
        return None;
    }
    let text = std::str::from_utf8(&digits).ok()?;
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses the text an adapter sent for `command` (echo, `SEARCHING...` and blank lines
/// are skipped; the trailing `>` may or may not be included).
pub fn parse_reply(text: &str, command: &str) -> Reply {
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let cmd = squash(command).to_ascii_uppercase();
    let mut messages: Vec<Vec<u8>> = Vec::new();
    let mut multi: Option<(Option<usize>, Vec<u8>)> = None;
    let mut words = Vec::new();
    let mut no_data = false;
    for raw in text.split(['\r', '\n', '>']) {
        let line = raw.trim().to_ascii_uppercase();
        if line.is_empty() || squash(&line) == cmd || line.starts_with("SEARCHING") {
            continue;
        }
        if line.starts_with("BUS INIT") && !line.contains("ERROR") {
            continue;
        }
        if line == "NO DATA" {
            no_data = true;
            continue;
        }
        if line == "?" {
            return Reply::Unknown;
        }
        if let Some(reason) = error_line(&line) {
            return Reply::Error(reason, line);
        }
        // ISO-TP: a 3-digit byte count, then `N: data` lines.
        if line.len() == 3 && line.bytes().all(|b| b.is_ascii_hexdigit()) {
            let len = usize::from_str_radix(&line, 16).ok();
            multi = Some((len, Vec::new()));
            continue;
        }
        if let Some((idx, rest)) = line.split_once(':') {
            if idx.len() == 1 && idx.bytes().all(|b| b.is_ascii_hexdigit()) {
                if let Some(bytes) = hex_bytes(rest) {
                    multi.get_or_insert((None, Vec::new())).1.extend(bytes);
                    continue;
                }
            }
        }
        match hex_bytes(&line) {
            Some(bytes) => messages.push(bytes),
            None => words.push(line),
        }
    }
    if let Some((len, mut bytes)) = multi {
        if let Some(len) = len {
            bytes.truncate(len);
        }
        messages.push(bytes);
    }
    if !messages.is_empty() {
        Reply::Data(messages)
    } else if no_data {
        Reply::NoData
    } else {
        Reply::Text(words.join(" "))
    }
}

/// The data bytes of `pid` in a mode-01 reply (the first ECU that answered it).
pub fn mode01_data(messages: &[Vec<u8>], pid: u8) -> Option<&[u8]> {
    messages
        .iter()
        .find(|m| m.len() > 2 && m[0] == 0x41 && m[1] == pid)
        .map(|m| &m[2..])
}

/// Decodes one PID's data into `(field, value, unit)`; unknown PIDs keep their hex.
pub fn decode_pid(pid: u8, data: &[u8]) -> Option<(String, Value, Option<&'static str>)> {
    match pid_info(pid) {
        Some(p) if data.len() >= p.bytes => {
            let v = (p.decode)(&data[..p.bytes]);
            let n = serde_json::Number::from_f64(v)?;
            Some((p.field.to_string(), Value::Number(n), Some(p.unit)))
        }
        Some(_) => None,
        None => {
            let hex: String = data.iter().map(|b| format!("{b:02X}")).collect();
            Some((format!("pid_{pid:02X}"), Value::String(hex), None))
        }
    }
}

/// Formats a DTC from its two bytes: `P0133`, `C1234`, `B0001`, `U0100`.
pub fn dtc_code(a: u8, b: u8) -> String {
    let letter = ['P', 'C', 'B', 'U'][usize::from(a >> 6)];
    format!("{letter}{}{:X}{b:02X}", (a >> 4) & 3, a & 0x0F)
}

/// The trouble codes in a mode-03 reply (every ECU; padding `0000` dropped, no repeats).
///
/// CAN adapters put a count byte after `43` (odd byte count), older buses do not.
pub fn dtcs(messages: &[Vec<u8>]) -> Vec<String> {
    let mut out = Vec::new();
    for m in messages.iter().filter(|m| m.first() == Some(&0x43)) {
        let mut rest = &m[1..];
        if !rest.len().is_multiple_of(2) {
            rest = &rest[1..];
        }
        for pair in rest.chunks_exact(2) {
            let code = dtc_code(pair[0], pair[1]);
            if (pair[0], pair[1]) != (0, 0) && !out.contains(&code) {
                out.push(code);
            }
        }
    }
    out
}

/// Builds the `units` map for the fields present in `payload`.
pub fn units_for(payload: &Map<String, Value>) -> Map<String, Value> {
    PIDS.iter()
        .filter(|p| payload.contains_key(p.field))
        .map(|p| (p.field.to_string(), Value::from(p.unit)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(text: &str, cmd: &str) -> Vec<Vec<u8>> {
        match parse_reply(text, cmd) {
            Reply::Data(m) => m,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn decoders_match_the_standard_formulas() {
        let cases: [(u8, &[u8], &str, Value); 8] = [
            (0x0C, &[0x14, 0x5F], "rpm", json!(1303.75)),
            (0x0D, &[0x0A], "speed_kmh", json!(10.0)),
            (0x05, &[0x5F], "coolant_c", json!(55.0)),
            (0x0F, &[0x39], "intake_c", json!(17.0)),
            (0x10, &[0x18, 0x1F], "maf_gs", json!(61.75)),
            (0x11, &[0x2B], "throttle_pct", json!(16.86)),
            (0x2F, &[0xAA], "fuel_pct", json!(66.67)),
            (0x42, &[0x39, 0x4B], "module_v", json!(14.667)),
        ];
        for (pid, bytes, field, want) in cases {
            let (f, v, unit) = decode_pid(pid, bytes).expect("decodes");
            assert_eq!((f.as_str(), &v), (field, &want), "PID {pid:02X}");
            assert!(unit.is_some());
        }
        assert_eq!(decode_pid(0x0C, &[0x14]), None, "short data");
        let (f, v, unit) = decode_pid(0xA6, &[1, 2, 3, 4]).expect("unknown kept");
        assert_eq!((f.as_str(), v, unit), ("pid_A6", json!("01020304"), None));
    }

    #[test]
    fn encode_inverts_decode() {
        for p in PIDS {
            let bytes = vec![0x12; p.bytes];
            let v = (p.decode)(&bytes);
            assert_eq!((p.decode)(&(p.encode)(v)), v, "{}", p.field);
        }
    }

    #[test]
    fn replies_with_and_without_spaces_echo_and_searching() {
        assert_eq!(
            data("410C145F\r\r>", "010C"),
            [vec![0x41, 0x0C, 0x14, 0x5F]]
        );
        assert_eq!(
            data("010C\r41 0C 14 5F \r\r>", "010C"),
            [vec![0x41, 0x0C, 0x14, 0x5F]]
        );
        let searching = "SEARCHING...\r4100BE3FA813\r\r>";
        assert_eq!(
            data(searching, "0100"),
            [vec![0x41, 0, 0xBE, 0x3F, 0xA8, 0x13]]
        );
        let two_ecus = data("410C145F\r410C1460\r\r", "010C");
        assert_eq!(mode01_data(&two_ecus, 0x0C), Some(&[0x14, 0x5F][..]));
        assert_eq!(mode01_data(&two_ecus, 0x0D), None);
        assert_eq!(
            parse_reply("ATZ\r\r\rELM327 v1.5\r\r>", "ATZ"),
            Reply::Text("ELM327 V1.5".into())
        );
        assert_eq!(parse_reply("OK\r\r>", "ATE0"), Reply::Text("OK".into()));
    }

    #[test]
    fn failures_have_stable_reasons() {
        let cases = [
            ("NO DATA\r\r>", "no_data"),
            ("?\r\r>", "unknown_command"),
            ("SEARCHING...\rUNABLE TO CONNECT\r\r>", "no_connection"),
            ("BUS INIT: ...ERROR\r\r>", "no_connection"),
            ("STOPPED\r\r>", "stopped"),
            ("CAN ERROR\r\r>", "bus_error"),
            ("<RX ERROR\r>", "bus_error"),
            ("ERR94\r\r>", "bus_error"),
            ("\r\r>", "bad_response"),
        ];
        for (text, reason) in cases {
            assert_eq!(parse_reply(text, "010C").reason(), reason, "{text:?}");
        }
    }

    #[test]
    fn multi_frame_lines_are_joined_to_their_length() {
        let vin = "014\r0: 490201575030\r1: 5A5A5A39395A54\r2: 53333930303030\r\r>";
        let m = data(vin, "0902");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].len(), 0x14);
        assert_eq!(&m[0][..3], &[0x49, 0x02, 0x01]);
    }

    #[test]
    fn dtcs_from_can_and_legacy_replies() {
        assert_eq!(dtc_code(0x01, 0x33), "P0133");
        assert_eq!(dtc_code(0xC1, 0x00), "U0100");
        assert_eq!(dtc_code(0x52, 0x34), "C1234");
        assert_eq!(dtcs(&data("4300\r\r>", "03")), Vec::<String>::new());
        assert_eq!(
            dtcs(&data("43 02 01 33 04 20\r\r>", "03")),
            ["P0133", "P0420"]
        );
        // Legacy (no count byte), padded, two ECUs repeating a code.
        let legacy = data("43 01 33 00 00 00 00\r43 01 33 C1 00 00 00\r>", "03");
        assert_eq!(dtcs(&legacy), ["P0133", "U0100"]);
        // CAN multi-frame with many codes.
        let many = data(
            "00C\r0: 43 05 01 33 04 20\r1: 01 71 01 72 03 00 00\r>",
            "03",
        );
        assert_eq!(dtcs(&many), ["P0133", "P0420", "P0171", "P0172", "P0300"]);
    }

    #[test]
    fn units_follow_fields() {
        let p = json!({"rpm": 1.0, "coolant_c": 2.0, "other": 3});
        let units = units_for(p.as_object().expect("object"));
        assert_eq!(
            Value::Object(units),
            json!({"rpm": "rpm", "coolant_c": "°C"})
        );
    }
}
