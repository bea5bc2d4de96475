//! The frame: one unit of telemetry, as journaled, relayed and synced.
//!
//! This module is the one place that decides a frame's journal encoding and its MongoDB
//! `_id` (`"<gateway>:<seq>"`), so every replay of a frame lands on the same document. The
//! rest of the MongoDB document is the sink's business (`sink::mongo::encode`).
//!
//! A stored record keeps the payload as JSON text, so readers that only pass frames on
//! (live relay, API, WebSocket replay) or only need routing fields (the live status) take
//! it as a [`RecordView`] or [`RawFrame`] instead of a [`Frame`]: a 64 KiB payload of small
//! numbers is ~32,000 `Value`s (over 1 MB) as a tree and 64 KiB as text. Both serialize to
//! exactly the JSON of the [`Frame`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// One telemetry record (the contract: docs/architecture.md, "Frame").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Assigned by the journal; strictly increasing per gateway, never reused.
    pub seq: u64,
    /// The gateway id from config (`gateway.id`).
    pub gateway: String,
    /// Where it came from: `serial:<port>`, `mqtt:<topic>`, `obd:<port>`, `sim`.
    pub source: String,
    /// Device id.
    pub device: String,
    /// Vehicle id, if known.
    pub vehicle: Option<String>,
    /// Frame kind: `gps`, `obd`, `json`, `raw`, ...
    pub kind: String,
    /// Gateway receive time, unix ms.
    pub ts_ms: i64,
    /// Time reported by the device, unix ms, if any.
    pub device_ts_ms: Option<i64>,
    /// Decoded fields; undecodable bytes as `{"raw_b64": "..."}`.
    pub payload: Value,
}

/// A stored frame with its payload left as JSON text: serializes to the same JSON as the
/// [`Frame`] it was journaled from, without parsing the payload into a tree.
#[derive(Debug, Clone, Serialize)]
pub struct RawFrame {
    /// Journal seq.
    pub seq: u64,
    /// Gateway id.
    pub gateway: String,
    /// Where it came from.
    pub source: String,
    /// Device id.
    pub device: String,
    /// Vehicle id, if known.
    pub vehicle: Option<String>,
    /// Frame kind.
    pub kind: String,
    /// Gateway receive time, unix ms.
    pub ts_ms: i64,
    /// Time reported by the device, unix ms, if any.
    pub device_ts_ms: Option<i64>,
    /// The payload, as stored.
    pub payload: Box<RawValue>,
}

/// The fields of a stored record, borrowed from it (the payload checked to be JSON, not
/// parsed into a tree).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RecordView<'a> {
    /// Journal seq.
    pub seq: u64,
    /// Gateway id.
    pub gateway: &'a str,
    /// Where it came from.
    pub source: &'a str,
    /// Device id.
    pub device: &'a str,
    /// Vehicle id, if known.
    pub vehicle: Option<&'a str>,
    /// Frame kind.
    pub kind: &'a str,
    /// Gateway receive time, unix ms.
    pub ts_ms: i64,
    /// Time reported by the device, unix ms, if any.
    pub device_ts_ms: Option<i64>,
    /// The payload's JSON text.
    pub payload: &'a RawValue,
}

impl RecordView<'_> {
    /// The frame, payload kept as text.
    pub fn to_raw(&self) -> RawFrame {
        RawFrame {
            seq: self.seq,
            gateway: self.gateway.to_string(),
            source: self.source.to_string(),
            device: self.device.to_string(),
            vehicle: self.vehicle.map(str::to_string),
            kind: self.kind.to_string(),
            ts_ms: self.ts_ms,
            device_ts_ms: self.device_ts_ms,
            payload: self.payload.to_owned(),
        }
    }
}

/// Errors decoding a journal record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record's version byte is not one this build understands.
    #[error("unknown frame encoding version {0}")]
    Version(u8),
    /// The record is truncated or malformed.
    #[error("malformed frame record: {0}")]
    Postcard(#[from] postcard::Error),
    /// The payload is not valid JSON.
    #[error("malformed frame payload: {0}")]
    Payload(#[from] serde_json::Error),
}

/// Version byte that prefixes every journal record.
const ENCODING_V1: u8 = 1;

/// Journal record layout: everything but the seq (which is the key), payload as JSON text.
#[derive(Serialize, Deserialize)]
struct RecordV1<'a> {
    gateway: &'a str,
    source: &'a str,
    device: &'a str,
    vehicle: Option<&'a str>,
    kind: &'a str,
    ts_ms: i64,
    device_ts_ms: Option<i64>,
    payload: &'a str,
}

impl<'a> RecordV1<'a> {
    /// The fields of a journal record, borrowed from its bytes.
    fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (version, body) = bytes.split_first().ok_or(DecodeError::Postcard(
            postcard::Error::DeserializeUnexpectedEnd,
        ))?;
        if *version != ENCODING_V1 {
            return Err(DecodeError::Version(*version));
        }
        Ok(postcard::from_bytes(body)?)
    }
}

/// The journal key for a seq: 8-byte big-endian, so key order is seq order.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Inverse of [`seq_key`]; `None` for a key of the wrong length.
pub fn key_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Current wall-clock time as unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix ms as ISO 8601 UTC to the second, e.g. `2026-11-30T21:40:05Z` (for people).
pub fn iso8601(ms: i64) -> String {
    bson::DateTime::from_millis(ms - ms.rem_euclid(1000))
        .try_to_rfc3339_string()
        .unwrap_or_else(|_| format!("@{ms}ms"))
}

