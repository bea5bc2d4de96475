//! `candump -L` logs: replaying a recorded bus through the whole pipeline.
//!
//! A log line is `(seconds.micros) channel ID#DATA`: 3 hex digits for an 11-bit id, 8 for
//! a 29-bit one (with `0x20000000` set for an error frame), `ID#R` for a remote frame,
//! `ID##<flags>DATA` for CAN FD; python-can's writer appends ` R`/` T` (received or
//! transmitted). [`parse_line`] reads one line; [`Replay`] reads a file with the recorded
//! timing (scaled by `speed`, or as fast as possible), optionally in a loop, and gives each
//! frame its recorded time as the device time. Demos, tests and back-office reprocessing
//! of a customer's log all use it.

use super::socketcan::classify_error;
use super::CanFrame;
use crate::source::framing::{Decoded, FrameDecoder, Framing};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

/// Longest log line read (an FD frame is ~170 characters).
const MAX_LINE: usize = 512;
/// SocketCAN's error-frame flag in the id word.
const ERR_FLAG: u32 = 0x2000_0000;

/// One log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// Recorded time, unix milliseconds.
    pub ts_ms: i64,
    /// Recorded time in seconds (for pacing).
    pub ts: f64,
    /// The frame, or the counter label of an error frame.
    pub frame: Result<CanFrame, &'static str>,
}

/// Parses one `candump -L` line; the error says what is wrong with it.
pub fn parse_line(line: &str) -> Result<Logged, &'static str> {
    let line = line.trim();
    let rest = line.strip_prefix('(').ok_or("no (timestamp)")?;
    let (ts_text, rest) = rest.split_once(')').ok_or("no (timestamp)")?;
    let ts: f64 = ts_text.trim().parse().map_err(|_| "bad timestamp")?;
    if !ts.is_finite() || ts < 0.0 {
        return Err("bad timestamp");
    }
    let mut fields = rest.split_whitespace();
    let _channel = fields.next().ok_or("no channel")?;
    let body = fields.next().ok_or("no frame")?;
    // A trailing direction flag (R/T) or nothing.
    if fields.next().is_some_and(|f| f != "R" && f != "T") || fields.next().is_some() {
        return Err("trailing fields");
    }
    let (id_text, data_text) = body.split_once('#').ok_or("no '#' in frame")?;
    let id = u32::from_str_radix(id_text, 16).map_err(|_| "bad identifier")?;
    let ext = match id_text.len() {
        3 => false,
        8 => true,
        _ => return Err("identifier neither 3 nor 8 digits"),
    };
    let ts_ms = (ts * 1000.0).round() as i64;
    if ext && id & ERR_FLAG != 0 {
        let mut data = [0u8; 8];
        let n = data_text.len() / 2;
        if n > 8 || hex::decode_to_slice(data_text, &mut data[..n]).is_err() {
            return Err("bad error frame data");
        }
        return Ok(Logged {
            ts_ms,
            ts,
            frame: Err(classify_error(id, &data[..n])),
        });
    }
    let frame = if let Some(rtr) = data_text.strip_prefix('R') {
        let dlc = if rtr.is_empty() {
            0
        } else {
            rtr.parse::<u8>().map_err(|_| "bad remote length")?
        };
        CanFrame::remote(id, ext, dlc)
    } else {
        // `##<flags>` marks CAN FD; `_<dlc>` after classic data is a raw DLC above 8.
        let (fd, hex_text) = match data_text.strip_prefix('#') {
            Some(fd) => (true, fd.get(1..).ok_or("no FD flags")?),
            None => (
                false,
                data_text.split_once('_').map_or(data_text, |(d, _)| d),
            ),
        };
        let mut data = [0u8; super::MAX_DATA];
        let n = hex_text.len() / 2;
        if hex_text.len() % 2 != 0 || n > super::MAX_DATA || (!fd && n > 8) {
            return Err("bad data length");
        }
        hex::decode_to_slice(hex_text, &mut data[..n]).map_err(|_| "bad data digits")?;
        CanFrame::new(id, ext, &data[..n]).map(|mut f| {
            f.fd = fd;
            f
        })
    };
    Ok(Logged {
        ts_ms,
        ts,
        frame: Ok(frame.ok_or("identifier out of range")?),
    })
}

