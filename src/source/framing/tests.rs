//! Unit tests of the framing decoders on byte slices (split anywhere, fuzzed).

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