impl Frame {
    /// A frame not yet journaled (seq 0 until `Journal::append` assigns one).
    pub fn new(gateway: &str, source: &str, device: &str, kind: &str, payload: Value) -> Self {
        Frame {
            seq: 0,
            gateway: gateway.to_string(),
            source: source.to_string(),
            device: device.to_string(),
            vehicle: None,
            kind: kind.to_string(),
            ts_ms: now_ms(),
            device_ts_ms: None,
            payload,
        }
    }

    /// The MongoDB `_id` of this frame: `"<gateway>:<seq>"`.
    pub fn doc_id(&self) -> String {
        format!("{}:{}", self.gateway, self.seq)
    }

    /// Compact journal encoding (the seq is not included: it is the key).
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.payload.to_string();
        let rec = RecordV1 {
            gateway: &self.gateway,
            source: &self.source,
            device: &self.device,
            vehicle: self.vehicle.as_deref(),
            kind: &self.kind,
            ts_ms: self.ts_ms,
            device_ts_ms: self.device_ts_ms,
            payload: &payload,
        };
        let mut out = Vec::with_capacity(payload.len() + 64);
        out.push(ENCODING_V1);
        // Serializing plain strings and integers into a Vec cannot fail.
        match postcard::to_extend(&rec, out) {
            Ok(v) => v,
            Err(_) => vec![ENCODING_V1],
        }
    }

    /// Decode a journal record stored under `seq`.
    pub fn decode(seq: u64, bytes: &[u8]) -> Result<Frame, DecodeError> {
        let rec = RecordV1::decode(bytes)?;
        Ok(Frame {
            seq,
            gateway: rec.gateway.to_string(),
            source: rec.source.to_string(),
            device: rec.device.to_string(),
            vehicle: rec.vehicle.map(str::to_string),
            kind: rec.kind.to_string(),
            ts_ms: rec.ts_ms,
            device_ts_ms: rec.device_ts_ms,
            payload: serde_json::from_str(rec.payload)?,
        })
    }

    /// Borrow the fields of a journal record stored under `seq`; the payload is checked to
    /// be JSON (a scan, no tree).
    pub fn view(seq: u64, bytes: &[u8]) -> Result<RecordView<'_>, DecodeError> {
        let rec = RecordV1::decode(bytes)?;
        Ok(RecordView {
            seq,
            gateway: rec.gateway,
            source: rec.source,
            device: rec.device,
            vehicle: rec.vehicle,
            kind: rec.kind,
            ts_ms: rec.ts_ms,
            device_ts_ms: rec.device_ts_ms,
            payload: serde_json::from_str(rec.payload)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Frame {
        let mut f = Frame::new(
            "van-07",
            "sim",
            "gps0",
            "gps",
            json!({"lat": 52.5, "lon": 13.4}),
        );
        f.seq = 42;
        f.vehicle = Some("van-07".into());
        f.device_ts_ms = Some(1_700_000_000_000);
        f
    }

    #[test]
    fn roundtrip() {
        let f = sample();
        let bytes = f.encode();
        assert_eq!(Frame::decode(42, &bytes).expect("decode"), f);
    }

    /// Found by the `mqtt_message` fuzz target (input `["",184467443718446744016]`): serde_json
    /// parsed the payload's big integer to one float, printed it as `1.844674437184467e20`
    /// and read that back as a different float, so the journal changed the payload.
    #[test]
    fn payload_numbers_survive_the_journal_exactly() {
        let payload: Value = serde_json::from_str(r#"["",184467443718446744016]"#).expect("json");
        for payload in [
            payload,
            json!([1.8446744073718448e31, 5e-324, 2.2250738585072014e-308]),
        ] {
            let mut f = sample();
            f.payload = payload;
            let back = Frame::decode(42, &f.encode()).expect("decode");
            assert_eq!(back, f, "{}", f.payload);
        }
    }

    #[test]
    fn raw_and_view_match_the_frame() {
        let f = sample();
        let bytes = f.encode();
        let v = Frame::view(42, &bytes).expect("view");
        let json = serde_json::to_string(&f).expect("frame json");
        assert_eq!(serde_json::to_string(&v).expect("view json"), json);
        assert_eq!(
            serde_json::to_string(&v.to_raw()).expect("raw json"),
            json,
            "views and raw frames serialize exactly as the frame"
        );
        assert_eq!(
            (v.seq, v.device, v.vehicle, v.kind),
            (42, "gps0", Some("van-07"), "gps")
        );
        assert_eq!(v.payload.get(), f.payload.to_string());
    }

    #[test]
    fn corrupt_records_are_errors() {
        let bytes = sample().encode();
        assert!(Frame::decode(1, &[]).is_err());
        assert!(Frame::decode(1, &[9, 1, 2]).is_err());
        assert!(Frame::decode(1, &bytes[..bytes.len() / 2]).is_err());
        assert!(Frame::view(1, &bytes[..bytes.len() / 2]).is_err());
        assert!(Frame::view(1, &[]).is_err());
    }

    #[test]
    fn keys_sort_by_seq() {
        assert!(seq_key(255) < seq_key(256));
        assert_eq!(key_seq(&seq_key(77)), Some(77));
        assert_eq!(key_seq(b"short"), None);
    }
}
