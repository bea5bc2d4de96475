//! The serial framing harness: drives `FrameDecoder` the way `FramedRead` does, over the
//! fuzzer's bytes split into reads of fuzzer-chosen sizes.
//!
//! Parameters (first bytes): `max_frame` (2 bytes), read-size seed (1 byte), mode (1 byte).
//! Mode bit 0 = raw: the rest is the byte stream. Mode bit 0 = 1 builds a *valid* stream
//! from the rest (COBS / len_crc16 frames of fuzzer payloads, NMEA sentences with correct
//! checksums) so the fuzzer reaches the decoders behind the checksums.
//!
//! Invariants, for every input:
//! - the decoder never holds more than `max_frame` + the `len_crc16` header and trailer
//!   between reads, and nothing after EOF;
//! - no frame is longer than `max_frame`;
//! - the frames (and, for the delimited framings, the errors) do not depend on how the
//!   stream was split into reads;
//! - valid streams decode to exactly what was encoded;
//! - NMEA sentences re-parse to themselves, positions are in range, and every frame's
//!   payload is a JSON object.

use crate::Input;
use fieldgate::source::framing::{
    encode_cobs, encode_len_crc16, Decoded, FrameDecoder, FrameError, FrameResult, Framing,
};
use fieldgate::source::nmea;
use serde_json::Value;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

/// `len_crc16` sync + length + CRC: the most a decoder may hold beyond `max_frame`.
const LEN_CRC16_OVERHEAD: usize = 6;

/// One fuzz run of `framing` over `data`.
pub fn run(framing: Framing, data: &[u8]) {
    let mut input = Input::new(data);
    let max_frame = match input.u16() {
        // Above the `len_crc16` length field's range: no length is too long.
        u16::MAX => 70_000,
        n => 1 + usize::from(n) % 2048,
    };
    let seed = input.byte();
    let mode = input.byte();
    let rest = input.rest();
    if mode & 1 == 0 {
        check(framing, max_frame, seed, rest);
        return;
    }
    match framing {
        Framing::Cobs | Framing::LenCrc16 => roundtrip(framing, max_frame, seed, rest),
        Framing::Nmea => {
            check(framing, max_frame, seed, &with_checksums(rest));
        }
        _ => {
            check(framing, max_frame, seed, rest);
        }
    }
}

/// Decodes `stream` whole and in reads of sizes drawn from `seed`; checks the invariants.
fn check(framing: Framing, max_frame: usize, seed: u8, stream: &[u8]) -> Vec<FrameResult> {
    let whole = decode(framing, max_frame, &[stream]);
    let split = decode(framing, max_frame, &reads(stream, seed));
    assert_eq!(oks(&whole), oks(&split), "frames depend on read boundaries");
    if framing != Framing::LenCrc16 {
        // `len_crc16` reports skipped noise when `max_frame` of it piles up, so how garbage
        // is counted depends on the reads; the delimited framings' errors do not.
        assert_eq!(whole, split, "errors depend on read boundaries");
    }
    for item in &whole {
        match item {
            Ok(d) => check_frame(framing, max_frame, d),
            Err(FrameError::TooLong { limit }) => assert_eq!(*limit, max_frame),
            Err(FrameError::Garbage { skipped }) => assert!(*skipped > 0),
            Err(_) => {}
        }
    }
    whole
}

/// Feeds `reads` like `FramedRead`: decode until `None` after each read, `decode_eof` at
/// the end; checks the buffer bound throughout.
fn decode(framing: Framing, max_frame: usize, reads: &[&[u8]]) -> Vec<FrameResult> {
    let mut d = FrameDecoder::new(framing, max_frame);
    let (mut buf, mut out) = (BytesMut::new(), Vec::new());
    for read in reads {
        buf.extend_from_slice(read);
        while let Some(item) = d.decode(&mut buf).expect("decode is infallible") {
            out.push(item);
        }
        assert!(
            buf.len() <= max_frame + LEN_CRC16_OVERHEAD,
            "{framing} holds {} bytes with max_frame {max_frame}",
            buf.len()
        );
    }
    while let Some(item) = d.decode_eof(&mut buf).expect("decode_eof is infallible") {
        out.push(item);
    }
    assert!(
        buf.is_empty(),
        "{framing} left {} bytes after EOF",
        buf.len()
    );
    out
}

