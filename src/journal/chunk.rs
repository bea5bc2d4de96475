//! Chunks: the unit the journal stores in sled.
//!
//! One group commit writes its frames as chunks of up to [`CHUNK_MAX_FRAMES`] consecutive
//! seqs under the key of the first seq. A chunk is `[version][count u32][max ts_ms i64]`
//! followed by an LZ4 block of length-prefixed frame records (see `Frame::encode`).
//! Storing chunks instead of one sled entry per frame is what makes the journal fast and
//! light on flash: sled rewrites whole B-tree leaves, and per-frame entries cost ~6x the
//! frame in disk writes and ~5x the CPU (README has the measurements). The header lets
//! eviction and retention work without decompressing.

/// Most frames per chunk.
pub const CHUNK_MAX_FRAMES: usize = 256;
/// Most uncompressed bytes per chunk (a single larger frame gets a chunk of its own).
pub const CHUNK_MAX_RAW: usize = 128 * 1024;
/// Refuse to decompress chunks claiming more than this (corruption guard).
const CHUNK_RAW_LIMIT: usize = 64 << 20;
/// LZ4 block output per input byte, at most (a match-length byte adds at most 255).
const LZ4_MAX_RATIO: usize = 255;
const CHUNK_V1: u8 = 1;
const HEADER_LEN: usize = 13;

/// What the header of a stored chunk says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Frames in the chunk (seqs `key..key+count`).
    pub count: u32,
    /// Newest gateway receive time in the chunk.
    pub max_ts_ms: i64,
}

/// Parse a chunk header; `None` if the record is not a chunk this build understands.
pub fn header(value: &[u8]) -> Option<ChunkHeader> {
    let h = value.get(..HEADER_LEN)?;
    if h[0] != CHUNK_V1 {
        return None;
    }
    let count = u32::from_le_bytes(h[1..5].try_into().ok()?);
    let max_ts_ms = i64::from_le_bytes(h[5..13].try_into().ok()?);
    Some(ChunkHeader { count, max_ts_ms })
}

/// Build one chunk from encoded frame records and their newest timestamp.
pub fn encode<'a>(records: impl Iterator<Item = &'a [u8]>, max_ts_ms: i64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(CHUNK_MAX_RAW);
    let mut count = 0u32;
    for r in records {
        raw.extend_from_slice(&(r.len() as u32).to_le_bytes());
        raw.extend_from_slice(r);
        count += 1;
    }
    let packed = lz4_flex::block::compress_prepend_size(&raw);
    let mut out = Vec::with_capacity(HEADER_LEN + packed.len());
    out.push(CHUNK_V1);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&max_ts_ms.to_le_bytes());
    out.extend_from_slice(&packed);
    out
}

/// Why a stored chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Header missing or of an unknown version.
    #[error("bad chunk header")]
    Header,
    /// The compressed block is damaged.
    #[error("bad chunk body: {0}")]
    Body(String),
}

/// Decompress a stored chunk: its header and the raw block of length-prefixed records
/// (split it with [`records`]).
pub fn unpack(value: &[u8]) -> Result<(ChunkHeader, Vec<u8>), ChunkError> {
    let h = header(value).ok_or(ChunkError::Header)?;
    let body = &value[HEADER_LEN..];
    let claimed = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(ChunkError::Header)? as usize;
    // LZ4 allocates the claimed size up front: refuse what the block cannot expand to.
    let packed = body.len() - 4;
    if claimed > CHUNK_RAW_LIMIT || claimed > packed.saturating_mul(LZ4_MAX_RATIO) {
        return Err(ChunkError::Body(format!(
            "claims {claimed} bytes from {packed} compressed"
        )));
    }
    let raw = lz4_flex::block::decompress_size_prepended(body)
        .map_err(|e| ChunkError::Body(e.to_string()))?;
    Ok((h, raw))
}

/// The `count` records of an unpacked chunk, in order; a truncated block is an error
/// after the records before the damage.
pub fn records(raw: &[u8], count: u32) -> impl Iterator<Item = Result<&[u8], ChunkError>> {
    let mut rest = Some(raw);
    (0..count).map_while(move |i| {
        let r = rest.take()?;
        let split = r
            .split_first_chunk::<4>()
            .and_then(|(len, tail)| tail.split_at_checked(u32::from_le_bytes(*len) as usize));
        match split {
            Some((record, tail)) => {
                rest = Some(tail);
                Some(Ok(record))
            }
            None => Some(Err(ChunkError::Body(format!("truncated at frame {i}")))),
        }
    })
}

