//! Serial stream framing: turns the byte stream of a port into frames.
//!
//! A serial port delivers bytes with no boundaries, and devices send garbage: noise at
//! plug-in, half sentences after a reconnect, the wrong baud rate. Each configured
//! [`Framing`] is decoded by one [`FrameDecoder`], a `tokio_util::codec::Decoder` driven by
//! `FramedRead`. Bad input is an *item* (`Err(FrameError)`), not a stream error, so the
//! source counts it (by [`FrameError::reason`]) and keeps reading; the decoder's own error
//! is only real IO. Memory is bounded by `max_frame` whatever arrives.
//!
//! - `lines`, `jsonl`, `nmea`: split on `\n` (a trailing `\r` is stripped, empty lines are
//!   skipped). `max_frame` bounds the bytes before the `\n`; a longer line yields one
//!   `too_long` and is discarded up to the next `\n`. `jsonl` lines must be JSON objects;
//!   `nmea` lines must be checksum-valid sentences, and bytes before the last `$`/`!` of a
//!   line are reported as `garbage` while the sentence after them is still decoded.
//! - `cobs`: COBS-encoded frames, each terminated by `0x00`; `max_frame` bounds the encoded
//!   bytes between delimiters. Consecutive `0x00` (empty frames) are skipped.
//! - `len_crc16`: `[0xA5 0x5A] [len: u16 BE] [payload: len bytes] [crc: u16 BE]`, where
//!   `crc` is CRC-16/CCITT-FALSE (`CRC_16_IBM_3740`: poly 0x1021, init 0xFFFF) over the two
//!   length bytes and the payload. `len > max_frame` (`too_long`) or a CRC mismatch (`crc`)
//!   resyncs by searching for the next `A5 5A` one byte after the rejected sync, so a good
//!   frame hidden behind a false sync is still found. Bytes skipped while hunting for a sync
//!   are reported as `garbage` (at the next sync, at EOF, or once `max_frame` of them pile
//!   up); those right after a rejected frame belong to that error and are not reported again.
//!
//! At EOF a partial final line or COBS frame is decoded as if terminated; a partial
//! `len_crc16` frame yields `truncated`.

use std::fmt;

use serde_json::Value;
use tokio_util::bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use crate::source::nmea::{self, NmeaError, Sentence};

/// Sync pattern that starts every `len_crc16` frame.
const SYNC: [u8; 2] = [0xA5, 0x5A];
/// `len_crc16` header: sync + length.
const HEADER: usize = 4;
/// `len_crc16` trailer: CRC.
const TRAILER: usize = 2;
/// CRC-16/CCITT-FALSE, as used by `len_crc16`.
const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);

/// How a serial port's byte stream is split into frames (config key `framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// UTF-8 text lines.
    Lines,
    /// NMEA 0183 sentences, one per line, checksum verified.
    Nmea,
    /// One JSON object per line.
    Jsonl,
    /// COBS-encoded binary frames terminated by `0x00`.
    Cobs,
    /// Sync + length + payload + CRC-16 binary frames (see the module docs).
    LenCrc16,
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Lines => "lines",
            Framing::Nmea => "nmea",
            Framing::Jsonl => "jsonl",
            Framing::Cobs => "cobs",
            Framing::LenCrc16 => "len_crc16",
        })
    }
}

/// One good frame, shaped by its framing.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A `lines` line, without line ending.
    Text(String),
    /// A `jsonl` line; always a JSON object.
    Json(Value),
    /// A checksum-verified `nmea` sentence.
    Nmea(Sentence),
    /// A `cobs` or `len_crc16` payload.
    Bytes(Vec<u8>),
}

