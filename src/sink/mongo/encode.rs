//! Frame → MongoDB document, one frame at a time (docs/mongodb.md).
//!
//! The document is the frame's fields with `_id = "<gateway>:<seq>"`, `ts` (and
//! `device_ts`) as BSON DateTimes, `h` (the content hash, see [`content_hash`]) and the
//! payload as a BSON document. Payloads are JSON from outside, and not every JSON value fits
//! BSON as-is, so each frame is encoded on its own and one that does not fit never holds up
//! the others:
//! - an integer beyond `i64` is stored exactly as Decimal128 (the document stays as-is);
//! - a key containing `\0` (BSON keys are C strings), a document above MongoDB's 16 MiB,
//!   or one the server refuses (`fallback` is also used for that) is stored in the
//!   *fallback form*: the same envelope, no `payload`, but `payload_json` (the payload as
//!   the journal holds it, compact JSON text) and `encode_error` (why).
//!
//! Keys starting with `$` or containing `.` are legal in MongoDB 5.0+ and go in as-is.

use crate::frame::Frame;
use bson::{Bson, DateTime, Decimal128, RawDocumentBuf};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// MongoDB's limit on one document (`maxBsonObjectSize`).
pub const MAX_DOCUMENT: usize = 16 * 1024 * 1024;

/// Why a frame was not stored as plain BSON; the label is what status and metrics count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// An integer beyond `i64`, stored as Decimal128 (document otherwise as-is).
    BigInteger,
    /// A payload key contains `\0`: fallback form.
    NulInKey,
    /// The document would exceed 16 MiB: fallback form.
    TooLarge,
    /// The server refused the document as-is: fallback form.
    Refused,
}

impl Special {
    /// Stable label for `/api/status` and `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Special::BigInteger => "big_integer",
            Special::NulInKey => "nul_in_key",
            Special::TooLarge => "too_large",
            Special::Refused => "refused",
        }
    }
}

/// One frame, encoded.
pub struct Encoded {
    /// The frame's seq.
    pub seq: u64,
    /// The document as it is sent.
    pub doc: RawDocumentBuf,
    /// Its `h`.
    pub hash: i64,
    /// Set when the frame was not stored as plain BSON.
    pub special: Option<Special>,
}

/// The document layout; `payload` or `payload_json` + `encode_error`.
#[derive(Serialize)]
struct Doc<'a, P: Serialize> {
    _id: &'a str,
    seq: i64,
    gateway: &'a str,
    source: &'a str,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vehicle: Option<&'a str>,
    kind: &'a str,
    ts: DateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_ts: Option<DateTime>,
    h: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<P>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_json: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_omitted_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encode_error: Option<&'a str>,
}

impl<'a, P: Serialize> Doc<'a, P> {
    fn envelope(f: &'a Frame, id: &'a str, hash: i64) -> Self {
        Doc {
            _id: id,
            seq: f.seq as i64,
            gateway: &f.gateway,
            source: &f.source,
            device: &f.device,
            vehicle: f.vehicle.as_deref(),
            kind: &f.kind,
            ts: DateTime::from_millis(f.ts_ms),
            device_ts: f.device_ts_ms.map(DateTime::from_millis),
            h: hash,
            payload: None,
            payload_json: None,
            payload_omitted_bytes: None,
            encode_error: None,
        }
    }

    /// Serialized, if it fits MongoDB's limit.
    fn fitting(&self) -> Result<RawDocumentBuf, String> {
        let doc = bson::to_raw_document_buf(self).map_err(|e| e.to_string())?;
        match doc.as_bytes().len() {
            n if n > MAX_DOCUMENT => Err(format!(
                "document of {n} bytes exceeds MongoDB's {MAX_DOCUMENT}"
            )),
            _ => Ok(doc),
        }
    }
}

/// The frame's content hash, kept in every document as `h`: the first 8 bytes of SHA-256,
/// as a big-endian i64, over the frame's fields in a fixed order (docs/mongodb.md spells it
/// out). It tells a replay of this very frame from a different frame under the same `_id`.
pub fn content_hash(f: &Frame) -> i64 {
    let mut h = FieldHash(Sha256::new());
    h.field(b"fieldgate frame 1");
    h.field(&f.seq.to_be_bytes());
    h.field(f.gateway.as_bytes());
    h.field(f.source.as_bytes());
    h.field(f.device.as_bytes());
    h.optional(f.vehicle.as_deref().map(str::as_bytes));
    h.field(f.kind.as_bytes());
    h.field(&f.ts_ms.to_be_bytes());
    h.optional(
        f.device_ts_ms
            .map(i64::to_be_bytes)
            .as_ref()
            .map(|b| &b[..]),
    );
    // Last, so it needs no length: the payload's compact JSON, serialized into a buffer
    // first (fed token by token, one update per token, it cost ~1.4x as much).
    let mut json = Vec::with_capacity(256);
    // Serializing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut json, &f.payload);
    h.0.update(&json);
    let d = h.0.finalize();
    let mut top = [0u8; 8];
    top.copy_from_slice(&d[..8]);
    i64::from_be_bytes(top)
}