/// Decode every frame of the chunk stored under `first_seq` (the fuzz targets' entry;
/// readers use [`unpack`] and [`records`]). Damaged frame records are reported
/// individually; a damaged chunk is one error.
#[cfg(any(test, feature = "fuzzing"))]
pub fn decode(
    first_seq: u64,
    value: &[u8],
) -> Result<Vec<Result<crate::frame::Frame, crate::frame::DecodeError>>, ChunkError> {
    let (h, raw) = unpack(value)?;
    // Every record has a 4-byte length: a damaged count cannot make us reserve more.
    let mut out = Vec::with_capacity((h.count as usize).min(raw.len() / 4));
    for (i, record) in (0..).zip(records(&raw, h.count)) {
        out.push(crate::frame::Frame::decode(first_seq + i, record?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use serde_json::json;

    #[test]
    fn roundtrip_and_header() {
        let frames: Vec<Frame> = (0..10)
            .map(|n| {
                let mut f = Frame::new("gw", "t", "d", "json", json!({"n": n}));
                f.ts_ms = 1000 + n;
                f
            })
            .collect();
        let recs: Vec<Vec<u8>> = frames.iter().map(Frame::encode).collect();
        let chunk = encode(recs.iter().map(Vec::as_slice), 1009);
        assert_eq!(
            header(&chunk),
            Some(ChunkHeader {
                count: 10,
                max_ts_ms: 1009
            })
        );
        let back = decode(100, &chunk).expect("chunk");
        assert_eq!(back.len(), 10);
        for (i, f) in back.into_iter().enumerate() {
            let f = f.expect("frame");
            assert_eq!(f.seq, 100 + i as u64);
            assert_eq!(f.payload["n"], i);
        }
    }

    /// Found by the `journal_chunk` fuzz target: a damaged header's frame count was used as
    /// the capacity of the result (4 billion frames: a ~800 GB allocation, an abort).
    #[test]
    fn a_damaged_count_allocates_nothing_up_front() {
        let rec = Frame::new("gw", "t", "d", "json", json!({"n": 1})).encode();
        let mut chunk = encode(std::iter::once(rec.as_slice()), 1);
        chunk[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        match decode(1, &chunk) {
            Err(ChunkError::Body(m)) => assert!(m.contains("truncated at frame 1"), "{m}"),
            other => panic!("expected a truncated body, got {other:?}"),
        }
    }

    /// Found by the `journal_chunk` fuzz target (input below): a chunk claiming 40 MB of
    /// records in a 4-byte body made LZ4 allocate the 40 MB before finding out.
    #[test]
    fn a_size_the_body_cannot_hold_is_refused_before_decompressing() {
        let fuzzed = b"\x01\x61\x22\x7b\x22\x00\x00\x64\x02\x64\x64\x64\x62\x61\x64\x64\x02";
        let rec = Frame::new("gw", "t", "d", "json", json!({"n": 1})).encode();
        let mut big = encode(std::iter::once(rec.as_slice()), 1);
        let body = big.len() - HEADER_LEN - 4;
        let most = u32::try_from(body * LZ4_MAX_RATIO).expect("small");
        big[13..17].copy_from_slice(&(most + 1).to_le_bytes());
        for chunk in [&fuzzed[..], &big] {
            match decode(1, chunk) {
                Err(ChunkError::Body(m)) => assert!(m.starts_with("claims"), "{m}"),
                other => panic!("expected a refused size, got {other:?}"),
            }
        }
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let rec = Frame::new("gw", "t", "d", "json", json!({"n": 1})).encode();
        let chunk = encode(std::iter::once(rec.as_slice()), 1);
        assert!(decode(1, &chunk[..5]).is_err());
        assert!(decode(1, b"").is_err());
        let mut huge = chunk.clone();
        huge[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(1, &huge).is_err());
        for cut in 13..chunk.len() {
            let _ = decode(1, &chunk[..cut]);
        }
        let mut flipped = chunk.clone();
        for i in 13..flipped.len() {
            flipped[i] ^= 0x5A;
            let _ = decode(1, &flipped);
            flipped[i] ^= 0x5A;
        }
    }
}
