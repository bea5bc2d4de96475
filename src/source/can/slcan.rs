//! The SLCAN (Lawicel) wire: ASCII lines between a host and a CAN adapter.
//!
//! CANable, USBtin, CANtact, WiCAN and many more speak it, over USB-serial or TCP. The
//! adapter sends frames as `tIIILDD..` (11-bit), `TIIIIIIIILDD..` (29-bit), `r`/`R` for
//! remote frames and `d`/`D`/`b`/`B` for CAN FD, each optionally followed by a 4-digit
//! millisecond timestamp and ended by `\r`; commands are answered with `\r` (ok) or BEL
//! (error), `F` with status flags, `V`/`N` with version and serial.
//!
//! [`SlcanCodec`] is a `tokio_util::codec::Decoder` over that stream. Lines are bounded by
//! `max_line`; anything that is not a well-formed line is an item (`Err(BadLine)`), never a
//! stream error, so the source counts it (`bad_slcan`) and reads on. After garbage without
//! a line end (noise at plug-in, a half line after reconnecting) the frame that follows it
//! on the same line is still recovered. [`encode`] writes the lines the host sends.

use super::CanFrame;
use tokio_util::bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// Longest well-formed line: `D` + 8 id digits + 1 length digit + 128 data digits + 4
/// timestamp digits.
pub const MAX_LINE: usize = 142;
/// Bytes of a bad line kept for the log.
const DETAIL_MAX: usize = 48;
/// CAN FD data lengths by DLC code.
const FD_LEN: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];

/// One good line from the adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A received frame, with the adapter's timestamp (ms, wraps at 60000) if it sends one.
    Frame(CanFrame, Option<u16>),
    /// Status flags (`Fxx`): bit 0/1 receive/transmit queue full, 2 error warning,
    /// 3 data overrun, 5 error passive, 6 arbitration lost, 7 bus error.
    Status(u8),
    /// `\r` (command accepted) or `z`/`Z` (frame transmitted).
    Ack,
    /// BEL: a command was refused.
    Nack,
    /// A version, serial number or other informational reply.
    Info,
    /// A host command seen on the wire (`C`, `O`, `L`, `S6`, ...): a peer in host mode.
    Command,
}

/// A line that is not SLCAN; the stream continues after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}: {text:?}")]
pub struct BadLine {
    /// What is wrong with it.
    pub why: &'static str,
    /// The start of the line, lossily decoded, for the log.
    pub text: String,
}

impl BadLine {
    fn new(why: &'static str, line: &[u8]) -> BadLine {
        BadLine {
            why,
            text: String::from_utf8_lossy(&line[..line.len().min(DETAIL_MAX)]).into_owned(),
        }
    }

    /// Counter label.
    pub fn reason(&self) -> &'static str {
        "bad_slcan"
    }
}

/// What [`SlcanCodec`] yields.
pub type Item = Result<Line, BadLine>;

/// Splits an SLCAN byte stream into [`Line`]s.
#[derive(Debug)]
pub struct SlcanCodec {
    max_line: usize,
    /// Dropping an over-long line up to its end.
    discarding: bool,
    /// A frame recovered behind garbage on the same line, returned after the garbage.
    pending: Option<Item>,
}

impl SlcanCodec {
    /// A codec that never buffers more than `max_line` bytes of one line (at least 8).
    pub fn new(max_line: usize) -> SlcanCodec {
        SlcanCodec {
            max_line: max_line.max(8),
            discarding: false,
            pending: None,
        }
    }
}

impl Default for SlcanCodec {
    fn default() -> Self {
        SlcanCodec::new(MAX_LINE)
    }
}

fn is_end(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | 0x07)
}

impl Decoder for SlcanCodec {
    type Item = Item;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, std::io::Error> {
        if let Some(item) = self.pending.take() {
            return Ok(Some(item));
        }
        loop {
            if self.discarding {
                let Some(end) = buf.iter().position(|&b| is_end(b)) else {
                    buf.clear();
                    return Ok(None);
                };
                buf.advance(end + 1);
                self.discarding = false;
            }
            let window = buf.len().min(self.max_line + 1);
            let Some(end) = buf[..window].iter().position(|&b| is_end(b)) else {
                if buf.len() > self.max_line {
                    buf.advance(window);
                    self.discarding = true;
                    return Ok(Some(Err(BadLine::new("line too long", b""))));
                }
                return Ok(None);
            };
            let line = buf.split_to(end);
            let terminator = buf[0];
            buf.advance(1);
            if line.is_empty() {
                // `\r\n` line ends leave an empty line after the `\r`: not an answer.
                match terminator {
                    0x07 => return Ok(Some(Ok(Line::Nack))),
                    b'\r' => return Ok(Some(Ok(Line::Ack))),
                    _ => continue,
                }
            }
            return Ok(Some(self.classify(&line)));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, std::io::Error> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        if buf.is_empty() || std::mem::take(&mut self.discarding) {
            buf.clear();
            return Ok(None);
        }
        let rest = buf.split();
        Ok(Some(Err(BadLine::new(
            "truncated line at end of stream",
            &rest,
        ))))
    }
}

impl SlcanCodec {
    /// A whole line (without its end): what it is, recovering a frame behind garbage.
    fn classify(&mut self, line: &[u8]) -> Item {
        match parse(line) {
            Ok(l) => Ok(l),
            Err(why) => {
                // Noise before a frame on the same line: find the first frame start from
                // which the rest of the line parses.
                let found = (1..line.len()).find_map(|i| match line[i] {
                    b't' | b'T' | b'r' | b'R' => parse(&line[i..])
                        .ok()
                        .filter(|l| matches!(l, Line::Frame(..))),
                    _ => None,
                });
                if let Some(frame) = found {
                    self.pending = Some(Ok(frame));
                    return Err(BadLine::new("garbage before a frame", line));
                }
                Err(BadLine::new(why, line))
            }
        }
    }
}

/// Hex digits to a number (at most 8 digits).
fn hex(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |acc, &d| Some((acc << 4) | (d as char).to_digit(16)?))
}

