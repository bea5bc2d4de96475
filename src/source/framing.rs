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
    /// The frame payload and the device's own timestamp (NMEA RMC), per DESIGN §2.
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
mod tests {
    use super::*;
    use serde_json::json;
    use Framing::*;

    const GGA: &[u8] = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n";
    const RMC: &[u8] = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n";
    const VTG: &[u8] = b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48\r\n";
    const ALL: [Framing; 5] = [Lines, Nmea, Jsonl, Cobs, LenCrc16];

    /// Feeds `chunks` the way `FramedRead` does and checks the buffer stays bounded.
    fn run(framing: Framing, max: usize, chunks: &[&[u8]]) -> Vec<FrameResult> {
        let mut d = FrameDecoder::new(framing, max);
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(item) = d.decode(&mut buf).unwrap() {
                out.push(item);
            }
            assert!(
                buf.len() <= max + HEADER + TRAILER,
                "{framing}: {}",
                buf.len()
            );
        }
        while let Some(item) = d.decode_eof(&mut buf).unwrap() {
            out.push(item);
        }
        assert!(buf.is_empty() && d.pending.is_none());
        out
    }

    fn oks(items: &[FrameResult]) -> Vec<Decoded> {
        items.iter().filter_map(|i| i.clone().ok()).collect()
    }

    fn reasons(items: &[FrameResult]) -> Vec<&'static str> {
        let reason = |i: &FrameResult| i.as_ref().err().map(FrameError::reason);
        items.iter().filter_map(reason).collect()
    }

    fn text(s: &str) -> Decoded {
        Decoded::Text(s.to_string())
    }

    fn bytes(b: &[u8]) -> Decoded {
        Decoded::Bytes(b.to_vec())
    }

    fn payload(d: &Decoded) -> (Value, Option<i64>) {
        d.clone().into_payload()
    }

    #[test]
    fn framing_names_match_config() {
        let names = ["lines", "nmea", "jsonl", "cobs", "len_crc16"];
        for (f, name) in ALL.into_iter().zip(names) {
            assert_eq!(f.to_string(), name);
            assert_eq!(serde_json::to_value(f).unwrap(), name);
            assert_eq!(serde_json::from_value::<Framing>(name.into()).unwrap(), f);
        }
    }

    #[test]
    fn lines_strip_cr_skip_empty_and_keep_final_line() {
        let items = run(Lines, 64, &[b"a\r\nb\n\n\r\n  \nc"]);
        let expect = [text("a"), text("b"), text("  "), text("c")].map(Ok);
        assert_eq!(items, expect);
        assert_eq!(payload(&text("x")), (json!({"line": "x"}), None));
    }

    #[test]
    fn invalid_utf8_is_an_item_and_the_stream_continues() {
        let items = run(Lines, 64, &[b"ok\n\xff\xfe\nnext\n"]);
        let bad = Err(FrameError::InvalidUtf8);
        assert_eq!(items, [Ok(text("ok")), bad, Ok(text("next"))]);
    }

    #[test]
    fn too_long_is_reported_once_then_resyncs() {
        let long = [b'x'; 20];
        let items = run(
            Lines,
            8,
            &[b"short\n", &long, &long, b"\nafter\n12345678\n"],
        );
        assert_eq!(
            oks(&items),
            [text("short"), text("after"), text("12345678")]
        );
        assert_eq!(reasons(&items), ["too_long"]);
        // Endless garbage: one error, bounded memory (checked in `run`).
        let noise = [b'z'; 4096];
        assert_eq!(reasons(&run(Jsonl, 256, &[&noise[..]; 64])), ["too_long"]);
        // The line after an over-long one in the same buffer survives.
        assert_eq!(oks(&run(Lines, 4, &[b"0123456789\nok\n"])), [text("ok")]);
    }

    #[test]
    fn jsonl_requires_objects() {
        let items = run(
            Jsonl,
            64,
            &[b"{\"a\":1}\n[1]\nnot json\n \r\n{\"b\":2}\r\n"],
        );
        assert_eq!(reasons(&items), ["bad_json", "bad_json"]);
        let json: Vec<Value> = oks(&items).iter().map(|d| payload(d).0).collect();
        assert_eq!(json, [json!({"a": 1}), json!({"b": 2})]);
    }

    #[test]
    fn nmea_verifies_checksums_and_skips_garbage_prefixes() {
        let bad = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48\r\n";
        let no_crlf = &VTG[..VTG.len() - 2];
        let stream = [
            GGA,
            b"garbage\n",
            b"\x01\x02$GPR",
            RMC,
            bad,
            b"\xffxx\n",
            no_crlf,
        ]
        .concat();
        let items = run(Nmea, 82, &[&stream]);
        let kind = |d: Decoded| {
            if let Decoded::Nmea(s) = d {
                s.kind
            } else {
                String::new()
            }
        };
        assert_eq!(
            oks(&items).into_iter().map(kind).collect::<Vec<_>>(),
            ["GGA", "RMC", "VTG"]
        );
        let why = ["bad_nmea", "garbage", "bad_checksum", "invalid_utf8"];
        assert_eq!(reasons(&items), why);
        let (rmc, ts) = payload(&oks(&items)[1]);
        assert_eq!(
            (&rmc["speed_kmh"], ts),
            (&json!(41.485), Some(764_426_119_000))
        );
        let gsv = run(Nmea, 82, &[nmea::with_checksum("GPGSV,1,1,00").as_bytes()]);
        let (gsv, ts) = payload(&oks(&gsv)[0]);
        assert_eq!((gsv["sentence"].as_str(), ts), (Some("GSV"), None));
    }

    #[test]
    fn cobs_decodes_skips_empty_and_reports_corruption() {
        let big: Vec<u8> = (0..600u32).map(|i| (i % 7) as u8).collect();
        let stream = [
            &encode_cobs(b"\x01\x00\x02")[..],
            b"\x00\x00",
            b"\x05\x01\x00", // run claims 4 bytes, frame ends after 1
            &encode_cobs(&big),
            &encode_cobs(&[0xFF; 300]),
            &encode_cobs(b""),
            &encode_cobs(&[0; 40]), // 41 bytes encoded: too long for 32
            &encode_cobs(b"end")[..4],
        ]
        .concat();
        let items = run(Cobs, 1024, &[&stream]);
        let first = bytes(b"\x01\x00\x02");
        let (ff, zeros, end) = (bytes(&[0xFF; 300]), bytes(&[0; 40]), bytes(b"end"));
        let expect = [
            first.clone(),
            bytes(&big),
            ff,
            bytes(b""),
            zeros,
            end.clone(),
        ];
        assert_eq!(
            (oks(&items), reasons(&items)),
            (expect.to_vec(), vec!["cobs"])
        );
        let items = run(Cobs, 32, &[&stream]);
        assert_eq!(
            reasons(&items),
            ["cobs", "too_long", "too_long", "too_long"]
        );
        assert_eq!(oks(&items), [first, bytes(b""), end]);
        assert_eq!(payload(&bytes(b"\x00\xff")).0, json!({"raw_b64": "AP8="}));
    }

    #[test]
    fn len_crc16_format_and_crc() {
        assert_eq!(CRC16.checksum(b"123456789"), 0x29B1);
        let f = encode_len_crc16(b"hi");
        let crc = CRC16.checksum(&[0, 2, b'h', b'i']).to_be_bytes();
        assert_eq!(f, [0xA5, 0x5A, 0x00, 0x02, b'h', b'i', crc[0], crc[1]]);
    }

    #[test]
    fn len_crc16_resyncs_without_losing_good_frames() {
        let good = encode_len_crc16(b"payload");
        let mut corrupt = encode_len_crc16(b"corrupt");
        corrupt[6] ^= 0x40;
        let false_sync = [0xA5, 0x5A, 0x00, 0x20]; // its length swallows the next frame
        let over_max = [0xA5, 0x5A, 0xFF, 0xFF];
        let after = encode_len_crc16(b"after false sync");
        let stream = [
            &good[..],
            b"noise\xA5",
            &good,
            &corrupt,
            &good,
            &false_sync,
            &after,
            &over_max,
            &encode_len_crc16(b""),
            &false_sync, // truncated at EOF, yet the frame inside it comes out
            &good,
        ]
        .concat();
        let items = run(LenCrc16, 64, &[&stream]);
        let p = bytes(b"payload");
        let expect = [&p, &p, &p, &bytes(b"after false sync"), &bytes(b""), &p].map(Clone::clone);
        assert_eq!(oks(&items), expect);
        assert_eq!(
            reasons(&items),
            ["garbage", "crc", "crc", "too_long", "truncated"]
        );
        // Endless noise without a sync is still counted, once per `max_frame` bytes.
        let noise = run(LenCrc16, 100, &[&[0x11u8; 50][..]; 20]);
        assert_eq!(reasons(&noise), ["garbage"; 10]);
    }

    fn sample(framing: Framing) -> Vec<u8> {
        let f = encode_len_crc16(b"xyz");
        match framing {
            Lines => b"one\r\n\xc3\x28\ntwo\n\nthree-is-long\nfour".to_vec(),
            Jsonl => b"{\"a\":1}\nnope\n{\"b\":[1,2]}\r\n{\"c\":true}".to_vec(),
            Nmea => [GGA, b"junk\n", b"$GPG", RMC, VTG].concat(),
            Cobs => [&encode_cobs(b"ab")[..], b"\x03\x01\x00", &encode_cobs(b"")].concat(),
            LenCrc16 => [&f[..], b"\x00\xA5", &f[..5], &f, &[0xA5, 0x5A, 0, 9], &f].concat(),
        }
    }

    #[test]
    fn frames_split_at_every_byte_boundary_decode_the_same() {
        for framing in ALL {
            let stream = sample(framing);
            let whole = run(framing, 82, &[&stream]);
            assert!(!oks(&whole).is_empty() && !reasons(&whole).is_empty());
            for i in 0..=stream.len() {
                let split = run(framing, 82, &[&stream[..i], &stream[i..]]);
                assert_eq!(split, whole, "{framing} split at {i}");
            }
            let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(run(framing, 82, &bytewise), whole, "{framing} byte by byte");
        }
    }

    #[test]
    fn fuzz_random_bytes_never_panic_and_stay_bounded() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = [0x00, b'\n', b'\r', b'$', b'*', b',', 0xA5, 0x5A, b'{', b'}'];
        let vtg = nmea::parse_sentence(std::str::from_utf8(VTG).unwrap()).unwrap();
        for iter in 0..2000 {
            let framing = ALL[iter % ALL.len()];
            let len = (next() % 400) as usize;
            let mut stream: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => alphabet[(next() % alphabet.len() as u64) as usize],
                    _ => next() as u8,
                })
                .collect();
            // A good frame after the garbage must always come out.
            let (tail, want) = match framing {
                Lines => (b"\ngood".to_vec(), text("good")),
                Jsonl => (b"\n{}".to_vec(), Decoded::Json(json!({}))),
                Nmea => ([b"\n", VTG].concat(), Decoded::Nmea(vtg.clone())),
                Cobs => ([&[0][..], &encode_cobs(b"good")].concat(), bytes(b"good")),
                LenCrc16 => (encode_len_crc16(b"good"), bytes(b"good")),
            };
            stream.extend_from_slice(&tail);
            let mut chunks = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let (a, b) = rest.split_at(((next() % 97) as usize + 1).min(rest.len()));
                chunks.push(a);
                rest = b;
            }
            let items = run(framing, 64, &chunks);
            assert!(items.len() <= stream.len() + 2, "{framing} #{iter}");
            assert_eq!(oks(&items).last(), Some(&want), "{framing} #{iter}");
        }
    }
}