impl Decoded {
    /// The frame payload and the device's own timestamp (NMEA RMC), as `Frame` carries them.
    ///
    /// Text becomes `{"line": ..}`, bytes `{"raw_b64": ..}`, NMEA the fields of
    /// [`nmea::decode`] (or `{"sentence", "raw"}` for kinds it does not decode).
    pub fn into_payload(self) -> (Value, Option<i64>) {
        use base64::Engine as _;
        match self {
            Decoded::Text(line) => (serde_json::json!({ "line": line }), None),
            Decoded::Json(v) => (v, None),
            Decoded::Bytes(b) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(b);
                (serde_json::json!({ "raw_b64": b64 }), None)
            }
            Decoded::Nmea(s) => match nmea::decode(&s) {
                Some(map) => {
                    let ts = map.get("device_ts_ms").and_then(Value::as_i64);
                    (Value::Object(map), ts)
                }
                None => (
                    serde_json::json!({ "sentence": s.kind, "raw": s.raw }),
                    None,
                ),
            },
        }
    }
}

/// Input that could not be framed or decoded; the stream continues after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More than `max_frame` bytes without a frame end (or a `len_crc16` length above it).
    #[error("frame longer than {limit} bytes")]
    TooLong {
        /// The configured `max_frame`.
        limit: usize,
    },
    /// A text frame that is not UTF-8.
    #[error("frame is not valid UTF-8")]
    InvalidUtf8,
    /// A `jsonl` line that is not a JSON object.
    #[error("line is not a JSON object: {0}")]
    BadJson(String),
    /// An `nmea` line that is not a valid sentence.
    #[error(transparent)]
    Nmea(#[from] NmeaError),
    /// A `cobs` frame that does not decode.
    #[error("invalid COBS frame")]
    Cobs,
    /// A `len_crc16` frame whose CRC does not match.
    #[error("CRC mismatch: frame says {expected:#06x}, computed {computed:#06x}")]
    Crc {
        /// CRC carried by the frame.
        expected: u16,
        /// CRC computed over length and payload.
        computed: u16,
    },
    /// Bytes skipped before the start of a frame.
    #[error("{skipped} bytes of garbage before a frame start")]
    Garbage {
        /// How many bytes were skipped.
        skipped: usize,
    },
    /// The stream ended inside a `len_crc16` frame.
    #[error("stream ended inside a frame ({have} bytes buffered)")]
    Truncated {
        /// Bytes of the partial frame.
        have: usize,
    },
}

impl FrameError {
    /// Short stable label for the Prometheus `reason` label.
    ///
    /// One of `too_long`, `invalid_utf8`, `bad_json`, `bad_nmea`, `bad_checksum`, `cobs`,
    /// `crc`, `garbage`, `truncated`.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLong { .. } => "too_long",
            FrameError::InvalidUtf8 => "invalid_utf8",
            FrameError::BadJson(_) => "bad_json",
            FrameError::Nmea(e) => e.reason(),
            FrameError::Cobs => "cobs",
            FrameError::Crc { .. } => "crc",
            FrameError::Garbage { .. } => "garbage",
            FrameError::Truncated { .. } => "truncated",
        }
    }
}

/// What [`FrameDecoder`] yields: a good frame or counted bad input.
pub type FrameResult = Result<Decoded, FrameError>;

/// Decoder for every [`Framing`], with a `max_frame` byte limit.
#[derive(Debug)]
pub struct FrameDecoder {
    framing: Framing,
    max_frame: usize,
    /// Delimited framings: leading bytes of the buffer already searched for the delimiter.
    scanned: usize,
    /// Dropping input after a reported error: up to the next delimiter (delimited
    /// framings) or, for `len_crc16`, until the next good frame.
    discarding: bool,
    /// `len_crc16`: bytes skipped while hunting for a sync, not yet reported.
    skipped: usize,
    /// An item found together with the one just returned (NMEA sentence after garbage).
    pending: Option<FrameResult>,
}

impl FrameDecoder {
    /// A decoder for `framing` that never buffers much more than `max_frame` (at least 1).
    pub fn new(framing: Framing, max_frame: usize) -> Self {
        FrameDecoder {
            framing,
            max_frame: max_frame.max(1),
            scanned: 0,
            discarding: false,
            skipped: 0,
            pending: None,
        }
    }

