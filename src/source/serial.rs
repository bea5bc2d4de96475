//! Serial port source configuration (`[[sources.serial]]`).

use crate::config::ConfigError;
use crate::source::framing::Framing;
use crate::units::Positive;
use serde::Deserialize;
use std::path::PathBuf;

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
}

fn default_max_frame() -> Positive {
    Positive(4096)
}

impl SerialConfig {
    /// Checks beyond types; `key` is this entry's path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_frame.0 > 1 << 20 {
            return Err(ConfigError::invalid(
                format!("{key}.max_frame"),
                format!("expected at most 1048576 bytes, got {}", self.max_frame.0),
            ));
        }
        Ok(())
    }
}