/// Splits `stream` into reads of 1..=64 bytes chosen by `seed` (0: byte by byte).
fn reads(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = if seed == 0 {
            1
        } else {
            // xorshift32: cheap, deterministic read sizes.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            1 + (state % 64) as usize
        };
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

fn oks(items: &[FrameResult]) -> Vec<&Decoded> {
    items.iter().filter_map(|i| i.as_ref().ok()).collect()
}

/// Per-frame invariants.
fn check_frame(framing: Framing, max_frame: usize, d: &Decoded) {
    match (framing, d) {
        (Framing::Lines, Decoded::Text(t)) => {
            assert!(t.len() <= max_frame, "line of {} > {max_frame}", t.len());
            assert!(!t.contains('\n') && !t.is_empty());
        }
        (Framing::Jsonl, Decoded::Json(v)) => assert!(v.is_object()),
        (Framing::Nmea, Decoded::Nmea(s)) => {
            assert!(
                s.raw.len() <= max_frame,
                "sentence of {} > {max_frame}",
                s.raw.len()
            );
            let again = nmea::parse_sentence(&s.raw).expect("a decoded sentence re-parses");
            assert_eq!(&again, s);
            if let Some(fields) = nmea::decode(s) {
                check_position(&fields);
            }
        }
        (Framing::Cobs | Framing::LenCrc16, Decoded::Bytes(b)) => {
            assert!(b.len() <= max_frame, "frame of {} > {max_frame}", b.len());
        }
        (f, d) => panic!("{f} produced {d:?}"),
    }
    let (payload, device_ts) = d.clone().into_payload();
    assert!(payload.is_object(), "payload {payload}");
    if let Some(ts) = device_ts {
        assert_eq!(
            payload.get("device_ts_ms").and_then(Value::as_i64),
            Some(ts)
        );
    }
}

/// Decoded NMEA positions are real coordinates.
fn check_position(fields: &serde_json::Map<String, Value>) {
    let get = |k: &str| fields.get(k).and_then(Value::as_f64);
    if let Some(lat) = get("lat") {
        assert!((-90.0..=90.0).contains(&lat), "lat {lat}");
    }
    if let Some(lon) = get("lon") {
        assert!((-180.0..=180.0).contains(&lon), "lon {lon}");
    }
    assert_eq!(fields.contains_key("lat"), fields.contains_key("lon"));
    for (k, v) in fields {
        if let Some(x) = v.as_f64() {
            assert!(x.is_finite(), "{k} = {x}");
        }
    }
}

/// Every line of `body` as a sentence with a correct checksum (`$`, `!`, `*` and line
/// ends are dropped from the body so each line stays one sentence).
fn with_checksums(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        let text: String = String::from_utf8_lossy(line)
            .chars()
            .filter(|c| !matches!(c, '$' | '!' | '*' | '\r' | '\n'))
            .collect();
        out.extend_from_slice(nmea::with_checksum(&text).as_bytes());
    }
    out
}

/// A valid stream of frames of fuzzer payloads decodes to exactly those payloads.
fn roundtrip(framing: Framing, max_frame: usize, seed: u8, rest: &[u8]) {
    let mut input = Input::new(rest);
    let (mut stream, mut expected) = (Vec::new(), Vec::new());
    while !input.is_empty() {
        let len = usize::from(input.u16()) % 1024;
        let payload = input.take(len);
        match framing {
            Framing::Cobs => {
                let frame = encode_cobs(payload);
                // `max_frame` bounds the encoded bytes before the delimiter.
                expected.push(if frame.len() - 1 > max_frame {
                    Err(FrameError::TooLong { limit: max_frame })
                } else {
                    Ok(Decoded::Bytes(payload.to_vec()))
                });
                stream.extend_from_slice(&frame);
            }
            _ => {
                // A payload over `max_frame` is rejected and the decoder resyncs inside it,
                // where the fuzzer could hide frames: keep the valid stream valid.
                let payload = &payload[..payload.len().min(max_frame)];
                expected.push(Ok(Decoded::Bytes(payload.to_vec())));
                stream.extend_from_slice(&encode_len_crc16(payload));
            }
        }
    }
    let got = check(framing, max_frame, seed, &stream);
    assert_eq!(
        got, expected,
        "a valid {framing} stream decoded differently"
    );
}