    /// The framing this decoder splits.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Splits `buf` at `delim`, enforcing `max_frame` and skipping empty frames.
    fn decode_delimited(&mut self, buf: &mut BytesMut, delim: u8) -> Option<FrameResult> {
        loop {
            if self.discarding {
                let Some(i) = buf.iter().position(|&b| b == delim) else {
                    buf.clear();
                    return None;
                };
                buf.advance(i + 1);
                self.discarding = false;
                self.scanned = 0;
            }
            let window = buf.len().min(self.max_frame + 1);
            let start = self.scanned.min(window);
            let found = buf.get(start..window)?.iter().position(|&b| b == delim);
            match found {
                Some(off) => {
                    let frame = buf.split_to(start + off + 1);
                    self.scanned = 0;
                    if let Some(item) = self.finish(&frame[..start + off]) {
                        return Some(item);
                    }
                }
                None if buf.len() > self.max_frame => {
                    buf.advance(window);
                    self.discarding = true;
                    self.scanned = 0;
                    return Some(Err(FrameError::TooLong {
                        limit: self.max_frame,
                    }));
                }
                None => {
                    self.scanned = window;
                    return None;
                }
            }
        }
    }

    /// Decodes one delimited frame (delimiter removed); `None` for an empty one.
    fn finish(&mut self, frame: &[u8]) -> Option<FrameResult> {
        if self.framing == Framing::Cobs {
            if frame.is_empty() {
                return None;
            }
            let decoded = cobs::decode_vec(frame).map_err(|_| FrameError::Cobs);
            return Some(decoded.map(Decoded::Bytes));
        }
        let line = frame.strip_suffix(b"\r").unwrap_or(frame);
        let line = if self.framing == Framing::Lines {
            line
        } else {
            line.trim_ascii()
        };
        if line.is_empty() {
            return None;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Some(Err(FrameError::InvalidUtf8));
        };
        Some(match self.framing {
            Framing::Jsonl => match serde_json::from_str::<Value>(text) {
                Ok(v) if v.is_object() => Ok(Decoded::Json(v)),
                Ok(_) => Err(FrameError::BadJson("not an object".into())),
                Err(e) => Err(FrameError::BadJson(e.to_string())),
            },
            Framing::Nmea => {
                // `$` and `!` never occur inside a sentence: only the last one can start a
                // valid sentence, anything before it is garbage.
                let start = text.rfind(['$', '!']).unwrap_or(0);
                let parsed = text
                    .get(start..)
                    .ok_or(NmeaError::NoStart)
                    .and_then(nmea::parse_sentence);
                let item = parsed.map(Decoded::Nmea).map_err(FrameError::from);
                if start > 0 {
                    self.pending = Some(item);
                    Err(FrameError::Garbage { skipped: start })
                } else {
                    item
                }
            }
            _ => Ok(Decoded::Text(text.to_string())),
        })
    }

