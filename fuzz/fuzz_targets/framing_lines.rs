//! Serial framing `lines`: the stream decoder (see `fieldgate_fuzz::framing`).
#![no_main]

use fieldgate::source::framing::Framing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fieldgate_fuzz::framing::run(Framing::Lines, data));
