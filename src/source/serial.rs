//! Serial port source (`[[sources.serial]]`): a device's byte stream into journaled frames.
//!
//! One task per port: open it ([`super::port`]), split the stream with the configured
//! [`Framing`] (a `FrameDecoder` under `FramedRead`), turn every good item into a [`Frame`]
//! and append everything that is ready in one `append_many` (a 921600-baud burst is
//! thousands of sentences a second). Bad input is counted per reason and logged at a rate
//! limit ([`super::events`]); it never stops the stream. When the device vanishes (open
//! fails, read hits EOF or `EIO`) the task reports `waiting`, retries with backoff, and
//! resumes on the same path.

use crate::config::ConfigError;
use crate::frame::Frame;
use crate::source::events::{count_append, InvalidFrame, LogLimit};
use crate::source::framing::{Decoded, FrameDecoder, Framing};
use crate::source::port::{self, Backoff, Outage};
use crate::source::SourceCtx;
use crate::units::Positive;
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_serial::SerialStream;
use tokio_util::codec::FramedRead;
use tracing::Instrument;

/// One serial port and how its byte stream is framed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Source name (unique); frames carry `source = "serial:<name>"`.
    pub name: String,
    /// Device path, e.g. `/dev/fieldgate/gps`.
    pub path: PathBuf,
    /// Baud rate.
    pub baud: Positive,
    /// `lines` | `nmea` | `jsonl` | `cobs` | `len_crc16`.
    pub framing: Framing,
    /// Largest frame in bytes; longer input is counted and skipped.
    #[serde(default = "default_max_frame")]
    pub max_frame: Positive,
    /// Device id of the frames.
    pub device: String,
    /// Vehicle id, if known.
    pub vehicle: Option<String>,
    /// Frame kind (defaults by framing: nmea → gps, jsonl → json, others → raw).
    pub kind: Option<String>,
    /// When the line trickles, wait this long between reads so bytes gather in the kernel
    /// buffer (fewer wake-ups and journal commits; adds at most this much latency).
    #[serde(default = "default_gather_ms")]
    pub gather_ms: u64,
}

fn default_gather_ms() -> u64 {
    100
}

fn default_max_frame() -> Positive {
    Positive(4096)
}

impl SerialConfig {
    /// The frame kind: `kind`, or by framing (nmea → gps, jsonl → json, others → raw).
    pub fn frame_kind(&self) -> &str {
        match (&self.kind, self.framing) {
            (Some(k), _) => k,
            (None, Framing::Nmea) => "gps",
            (None, Framing::Jsonl) => "json",
            (None, _) => "raw",
        }
    }

    /// Checks beyond types; `key` is this entry's path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_frame.0 > 1 << 20 {
            return Err(ConfigError::invalid(
                format!("{key}.max_frame"),
                format!("expected at most 1048576 bytes, got {}", self.max_frame.0),
            ));
        }
        if self.gather_ms > 1000 {
            return Err(ConfigError::invalid(
                format!("{key}.gather_ms"),
                format!("expected at most 1000 ms, got {}", self.gather_ms),
            ));
        }
        if u32::try_from(self.baud.0).is_err() {
            return Err(ConfigError::invalid(
                format!("{key}.baud"),
                format!("expected a baud rate such as 115200, got {}", self.baud.0),
            ));
        }
        Ok(())
    }
}

/// Most frames journaled in one `append_many`.
const BATCH_MAX: usize = 4096;
/// Read buffer of the framed reader.
const READ_BUFFER: usize = 64 * 1024;
/// A batch smaller than this means the line trickles: wait `gather_ms` before reading on.
const TRICKLE: usize = 32;

/// Why reading a port stopped.
enum Ended {
    /// Shutdown fired.
    Shutdown,
    /// The journal refused a frame; the source cannot continue.
    Journal(String),
    /// The device went away (EOF, EIO, ...).
    Lost(std::io::Error),
}

/// Run one serial port until shutdown: read, frame, journal; reopen when it comes back.
pub async fn run(cfg: SerialConfig, ctx: SourceCtx) {
    let span = tracing::info_span!("serial", device = %cfg.device,
        vehicle = cfg.vehicle.as_deref().unwrap_or(""));
    run_port(cfg, ctx).instrument(span).await
}

/// The body of [`run`], inside the port's span.
async fn run_port(cfg: SerialConfig, ctx: SourceCtx) {
    let mut backoff = Backoff::default();
    let mut outage = Outage::default();
    let mut limit = LogLimit::new();
    let baud = u32::try_from(cfg.baud.0).unwrap_or(u32::MAX);
    while !ctx.shutdown.is_cancelled() {
        match port::open(&cfg.path, baud) {
            Ok(stream) => {
                outage.opened(&cfg.name, &cfg.path, &ctx.slot);
                backoff.reset();
                match read_port(&cfg, &ctx, stream, &mut limit).await {
                    Ended::Shutdown => break,
                    Ended::Journal(e) => {
                        tracing::error!(source = %cfg.name, error = %e, "cannot journal; source stops");
                        ctx.slot.set_state("stopped", Some(e));
                        return;
                    }
                    Ended::Lost(e) => outage.failed(&cfg.name, &cfg.path, &ctx.slot, &e),
                }
            }
            Err(e) => outage.failed(&cfg.name, &cfg.path, &ctx.slot, &e),
        }
        if !backoff.wait(&ctx.shutdown).await {
            break;
        }
    }
    ctx.slot.set_state("stopped", None);
}