    /// Skips `n` bytes while hunting for a sync, counting them for [`Self::take_garbage`].
    fn skip(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n);
        self.skipped += n;
    }

    /// Reports skipped bytes as garbage, unless they followed an already reported error.
    fn take_garbage(&mut self) -> Option<FrameResult> {
        let skipped = std::mem::take(&mut self.skipped);
        (skipped > 0 && !self.discarding).then_some(Err(FrameError::Garbage { skipped }))
    }

    /// Rejects the frame at the head of `buf`: reports `err` unless already resyncing,
    /// then restarts the sync search one byte later.
    fn reject(&mut self, buf: &mut BytesMut, err: FrameError) -> Option<FrameResult> {
        buf.advance(1);
        let already = std::mem::replace(&mut self.discarding, true);
        (!already).then_some(Err(err))
    }

    /// Finds `[sync][len][payload][crc]` frames in `buf`.
    fn decode_len_crc16(&mut self, buf: &mut BytesMut) -> Option<FrameResult> {
        loop {
            match buf.windows(2).position(|w| w == SYNC) {
                Some(0) => {}
                Some(i) => self.skip(buf, i),
                None => {
                    // Keep a last 0xA5: it may be the first half of a sync.
                    let keep = usize::from(buf.last() == Some(&SYNC[0]));
                    self.skip(buf, buf.len() - keep);
                    if self.skipped < self.max_frame {
                        return None;
                    }
                    // Endless noise still shows up in the counters.
                    self.discarding = false;
                    return self.take_garbage();
                }
            }
            if let Some(garbage) = self.take_garbage() {
                return Some(garbage);
            }
            let (Some(&hi), Some(&lo)) = (buf.get(2), buf.get(3)) else {
                return None;
            };
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if len > self.max_frame {
                let err = FrameError::TooLong {
                    limit: self.max_frame,
                };
                match self.reject(buf, err) {
                    Some(item) => return Some(item),
                    None => continue,
                }
            }
            let total = HEADER + len + TRAILER;
            let Some(frame) = buf.get(..total) else {
                buf.reserve(total - buf.len());
                return None;
            };
            let (body, crc) = frame.split_at(HEADER + len);
            let expected = u16::from_be_bytes([crc[0], crc[1]]);
            let computed = CRC16.checksum(&body[2..]);
            if expected != computed {
                match self.reject(buf, FrameError::Crc { expected, computed }) {
                    Some(item) => return Some(item),
                    None => continue,
                }
            }
            let payload = body[HEADER..].to_vec();
            buf.advance(total);
            self.discarding = false;
            return Some(Ok(Decoded::Bytes(payload)));
        }
    }

    /// Forgets all per-stream state (after EOF).
    fn reset(&mut self) {
        self.scanned = 0;
        self.discarding = false;
        self.skipped = 0;
        self.pending = None;
    }
}

impl Decoder for FrameDecoder {
    type Item = FrameResult;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<FrameResult>> {
        if let Some(item) = self.pending.take() {
            return Ok(Some(item));
        }
        Ok(match self.framing {
            Framing::Lines | Framing::Nmea | Framing::Jsonl => self.decode_delimited(buf, b'\n'),
            Framing::Cobs => self.decode_delimited(buf, 0),
            Framing::LenCrc16 => self.decode_len_crc16(buf),
        })
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<FrameResult>> {
        loop {
            if let Some(item) = self.decode(buf)? {
                return Ok(Some(item));
            }
            if self.framing != Framing::LenCrc16 {
                // A final frame without its delimiter is decoded as if terminated.
                let last = (!self.discarding && !buf.is_empty()).then(|| buf.split());
                buf.clear();
                if let Some(item) = last.and_then(|frame| self.finish(&frame)) {
                    self.scanned = 0;
                    return Ok(Some(item));
                }
            } else if buf.starts_with(&SYNC) {
                let have = buf.len();
                match self.reject(buf, FrameError::Truncated { have }) {
                    Some(item) => return Ok(Some(item)),
                    None => continue,
                }
            } else if !buf.is_empty() {
                self.skip(buf, buf.len());
                continue;
            } else if let Some(garbage) = self.take_garbage() {
                return Ok(Some(garbage));
            }
            // `finish` may have left an NMEA sentence pending behind its garbage.
            if let Some(item) = self.pending.take() {
                return Ok(Some(item));
            }
            self.reset();
            return Ok(None);
        }
    }
}

/// Encodes `payload` as one `len_crc16` frame.
///
/// # Panics
/// If `payload` is longer than 65535 bytes (the length field is a u16).
pub fn encode_len_crc16(payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("len_crc16 payload over 65535 bytes");
    let mut out = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    out.extend_from_slice(&SYNC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    let crc = CRC16.checksum(&out[2..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Encodes `payload` as one COBS frame, including the terminating `0x00`.
pub fn encode_cobs(payload: &[u8]) -> Vec<u8> {
    let mut out = cobs::encode_vec(payload);
    out.push(0);
    out
}

#[cfg(test)]
mod tests;
