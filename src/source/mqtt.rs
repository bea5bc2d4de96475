//! MQTT source configuration (`[[sources.mqtt]]`).

use crate::config::ConfigError;
use crate::units::Positive;
use serde::Deserialize;
use std::path::PathBuf;

/// One broker connection and its subscriptions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Source name (unique).
    pub name: String,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Stable client id, so the broker keeps our session while we are down.
    pub client_id: String,
    /// Optional username.
    pub username: Option<String>,
    /// Optional password.
    pub password: Option<String>,
    /// CA bundle for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Largest accepted payload, bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame: Positive,
    /// Topic patterns; `{vehicle}`, `{device}`, `{kind}` fill the frame's ids.
    pub subscriptions: Vec<Subscription>,
}

/// One subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Pattern such as `fleet/{vehicle}/{device}/{kind}`.
    pub topic: String,
    /// 0 or 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
}

fn default_max_frame() -> Positive {
    Positive(65_536)
}
fn default_qos() -> u8 {
    1
}

impl MqttConfig {
    /// Checks beyond types; `key` is this entry's path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(self.url.starts_with("mqtt://") || self.url.starts_with("mqtts://")) {
            return Err(ConfigError::invalid(
                format!("{key}.url"),
                format!(
                    "expected mqtt://host:port or mqtts://host:port, got {:?}",
                    self.url
                ),
            ));
        }
        if self.subscriptions.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.subscriptions"),
                "expected at least one subscription",
            ));
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            if s.qos > 1 {
                return Err(ConfigError::invalid(
                    format!("{key}.subscriptions[{i}].qos"),
                    format!("expected 0 or 1, got {}", s.qos),
                ));
            }
            if s.topic.is_empty() || s.topic.contains(['#', '+']) {
                return Err(ConfigError::invalid(
                    format!("{key}.subscriptions[{i}].topic"),
                    format!(
                        "expected a topic pattern using {{vehicle}}/{{device}}/{{kind}} placeholders instead of wildcards, got {:?}",
                        s.topic
                    ),
                ));
            }
        }
        Ok(())
    }
}
