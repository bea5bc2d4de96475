//! Windows-1252 to UTF-8, for DBC files written by Vector's tools.
//!
//! Written out here rather than taken from `encoding_rs` (through can-dbc's `encodings`
//! feature): encoding_rs decodes through one dispatcher over every encoding it knows, so
//! asking it for Windows-1252 links all its CJK tables too, 128 KiB of the Pi binary
//! (docs/benchmarks.md, "Binary size"). The mapping is the WHATWG `index-windows-1252`:
//! ASCII and Latin-1 map to themselves, 0x80–0x9F to the table below (the five bytes it
//! leaves undefined map to the C1 control of the same value, as browsers and encoding_rs
//! do), so every byte string decodes. A unit test checks all 256 bytes against encoding_rs.

/// U+0080..U+009F as Windows-1252 assigns bytes 0x80..0x9F.
const HIGH: [char; 32] = [
    '\u{20AC}', '\u{0081}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{008D}', '\u{017D}', '\u{008F}',
    '\u{0090}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{009D}', '\u{017E}', '\u{0178}',
];

/// Decode Windows-1252 bytes (every byte string is valid).
pub fn decode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => HIGH[usize::from(b - 0x80)],
            _ => char::from(b),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn every_byte_decodes_as_encoding_rs_does() {
        let all: Vec<u8> = (0..=255).collect();
        let (want, _, had_errors) = encoding_rs::WINDOWS_1252.decode(&all);
        assert!(!had_errors);
        assert_eq!(decode(&all), want);
        assert_eq!(decode(b"\xb0C \x80 \x93q\x94"), "°C € \u{201C}q\u{201D}");
    }
}
