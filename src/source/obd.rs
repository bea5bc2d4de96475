//! ELM327 OBD-II source configuration (`[[sources.obd]]`).

use crate::config::ConfigError;
use crate::units::Positive;
use serde::Deserialize;
use std::path::PathBuf;

/// One ELM327 adapter on a serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObdConfig {
    /// Source name (unique).
    pub name: String,
    /// Serial device path.
    pub path: PathBuf,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: Positive,
    /// Mode-01 PIDs to poll, as two hex digits.
    #[serde(default = "default_pids")]
    pub pids: Vec<String>,
    /// Poll interval, ms.
    #[serde(default = "default_interval")]
    pub interval_ms: Positive,
    /// DTC (mode 03) read interval, ms.
    #[serde(default = "default_dtc_interval")]
    pub dtc_interval_ms: Positive,
    /// Device id (defaults to the source name).
    pub device: Option<String>,
    /// Vehicle id.
    pub vehicle: Option<String>,
}

fn default_baud() -> Positive {
    Positive(38_400)
}
fn default_pids() -> Vec<String> {
    ["0C", "0D", "05", "0F", "10", "11", "2F", "42"]
        .map(String::from)
        .to_vec()
}
fn default_interval() -> Positive {
    Positive(1000)
}
fn default_dtc_interval() -> Positive {
    Positive(60_000)
}

impl ObdConfig {
    /// Checks beyond types; `key` is this entry's path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (i, pid) in self.pids.iter().enumerate() {
            if pid.len() != 2 || u8::from_str_radix(pid, 16).is_err() {
                return Err(ConfigError::invalid(
                    format!("{key}.pids[{i}]"),
                    format!("expected a two-digit hex PID such as \"0C\", got {pid:?}"),
                ));
            }
        }
        Ok(())
    }
}