/// Parses one line (without its end).
fn parse(line: &[u8]) -> Result<Line, &'static str> {
    let (&first, rest) = line.split_first().ok_or("empty line")?;
    let (id_digits, ext, remote, fd) = match first {
        b't' => (3, false, false, false),
        b'T' | b'x' => (8, true, false, false),
        b'r' => (3, false, true, false),
        b'R' => (8, true, true, false),
        b'd' | b'b' => (3, false, false, true),
        b'D' | b'B' => (8, true, false, true),
        b'F' => {
            return rest
                .get(..2)
                .filter(|_| rest.len() == 2)
                .and_then(hex)
                .map(|f| Line::Status(f as u8))
                .ok_or("bad status reply")
        }
        b'z' | b'Z' if rest.is_empty() => return Ok(Line::Ack),
        b'V' | b'v' | b'N' if rest.iter().all(u8::is_ascii_alphanumeric) => return Ok(Line::Info),
        b'C' | b'O' | b'L' if rest.is_empty() => return Ok(Line::Command),
        b'S' | b's' | b'Z' | b'M' | b'm' | b'Y' if rest.iter().all(u8::is_ascii_hexdigit) => {
            return Ok(Line::Command)
        }
        _ => return Err("not an SLCAN line"),
    };
    let id = rest
        .get(..id_digits)
        .and_then(hex)
        .ok_or("bad identifier")?;
    let code = rest
        .get(id_digits)
        .and_then(|&d| (d as char).to_digit(16))
        .ok_or("bad length digit")? as usize;
    let len = if fd {
        FD_LEN[code]
    } else if code <= 8 {
        code
    } else {
        return Err("length above 8");
    };
    let after = &rest[id_digits + 1..];
    let (data_hex, tail) = if remote {
        (&after[..0], after)
    } else {
        after.split_at(after.len().min(2 * len))
    };
    if data_hex.len() != if remote { 0 } else { 2 * len } {
        return Err("truncated frame");
    }
    let ts = match tail.len() {
        0 => None,
        4 => Some(hex(tail).filter(|t| *t < 60_000).ok_or("bad timestamp")? as u16),
        _ => return Err("trailing characters"),
    };
    let mut data = [0u8; super::MAX_DATA];
    let filled = if remote { 0 } else { len };
    hex::decode_to_slice(data_hex, &mut data[..filled]).map_err(|_| "bad data digits")?;
    let frame = if remote {
        CanFrame::remote(id, ext, len as u8)
    } else {
        CanFrame::new(id, ext, &data[..len])
    };
    frame
        .map(|f| Line::Frame(f, ts))
        .ok_or("identifier out of range")
}

/// The line that transmits `frame` (`t`/`T`/`r`/`R`, or `d`/`D` for CAN FD).
pub fn encode(frame: &CanFrame) -> Vec<u8> {
    let letter = match (frame.rtr, frame.fd, frame.ext) {
        (true, _, false) => 'r',
        (true, _, true) => 'R',
        (false, true, false) => 'd',
        (false, true, true) => 'D',
        (false, false, false) => 't',
        (false, false, true) => 'T',
    };
    let code = if frame.fd {
        FD_LEN
            .iter()
            .position(|&l| l >= frame.data().len())
            .unwrap_or(15)
    } else {
        usize::from(frame.dlc())
    };
    let id = if frame.ext {
        format!("{:08X}", frame.id)
    } else {
        format!("{:03X}", frame.id)
    };
    let mut data = hex::encode_upper(frame.data());
    if frame.fd {
        data.extend(std::iter::repeat_n('0', 2 * FD_LEN[code] - data.len()));
    }
    format!("{letter}{id}{code:X}{data}\r").into_bytes()
}

