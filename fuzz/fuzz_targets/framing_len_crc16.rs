//! Serial framing `len_crc16`: the stream decoder (see `fieldgate_fuzz::framing`).
#![no_main]

use fieldgate::source::framing::Framing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fieldgate_fuzz::framing::run(Framing::LenCrc16, data));
