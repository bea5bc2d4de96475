//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; never in the product
//! build).
//!
//! Most parsers that see outside bytes are public already: `source::framing`,
//! `source::nmea`, `source::elm327`, `source::mqtt::topic`,
//! `relay::ws::parse_client_message`, `api::parse_body`, `config::Config::parse` and
//! `frame::Frame::decode`. This module re-exports, unchanged, the ones that live in private
//! modules, so the fuzzers run exactly the product's code.

pub use crate::api::registry::{Device, Record, Vehicle};
pub use crate::journal::chunk::{
    decode as decode_chunk, encode as encode_chunk, header as chunk_header, ChunkError,
    ChunkHeader, CHUNK_MAX_FRAMES,
};
