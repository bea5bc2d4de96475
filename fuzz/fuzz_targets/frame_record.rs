//! Journal frame records: `Frame::decode` of one stored record (postcard + JSON payload).
//!
//! Input: the record's bytes. A record that decodes re-encodes to one that decodes to the
//! same frame.
#![no_main]

use fieldgate::frame::Frame;
use fieldgate_fuzz::assert_frame_roundtrip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(7, data) {
        assert_eq!(frame.seq, 7);
        assert_frame_roundtrip(&frame);
    }
});