/// What a replay yields: a parsed line or the reason a line was skipped.
pub type ReplayItem = Result<Logged, (&'static str, String)>;

/// A log file being replayed.
pub struct Replay {
    path: PathBuf,
    speed: f64,
    repeat: bool,
    lines: FramedRead<tokio::fs::File, FrameDecoder>,
    /// Recorded time of the first frame and when it was replayed.
    origin: Option<(f64, Instant)>,
    /// Frames replayed in this pass.
    pub replayed: u64,
}

impl Replay {
    /// Opens `path` for replay at `speed` (0: as fast as possible), in a loop if `repeat`.
    pub async fn open(path: &Path, speed: f64, repeat: bool) -> std::io::Result<Replay> {
        let file = tokio::fs::File::open(path).await?;
        Ok(Replay {
            path: path.to_path_buf(),
            speed,
            repeat,
            lines: FramedRead::with_capacity(
                file,
                FrameDecoder::new(Framing::Lines, MAX_LINE),
                64 * 1024,
            ),
            origin: None,
            replayed: 0,
        })
    }

    /// The next line, when its recorded time comes; `None` at the end of the log (after
    /// starting over if `repeat`, when the log is not empty).
    pub async fn next(&mut self) -> Option<std::io::Result<ReplayItem>> {
        loop {
            let item = match self.lines.next().await {
                Some(item) => item,
                None if self.repeat && self.replayed > 0 => {
                    let file = match tokio::fs::File::open(&self.path).await {
                        Ok(f) => f,
                        Err(e) => return Some(Err(e)),
                    };
                    self.lines = FramedRead::with_capacity(
                        file,
                        FrameDecoder::new(Framing::Lines, MAX_LINE),
                        64 * 1024,
                    );
                    self.origin = None;
                    self.replayed = 0;
                    continue;
                }
                None => return None,
            };
            let text = match item {
                Err(e) => return Some(Err(e)),
                Ok(Ok(Decoded::Text(t))) => t,
                Ok(Ok(_)) => continue,
                Ok(Err(bad)) => return Some(Ok(Err(("bad_candump", bad.to_string())))),
            };
            if text.trim().is_empty() {
                continue;
            }
            let logged = match parse_line(&text) {
                Ok(l) => l,
                Err(why) => {
                    let shown: String = text.chars().take(48).collect();
                    return Some(Ok(Err(("bad_candump", format!("{why}: {shown:?}")))));
                }
            };
            if self.speed > 0.0 {
                let (t0, start) = *self.origin.get_or_insert((logged.ts, Instant::now()));
                let after = ((logged.ts - t0) / self.speed).clamp(0.0, 86_400.0);
                tokio::time::sleep_until(start + std::time::Duration::from_secs_f64(after)).await;
            }
            self.replayed += 1;
            return Some(Ok(Ok(logged)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_every_kind() {
        let l = parse_line("(1436509052.249713) vcan0 044#2A366C2BBA").expect("classic");
        assert_eq!(l.ts_ms, 1_436_509_052_250);
        assert_eq!(
            l.frame,
            Ok(CanFrame::new(0x44, false, &[0x2A, 0x36, 0x6C, 0x2B, 0xBA]).expect("f"))
        );
        let l =
            parse_line("(0.5) can0 18FEF100#0102030405060708 R").expect("ext + python-can's flag");
        assert_eq!(
            l.frame,
            Ok(CanFrame::new(0x18FEF100, true, &[1, 2, 3, 4, 5, 6, 7, 8]).expect("f"))
        );
        assert_eq!(
            parse_line("(1.0) can0 123#R").expect("rtr").frame,
            Ok(CanFrame::remote(0x123, false, 0).expect("r"))
        );
        assert_eq!(
            parse_line("(1.0) can0 123#R4 T").expect("rtr").frame,
            Ok(CanFrame::remote(0x123, false, 4).expect("r"))
        );
        let fd = parse_line("(1.0) can0 123##1000102030405060708090A0B")
            .expect("fd")
            .frame
            .expect("frame");
        assert!(fd.fd && fd.data().len() == 12);
        assert_eq!(
            parse_line("(1.0) can0 123#")
                .expect("empty")
                .frame
                .expect("f")
                .data(),
            &[] as &[u8]
        );
        assert_eq!(
            parse_line("(2.0) can0 20000080#0000000000000000")
                .expect("error frame")
                .frame,
            Err("bus_error")
        );
        assert_eq!(
            parse_line("(2.0) can0 20000004#0001000000000000")
                .expect("error frame")
                .frame,
            Err("overrun")
        );
        for bad in [
            "1436509052.249713 vcan0 044#2A",
            "(x) vcan0 044#2A",
            "(1.0) vcan0 44#2A",
            "(1.0) vcan0 044#2A3",
            "(1.0) vcan0 044#2AZZ",
            "(1.0) vcan0 044#112233445566778899",
            "(1.0) vcan0 800#",
            "(1.0) vcan0 044#2A extra fields",
            "(1.0) vcan0",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn replay_keeps_the_recorded_timing_and_loops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bus.log");
        std::fs::write(
            &path,
            "(100.000) can0 001#01\n(100.500) can0 002#02\nnot a line\n\n(101.000) can0 003#03\n",
        )
        .expect("log");
        // Ten times as fast: 0.5 s of log is 50 ms.
        let mut r = Replay::open(&path, 10.0, true).await.expect("open");
        let t0 = Instant::now();
        let mut ids = Vec::new();
        let mut bad = 0;
        while ids.len() < 5 {
            match r.next().await.expect("loops").expect("io") {
                Ok(l) => ids.push((
                    l.frame.expect("frame").id,
                    (Instant::now() - t0).as_millis(),
                )),
                Err(("bad_candump", _)) => bad += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        let order: Vec<u32> = ids.iter().map(|(id, _)| *id).collect();
        assert_eq!(order, [1, 2, 3, 1, 2], "the second pass starts over");
        let at: Vec<u128> = ids.iter().map(|(_, ms)| *ms).collect();
        assert!(
            at[1] >= 50 && at[2] >= 100 && at[4] >= at[2] + 50,
            "recorded timing kept: {at:?}"
        );
        assert!(at[3] - at[2] < 50, "no pause between passes: {at:?}");
        assert_eq!(bad, 1);
        let mut once = Replay::open(&path, 0.0, false).await.expect("open");
        let mut n = 0;
        while let Some(item) = once.next().await {
            n += usize::from(item.expect("io").is_ok());
        }
        assert_eq!(n, 3);
    }
}
