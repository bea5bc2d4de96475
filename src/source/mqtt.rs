//! MQTT source (`[[sources.mqtt]]`): QoS1 subscriptions acknowledged only after the
//! journal flush that covers them.
//!
//! The pieces: `topic` turns patterns like `fleet/{vehicle}/{device}/{kind}` into
//! subscriptions and topic parsers and payloads into JSON; `task` drives rumqttc's event
//! loop (connect, subscribe, reconnect with backoff, append to the journal); `ack` waits
//! for durability and sends the PUBACKs in order; `tls` builds the rustls config for
//! `mqtts://`. With `clean_session = false` and a stable `client_id` the broker holds
//! messages while the gateway is down and redelivers whatever was not acknowledged, so a
//! crash between journaling and acking yields a duplicate frame, never a lost one.
//!
//! When the journal's write queue is full the task stops reading from the broker (which
//! keeps the rest) until there is room; it never acks what is not on disk. When the acks
//! owed fill the broker's in-flight window it asks the journal to commit at once.

mod ack;
mod pause;
mod sys;
mod task;
mod tls;
pub mod topic;

use crate::config::ConfigError;
use crate::units::{ByteSize, Positive};
use serde::Deserialize;
use std::path::PathBuf;

pub use task::run;
pub(crate) use task::{filters, options, patterns};

/// One broker connection and its subscriptions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Source name (unique); also the device id when a pattern has no `{device}`.
    pub name: String,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Stable client id, so the broker keeps our session while we are down.
    pub client_id: String,
    /// Optional username.
    pub username: Option<String>,
    /// Optional password.
    pub password: Option<String>,
    /// CA bundle for `mqtts://` (default: the system roots).
    pub ca_file: Option<PathBuf>,
    /// Largest accepted payload, bytes; longer payloads are acked, counted and dropped.
    #[serde(default = "default_max_frame")]
    pub max_frame: Positive,
    /// Largest MQTT packet read from the broker. A bigger packet cannot be parsed and
    /// drops the connection, so keep it well above `max_frame` (or cap the broker's
    /// `message_size_limit` below it).
    #[serde(default = "default_max_packet")]
    pub max_packet: ByteSize,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: Positive,
    /// Vehicle id for frames whose pattern has no `{vehicle}`.
    pub vehicle: Option<String>,
    /// Topic patterns; `{vehicle}`, `{device}`, `{kind}` fill the frame's ids.
    pub subscriptions: Vec<Subscription>,
    /// Where WebSocket `command`s for a device seen on this broker are published (QoS1),
    /// e.g. `fleet/{vehicle}/{device}/cmd`; absent = devices here take no commands.
    pub command_topic: Option<String>,
    /// The broker's in-flight window for QoS1 messages to us (mosquitto's
    /// `max_inflight_messages`, default 20). Once this many PUBACKs are owed the journal
    /// commits at once instead of waiting out `flush_ms`: the broker sends nothing more
    /// until it gets acks, and its queue overflows meanwhile.
    #[serde(default = "default_broker_inflight")]
    pub broker_inflight: Positive,
    /// Subscribe to the broker's `$SYS` counters (mosquitto's dropped/received/sent
    /// messages) on this connection and show them in `/api/status`.
    #[serde(default = "default_broker_stats")]
    pub broker_stats: bool,
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
fn default_max_packet() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_keep_alive() -> Positive {
    Positive(30)
}
fn default_qos() -> u8 {
    1
}
fn default_broker_inflight() -> Positive {
    Positive(20)
}
fn default_broker_stats() -> bool {
    true
}

/// Where to connect, from `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or IP (without brackets).
    pub host: String,
    /// Port (default 1883, or 8883 for TLS).
    pub port: u16,
}

/// Parse `mqtt://host[:port]` / `mqtts://host[:port]`.
pub fn parse_url(url: &str) -> Result<BrokerAddr, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!(
            "expected mqtt://host:port or mqtts://host:port, got {url:?}"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {url:?}"))?;
        (h, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("expected mqtt://host:port, got {url:?}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("bad port {p:?} in {url:?}"))?,
    };
    Ok(BrokerAddr {
        tls,
        host: host.to_string(),
        port,
    })
}

impl MqttConfig {
    /// Checks beyond types; `key` is this entry's path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        parse_url(&self.url).map_err(|m| ConfigError::invalid(format!("{key}.url"), m))?;
        if self.client_id.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.client_id"),
                "expected a non-empty, stable client id (the broker keeps our session under it)",
            ));
        }
        if let Some(t) = &self.command_topic {
            if !t.contains("{device}") || t.contains(['+', '#']) {
                return Err(ConfigError::invalid(
                    format!("{key}.command_topic"),
                    format!("expected a topic with a {{device}} placeholder and no wildcards, got {t:?}"),
                ));
            }
        }
        if self.ca_file.is_some() && !self.url.starts_with("mqtts://") {
            return Err(ConfigError::invalid(
                format!("{key}.ca_file"),
                "only meaningful with an mqtts:// url",
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
            if let Err(e) = topic::TopicPattern::parse(&s.topic) {
                return Err(ConfigError::invalid(
                    format!("{key}.subscriptions[{i}].topic"),
                    format!("{e}, got {:?}", s.topic),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let a = parse_url("mqtt://127.0.0.1:1884").expect("plain");
        assert_eq!((a.tls, a.host.as_str(), a.port), (false, "127.0.0.1", 1884));
        let a = parse_url("mqtts://broker.example").expect("tls");
        assert_eq!(
            (a.tls, a.host.as_str(), a.port),
            (true, "broker.example", 8883)
        );
        let a = parse_url("mqtt://[::1]:1999/").expect("v6");
        assert_eq!((a.host.as_str(), a.port), ("::1", 1999));
        for bad in [
            "tcp://x:1",
            "mqtt://",
            "mqtt://host:0",
            "mqtt://host:99999",
            "mqtt://h/x:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    fn sample(topic: &str) -> MqttConfig {
        let text = format!(
            "name = \"m\"\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"fg\"\n\
             [[subscriptions]]\ntopic = \"{topic}\"\n"
        );
        toml::from_str(&text).expect("parse")
    }

    #[test]
    fn validation_names_the_key() {
        assert!(sample("fleet/{vehicle}/{device}/{kind}")
            .validate("sources.mqtt[0]")
            .is_ok());
        let e = sample("fleet/+/x")
            .validate("sources.mqtt[0]")
            .expect_err("wildcard");
        assert!(e
            .to_string()
            .starts_with("sources.mqtt[0].subscriptions[0].topic"));
        let mut c = sample("a/{device}");
        c.client_id.clear();
        let e = c.validate("k").expect_err("client id");
        assert!(e.to_string().starts_with("k.client_id"));
    }
}