/// The lines that (re)open an adapter: close, set the bit rate, open listen-only (`L`) or
/// normal (`O`).
pub fn open_commands(bitrate_command: &str, writable: bool) -> Vec<u8> {
    let mode = if writable { "O" } else { "L" };
    format!("C\r{bitrate_command}\r{mode}\r").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], max: usize) -> Vec<Item> {
        let mut c = SlcanCodec::new(max);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(item) = c.decode_eof(&mut buf).expect("decode") {
            out.push(item);
        }
        out
    }

    fn frame(id: u32, ext: bool, data: &[u8]) -> Item {
        Ok(Line::Frame(
            CanFrame::new(id, ext, data).expect("frame"),
            None,
        ))
    }

    #[test]
    fn frames_of_every_kind() {
        let out = all(b"t1232AABB\rT18FEF1008" as &[u8], MAX_LINE);
        assert_eq!(out[0], frame(0x123, false, &[0xAA, 0xBB]));
        assert!(
            out[1].is_err(),
            "a partial line at EOF is truncated: {:?}",
            out[1]
        );
        let out = all(b"t1230\rT18FEF10080102030405060708\rr7FF4\rR000000011\rt0011FF1234\rd1239000102030405060708090A0B\r", MAX_LINE);
        assert_eq!(out[0], frame(0x123, false, &[]));
        assert_eq!(out[1], frame(0x18FEF100, true, &[1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(
            out[2],
            Ok(Line::Frame(
                CanFrame::remote(0x7FF, false, 4).expect("rtr"),
                None
            ))
        );
        assert_eq!(
            out[3],
            Ok(Line::Frame(
                CanFrame::remote(1, true, 1).expect("rtr"),
                None
            ))
        );
        assert_eq!(
            out[4],
            Ok(Line::Frame(
                CanFrame::new(1, false, &[0xFF]).expect("f"),
                Some(0x1234)
            ))
        );
        let fd = CanFrame::new(0x123, false, &(0..12).collect::<Vec<u8>>()).expect("fd");
        assert_eq!(out[5], Ok(Line::Frame(fd, None)));
        assert_eq!(out.len(), 6);
    }

    #[test]
    fn replies_and_host_commands() {
        let out = all(b"\r\x07F08\rV1013\rN1234\rz\rC\rS6\rO\r\r\n", MAX_LINE);
        assert_eq!(
            out,
            [
                Ok(Line::Ack),
                Ok(Line::Nack),
                Ok(Line::Status(0x08)),
                Ok(Line::Info),
                Ok(Line::Info),
                Ok(Line::Ack),
                Ok(Line::Command),
                Ok(Line::Command),
                Ok(Line::Command),
                Ok(Line::Ack),
            ]
        );
    }

    #[test]
    fn garbage_and_truncated_lines_are_items_and_reading_goes_on() {
        let input = b"t1232AA\r\x00\xff##\rt8000\rt12390\rt1232AABBFFFF\rxyzt1231CC\rt1232AABB\n";
        let out = all(input, MAX_LINE);
        let bad: Vec<&str> = out
            .iter()
            .filter_map(|i| i.as_ref().err().map(|e| e.why))
            .collect();
        assert_eq!(
            bad,
            [
                "truncated frame",
                "not an SLCAN line",
                "identifier out of range",
                "length above 8",
                "bad timestamp",
                "garbage before a frame"
            ]
        );
        let good: Vec<&Item> = out.iter().filter(|i| i.is_ok()).collect();
        assert_eq!(
            good,
            [
                &frame(0x123, false, &[0xCC]),
                &frame(0x123, false, &[0xAA, 0xBB])
            ]
        );
        assert!(out.iter().all(|i| i
            .as_ref()
            .map_or_else(|e| e.reason() == "bad_slcan", |_| true)));
    }

    #[test]
    fn long_lines_are_bounded_and_skipped_whole() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"still the same line\rt1230\r");
        let out = all(&input, 30);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].as_ref().expect_err("too long").why, "line too long");
        assert_eq!(out[1], frame(0x123, false, &[]));
        // Streaming: the buffer never holds much more than max_line.
        let mut c = SlcanCodec::new(30);
        let mut buf = BytesMut::new();
        for _ in 0..100 {
            buf.extend_from_slice(b"0123456789");
            while let Some(_item) = c.decode(&mut buf).expect("decode") {}
            assert!(buf.len() <= 31, "{}", buf.len());
        }
    }

    #[test]
    fn encode_round_trips() {
        let frames = [
            CanFrame::new(0x123, false, &[1, 2, 3]).expect("f"),
            CanFrame::new(0x18FEF100, true, &[0xDE, 0xAD, 0xBE, 0xEF, 0, 0, 0, 0]).expect("f"),
            CanFrame::remote(0x7FF, false, 8).expect("f"),
            CanFrame::new(0x10, false, &[7; 12]).expect("fd"),
        ];
        assert_eq!(encode(&frames[0]), b"t1233010203\r");
        assert_eq!(encode(&frames[1]), b"T18FEF1008DEADBEEF00000000\r");
        assert_eq!(encode(&frames[2]), b"r7FF8\r");
        for f in frames {
            let out = all(&encode(&f), MAX_LINE);
            assert_eq!(out, [Ok(Line::Frame(f, None))]);
        }
        assert_eq!(open_commands("S6", false), b"C\rS6\rL\r");
        assert_eq!(open_commands("S8", true), b"C\rS8\rO\r");
    }
}
