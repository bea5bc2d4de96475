//! Journal chunks: the decoder of what the journal reads back from sled (header, LZ4 body,
//! length-prefixed frame records).
//!
//! Input: selector byte. Even: the rest is a stored chunk, decoded as found on disk. Odd:
//! the rest is split into frame records that are chunked and decoded again (the writer's
//! path), which must give back exactly those records.
#![no_main]

use fieldgate::frame::Frame;
use fieldgate::fuzz_api::{chunk_header, decode_chunk, encode_chunk};
use fieldgate_fuzz::{assert_frame_roundtrip, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sel = input.byte();
    if sel & 1 == 0 {
        stored(input.rest());
    } else {
        written(&mut input);
    }
});

/// A chunk as found on disk: damage is an error, never a panic or a huge allocation; what
/// decodes re-chunks to the same frames.
fn stored(chunk: &[u8]) {
    let Ok(frames) = decode_chunk(100, chunk) else {
        return;
    };
    let header = chunk_header(chunk).expect("a decoded chunk has a header");
    assert_eq!(frames.len() as u64, u64::from(header.count));
    let good: Vec<Frame> = frames.into_iter().filter_map(Result::ok).collect();
    for f in &good {
        assert_frame_roundtrip(f);
    }
    let records: Vec<Vec<u8>> = good.iter().map(Frame::encode).collect();
    let again = encode_chunk(records.iter().map(Vec::as_slice), header.max_ts_ms);
    let back = decode_chunk(100, &again).expect("a chunk we encoded decodes");
    let back: Vec<Frame> = back
        .into_iter()
        .map(|f| f.expect("a frame we encoded decodes"))
        .collect();
    assert_eq!(back.len(), good.len());
    for (b, g) in back.iter().zip(&good) {
        // Seqs are positional in a chunk: the re-chunk numbers the good ones densely.
        assert_eq!(
            Frame {
                seq: g.seq,
                ..b.clone()
            },
            *g,
            "re-chunking changed a frame"
        );
    }
}

/// Records as the flusher writes them: chunk, then decode every one back.
fn written(input: &mut Input) {
    let max_ts = i64::from(input.u16());
    let mut records = Vec::new();
    while !input.is_empty() {
        let len = usize::from(input.byte());
        records.push(input.take(len).to_vec());
    }
    let chunk = encode_chunk(records.iter().map(Vec::as_slice), max_ts);
    let header = chunk_header(&chunk).expect("header");
    assert_eq!(header.count as usize, records.len());
    assert_eq!(header.max_ts_ms, max_ts);
    let decoded = decode_chunk(1, &chunk).expect("a chunk we encoded decodes");
    assert_eq!(decoded.len(), records.len());
    for (i, (d, r)) in decoded.into_iter().zip(&records).enumerate() {
        match (d, Frame::decode(1 + i as u64, r)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("record {i}: chunk gave {a:?}, the record alone {b:?}"),
        }
    }
}
