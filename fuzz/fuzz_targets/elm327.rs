//! ELM327 replies: `parse_reply`, then what the OBD poller does with them (mode-01 PIDs,
//! mode-03 DTCs, units).
//!
//! Input: one byte choosing the command the reply answers, then the reply bytes, read as
//! the poller reads them (lossy UTF-8, at most the poller's 4 KiB reply buffer).
#![no_main]

use fieldgate::source::elm327::{self, Reply};
use fieldgate_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// The poller keeps at most this much of a reply (`obd::REPLY_MAX`).
const REPLY_MAX: usize = 4096;
/// Commands the poller sends.
const COMMANDS: [&str; 8] = ["ATZ", "ATE0", "ATL0", "ATS0", "ATSP0", "0100", "03", "ATRV"];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sel = input.byte();
    let pid_cmd;
    let command = match COMMANDS.get(usize::from(sel >> 4)) {
        Some(c) => *c,
        None => {
            pid_cmd = format!("01{:02X}", input.byte());
            &pid_cmd
        }
    };
    let rest = input.rest();
    let rest = &rest[rest.len().saturating_sub(REPLY_MAX)..];
    let text = String::from_utf8_lossy(rest);
    let reply = elm327::parse_reply(&text, command);
    assert!(!reply.reason().is_empty());
    let Reply::Data(messages) = &reply else {
        return;
    };
    assert!(!messages.is_empty());
    let mut payload = Map::new();
    for pid in 0..=u8::MAX {
        let Some(data) = elm327::mode01_data(messages, pid) else {
            continue;
        };
        if let Some((field, value, unit)) = elm327::decode_pid(pid, data) {
            assert!(!field.is_empty());
            match (&value, unit) {
                (Value::Number(n), Some(_)) => {
                    assert!(n.as_f64().is_some_and(f64::is_finite), "{field} = {n}");
                }
                (Value::String(hex), None) => assert_eq!(hex.len(), 2 * data.len()),
                other => panic!("pid {pid:02X}: unexpected {other:?}"),
            }
            payload.insert(field, value);
        }
    }
    let units = elm327::units_for(&payload);
    assert!(units.keys().all(|k| payload.contains_key(k)));
    let codes = elm327::dtcs(messages);
    let bytes: usize = messages.iter().map(Vec::len).sum();
    assert!(codes.len() <= bytes / 2);
    let mut seen = std::collections::BTreeSet::new();
    for code in &codes {
        let c = code.as_bytes();
        assert!(
            c.len() == 5
                && b"PCBU".contains(&c[0])
                && (b'0'..=b'3').contains(&c[1])
                && c[2..].iter().all(u8::is_ascii_hexdigit),
            "bad DTC {code:?}"
        );
        assert!(seen.insert(code), "repeated DTC {code}");
    }
});