/// Reads one open port until it fails or shutdown fires.
async fn read_port(
    cfg: &SerialConfig,
    ctx: &SourceCtx,
    stream: SerialStream,
    limit: &mut LogLimit,
) -> Ended {
    let max_frame = usize::try_from(cfg.max_frame.0).unwrap_or(usize::MAX);
    let decoder = FrameDecoder::new(cfg.framing, max_frame);
    let (reader, mut writer) = tokio::io::split(stream);
    let mut framed = FramedRead::with_capacity(reader, decoder, READ_BUFFER);
    let source = format!("serial:{}", cfg.name);
    let mut batch: Vec<Frame> = Vec::new();
    // `command`s for this device are written to the port while it is open.
    let (cmd_tx, mut commands) = tokio::sync::mpsc::channel(COMMAND_QUEUE);
    if let Err(e) = ctx.commands.register(&cfg.name, &cfg.device, cmd_tx) {
        tracing::error!(error = %e, "the port's device takes no commands");
    }
    let mut beat = super::beat_interval();
    loop {
        let mut item = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Ended::Shutdown,
            _ = beat.tick() => {
                ctx.slot.beat();
                continue;
            }
            Some(cmd) = commands.recv() => {
                match command_bytes(cfg.framing, &cmd.payload) {
                    Ok(bytes) => {
                        if let Err(e) = writer.write_all(&bytes).await {
                            return Ended::Lost(e);
                        }
                        tracing::info!(device = %cfg.device, bytes = bytes.len(), "command written to the port");
                    }
                    Err(e) => tracing::warn!(device = %cfg.device, error = %e, "command not written"),
                }
                continue;
            }
            item = framed.next() => item,
        };
        // Take everything already buffered, then journal it in one go.
        let mut items = 0usize;
        let lost = loop {
            items += 1;
            match item {
                None => {
                    let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "port closed");
                    break Some(eof);
                }
                Some(Err(e)) => break Some(e),
                Some(Ok(Ok(decoded))) => batch.push(to_frame(cfg, ctx, &source, decoded)),
                Some(Ok(Err(bad))) => InvalidFrame {
                    source: &cfg.name,
                    reason: bad.reason(),
                    detail: &bad,
                }
                .emit(&ctx.slot, limit),
            }
            if batch.len() >= BATCH_MAX {
                break None;
            }
            match framed.next().now_or_never() {
                Some(next) => item = next,
                None => break None,
            }
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let burst = std::mem::take(&mut batch);
            let appended = ctx.journal.append_many_within(burst, FULL_WAIT).await;
            if let Err(e) = count_append(appended, n, &cfg.name, &ctx.slot, limit) {
                return Ended::Journal(e.to_string());
            }
        }
        if let Some(e) = lost {
            return Ended::Lost(e);
        }
        // The journal's group commit (20 ms by default) is the latency floor anyway; at
        // 921600 baud 20 ms is under 2 KiB, far below the tty buffer, and it turns one
        // wake-up per few bytes into one per 20 ms.
        if items < TRICKLE && cfg.gather_ms > 0 {
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return Ended::Shutdown,
                _ = tokio::time::sleep(Duration::from_millis(cfg.gather_ms)) => {}
            }
        }
    }
}

/// How long a read burst waits for room in a full journal write queue before it is
/// dropped as `overrun` (the port is not read meanwhile; the tty buffers).
const FULL_WAIT: Duration = Duration::from_secs(2);

/// Commands queued per port before `command` reports the queue full.
const COMMAND_QUEUE: usize = 16;

/// The bytes a `command` payload becomes on the wire: a string as a line, `{"raw_b64"}` as
/// raw bytes, any other JSON as one line of JSON; COBS and len+CRC ports frame it.
pub fn command_bytes(framing: Framing, payload: &serde_json::Value) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let body: Vec<u8> = match payload {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        serde_json::Value::Object(m) if m.len() == 1 && m.contains_key("raw_b64") => {
            let b64 = m.get("raw_b64").and_then(|v| v.as_str()).unwrap_or("");
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("raw_b64: {e}"))?
        }
        other => other.to_string().into_bytes(),
    };
    Ok(match framing {
        Framing::Cobs => crate::source::framing::encode_cobs(&body),
        Framing::LenCrc16 if body.len() <= usize::from(u16::MAX) => {
            crate::source::framing::encode_len_crc16(&body)
        }
        Framing::LenCrc16 => {
            return Err(format!("{} bytes exceed the 65535-byte frame", body.len()))
        }
        Framing::Lines | Framing::Nmea | Framing::Jsonl => {
            let mut line = body;
            if !line.ends_with(b"\n") {
                line.extend_from_slice(b"\r\n");
            }
            line
        }
    })
}

/// A good framed item as a frame of this port.
fn to_frame(cfg: &SerialConfig, ctx: &SourceCtx, source: &str, decoded: Decoded) -> Frame {
    let (payload, device_ts_ms) = decoded.into_payload();
    let mut f = Frame::new(&ctx.gateway, source, &cfg.device, cfg.frame_kind(), payload);
    f.vehicle = cfg.vehicle.clone();
    f.device_ts_ms = device_ts_ms;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(framing: &str, kind: Option<&str>) -> SerialConfig {
        let kind = kind
            .map(|k| format!("kind = \"{k}\"\n"))
            .unwrap_or_default();
        let text = format!(
            "name = \"p\"\npath = \"/dev/null\"\nbaud = 9600\nframing = \"{framing}\"\ndevice = \"d\"\n{kind}"
        );
        toml::from_str(&text).expect("config")
    }

    #[test]
    fn kind_defaults_by_framing() {
        assert_eq!(cfg("nmea", None).frame_kind(), "gps");
        assert_eq!(cfg("jsonl", None).frame_kind(), "json");
        assert_eq!(cfg("cobs", None).frame_kind(), "raw");
        assert_eq!(cfg("lines", Some("log")).frame_kind(), "log");
        assert_eq!(cfg("nmea", None).max_frame.0, 4096);
    }
}
