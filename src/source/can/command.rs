//! A technician's CAN transmit: `{"device": ..., "can": {"id": ..., "data": "hex"}}`.
//!
//! The WebSocket `command` message carries the frame under `can`; it is checked here
//! before it is routed (so a malformed one is refused to the technician, not dropped in the
//! source), routed like every command to the source that owns the device, audited, and
//! written by the source task with [`super::transport::Link::send`]. Only a bus configured
//! `writable = true` registers a route: a listen-only bus has none, and its adapter is
//! opened in listen-only mode anyway.
//!
//! `id` is a number or a hex string (`"0x18FEF100"`); it is a 29-bit id if above 0x7FF or
//! if `"ext": true`. `data` is up to 8 bytes as hex (spaces allowed), or absent with
//! `"rtr": true` and a `"dlc"` for a remote frame.

use super::CanFrame;
use serde_json::{json, Value};

/// Parses a `can` object (or a routed payload `{"can": {...}}`) into a frame.
pub fn parse(v: &Value) -> Result<CanFrame, String> {
    let v = v.get("can").unwrap_or(v);
    let obj = v.as_object().ok_or("can: expected an object {id, data}")?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "id" | "data" | "ext" | "rtr" | "dlc") {
            return Err(format!(
                "can: unknown field {key:?} (expected id, data, ext, rtr, dlc)"
            ));
        }
    }
    let id = match obj.get("id") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or("can.id: expected a non-negative integer")?,
        Some(Value::String(s)) => {
            let digits = s.trim().trim_start_matches("0x").trim_start_matches("0X");
            u64::from_str_radix(digits, 16)
                .map_err(|_| format!("can.id: expected hex such as \"0x123\", got {s:?}"))?
        }
        _ => return Err("can.id: required (a number or a hex string)".into()),
    };
    let id = u32::try_from(id)
        .ok()
        .filter(|i| *i <= super::EFF_MAX)
        .ok_or("can.id: above 0x1FFFFFFF")?;
    let ext = match obj.get("ext") {
        None => id > super::SFF_MAX,
        Some(v) => v.as_bool().ok_or("can.ext: expected true or false")?,
    };
    if !ext && id > super::SFF_MAX {
        return Err(format!("can.id: {id:#x} needs a 29-bit id (ext: true)"));
    }
    let rtr = match obj.get("rtr") {
        None => false,
        Some(v) => v.as_bool().ok_or("can.rtr: expected true or false")?,
    };
    if rtr {
        if obj.contains_key("data") {
            return Err("can: a remote frame (rtr) carries no data".into());
        }
        let dlc = obj
            .get("dlc")
            .map_or(Some(0), Value::as_u64)
            .filter(|d| *d <= 8)
            .ok_or("can.dlc: expected 0-8")?;
        return CanFrame::remote(id, ext, dlc as u8).ok_or_else(|| "can: bad remote frame".into());
    }
    if obj.contains_key("dlc") {
        return Err("can.dlc: only for remote frames (the data gives the length)".into());
    }
    let text: String = match obj.get("data") {
        None => String::new(),
        Some(Value::String(s)) => s.chars().filter(|c| !c.is_whitespace()).collect(),
        Some(_) => return Err("can.data: expected a hex string such as \"0102AB\"".into()),
    };
    if text.len() > 16 {
        return Err(format!(
            "can.data: at most 8 bytes, got {} hex digits",
            text.len()
        ));
    }
    let data = hex::decode(&text).map_err(|e| format!("can.data: {e}"))?;
    CanFrame::new(id, ext, &data).ok_or_else(|| "can: bad frame".into())
}

/// What a WebSocket `command` routes: `{"can": ...}` (checked first) when it has a `can`
/// object, else its `payload` as before.
pub fn routed_payload(payload: Value, can: Option<Value>) -> Result<Value, String> {
    match can {
        Some(can) => {
            parse(&can)?;
            Ok(json!({ "can": can }))
        }
        None => Ok(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_into_frames() {
        let f = parse(&json!({"id": 0x123, "data": "01 02 ab"})).expect("std");
        assert_eq!(f, CanFrame::new(0x123, false, &[1, 2, 0xAB]).expect("f"));
        let f =
            parse(&json!({"can": {"id": "0x18FEF100", "data": ""}})).expect("routed, ext by value");
        assert_eq!((f.id, f.ext, f.data().len()), (0x18FEF100, true, 0));
        let f = parse(&json!({"id": 5, "ext": true, "data": "FF"})).expect("small ext");
        assert!(f.ext);
        let f = parse(&json!({"id": 0x7DF, "rtr": true, "dlc": 8})).expect("rtr");
        assert!(f.rtr && f.dlc() == 8);
        for (bad, want) in [
            (json!("t1230"), "expected an object"),
            (json!({"data": "00"}), "can.id: required"),
            (json!({"id": -1}), "non-negative"),
            (json!({"id": 0x2000_0000u32}), "above 0x1FFFFFFF"),
            (json!({"id": 0x800, "ext": false}), "needs a 29-bit id"),
            (
                json!({"id": 1, "data": "0011223344556677 88"}),
                "at most 8 bytes",
            ),
            (json!({"id": 1, "data": "0g"}), "can.data"),
            (json!({"id": 1, "data": "123"}), "can.data"),
            (json!({"id": 1, "data": 12}), "hex string"),
            (
                json!({"id": 1, "rtr": true, "data": "00"}),
                "carries no data",
            ),
            (json!({"id": 1, "rtr": true, "dlc": 9}), "0-8"),
            (json!({"id": 1, "port": 2}), "unknown field"),
        ] {
            let e = parse(&bad).expect_err(&bad.to_string());
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert_eq!(routed_payload(json!("x"), None), Ok(json!("x")));
        assert_eq!(
            routed_payload(Value::Null, Some(json!({"id": 1}))),
            Ok(json!({"can": {"id": 1}}))
        );
        assert!(routed_payload(Value::Null, Some(json!({"id": "zz"}))).is_err());
    }
}