/// SHA-256 fed field by field.
struct FieldHash(Sha256);

impl FieldHash {
    /// A length-prefixed field (u64 big-endian length, then the bytes).
    fn field(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_be_bytes());
        self.0.update(b);
    }

    /// An optional field: one byte 0 for none, or 1 then the field.
    fn optional(&mut self, b: Option<&[u8]>) {
        match b {
            None => self.0.update([0]),
            Some(b) => {
                self.0.update([1]);
                self.field(b);
            }
        }
    }
}

/// Encode `f` for `frames`: as-is when BSON can hold it, else in the fallback form.
pub fn encode(f: &Frame) -> Encoded {
    let id = f.doc_id();
    let hash = content_hash(f);
    let out = |doc, special| Encoded {
        seq: f.seq,
        doc,
        hash,
        special,
    };
    // Fast path: the payload straight into BSON bytes.
    let mut d = Doc::envelope(f, &id, hash);
    d.payload = Some(&f.payload);
    let error = match d.fitting() {
        Ok(doc) => return out(doc, None),
        Err(e) => e,
    };
    // Slow path: find out why, and store what can be stored.
    let (special, detail) = match to_bson(&f.payload) {
        Ok((payload, big)) => {
            let mut d = Doc::envelope(f, &id, hash);
            d.payload = Some(payload);
            match d.fitting() {
                Ok(doc) => return out(doc, big.then_some(Special::BigInteger)),
                Err(e) => (Special::TooLarge, e),
            }
        }
        Err(Unfit::NulInKey) => (
            Special::NulInKey,
            "a payload key contains \\0, which BSON keys cannot hold".to_string(),
        ),
        Err(Unfit::Other) => (Special::TooLarge, error),
    };
    let (doc, special) = fallback_doc(f, &id, hash, special, &detail);
    out(doc, Some(special))
}

/// The fallback form of `f` after the server refused it as-is with `error`.
pub fn fallback(f: &Frame, error: &str) -> Encoded {
    let id = f.doc_id();
    let hash = content_hash(f);
    let (doc, special) = fallback_doc(f, &id, hash, Special::Refused, error);
    Encoded {
        seq: f.seq,
        doc,
        hash,
        special: Some(special),
    }
}

fn fallback_doc(
    f: &Frame,
    id: &str,
    hash: i64,
    special: Special,
    detail: &str,
) -> (RawDocumentBuf, Special) {
    let json = f.payload.to_string();
    let error = format!("{}: {detail}", special.label());
    let mut d = Doc::<()>::envelope(f, id, hash);
    d.payload_json = Some(&json);
    d.encode_error = Some(&error);
    if let Ok(doc) = d.fitting() {
        return (doc, special);
    }
    // Even the JSON text is too big for one document: keep the envelope and say so; the
    // payload stays in the journal (`fieldgate journal export`) until retention.
    let error = format!(
        "too_large: {} bytes of payload JSON exceed MongoDB's {MAX_DOCUMENT}-byte document",
        json.len()
    );
    let mut d = Doc::<()>::envelope(f, id, hash);
    d.payload_omitted_bytes = Some(json.len() as i64);
    d.encode_error = Some(&error);
    // An envelope of bounded strings always serializes; an empty document is the floor.
    (d.fitting().unwrap_or_default(), Special::TooLarge)
}

/// Why a payload cannot be BSON as-is.
enum Unfit {
    NulInKey,
    Other,
}

/// JSON → BSON: integers as Int64, or Decimal128 (exact) beyond `i64`; the flag says
/// whether any was. Keys with `\0` are refused.
fn to_bson(v: &Value) -> Result<(Bson, bool), Unfit> {
    let mut big = false;
    let b = convert(v, &mut big)?;
    Ok((b, big))
}

fn convert(v: &Value, big: &mut bool) -> Result<Bson, Unfit> {
    Ok(match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Bson::Int64(i),
            (None, Some(u), _) => {
                *big = true;
                let d: Decimal128 = u.to_string().parse().map_err(|_| Unfit::Other)?;
                Bson::Decimal128(d)
            }
            (None, None, Some(f)) => Bson::Double(f),
            (None, None, None) => return Err(Unfit::Other),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(a) => Bson::Array(
            a.iter()
                .map(|x| convert(x, big))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut d = bson::Document::new();
            for (k, x) in m {
                if k.contains('\0') {
                    return Err(Unfit::NulInKey);
                }
                d.insert(k.clone(), convert(x, big)?);
            }
            Bson::Document(d)
        }
    })
}

#[cfg(test)]
mod tests;
