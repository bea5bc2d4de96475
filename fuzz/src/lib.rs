//! Shared pieces of the fuzz targets: a reader that splits the fuzzer's bytes into the
//! parameters of one run, and the serial framing harness the five framing targets share.
//!
//! Every target calls the product's own parser (see `fieldgate::fuzz_api` for the ones in
//! private modules) and then checks invariants that hold for any input; a broken invariant
//! is a panic, which libFuzzer reports as a crash with the input that caused it.

pub mod framing;

/// The fuzzer's bytes, consumed from the front as run parameters, the rest as input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps the fuzzer's bytes.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next byte (0 once the input is used up).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Bytes up to the next `0x00` (consumed, not returned), or all that is left.
    pub fn field(&mut self) -> &'a [u8] {
        match self.data.iter().position(|&b| b == 0) {
            Some(i) => {
                let head = &self.data[..i];
                self.data = &self.data[i + 1..];
                head
            }
            None => self.rest(),
        }
    }

    /// Everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// True once everything is consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Journal round trip: what `Frame::encode` wrote, `Frame::decode` reads back unchanged.
pub fn assert_frame_roundtrip(frame: &fieldgate::frame::Frame) {
    let bytes = frame.encode();
    let back = fieldgate::frame::Frame::decode(frame.seq, &bytes)
        .unwrap_or_else(|e| panic!("a frame we encoded does not decode: {e}: {frame:?}"));
    assert_eq!(&back, frame, "the journal changed the frame");
    // The Mongo document of any frame can be built (it must not panic).
    let _ = fieldgate::sink::mongo::encode::encode(frame);
}
