//! The gateway's one TOML file: assembled here from the components' own config structs.
//!
//! Every struct denies unknown keys, and every error names the offending key path, e.g.
//! `sources.serial[1].baud: expected a positive integer, got string "fast"`, so an installer
//! can fix a file without reading code. A few values can be overridden from the
//! environment (`FIELDGATE_GATEWAY_ID`, `FIELDGATE_MONGO_URI`, `FIELDGATE_LISTEN`).

use crate::api::ListenConfig;
use crate::journal::JournalConfig;
use crate::sink::mongo::MongoConfig;
use crate::source::SourcesConfig;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`: identity.
    pub gateway: GatewayConfig,
    /// `[journal]`: the durable store.
    #[serde(default)]
    pub journal: JournalConfig,
    /// `[listen]`: the HTTP/WebSocket listener.
    #[serde(default)]
    pub listen: ListenConfig,
    /// `[log]`: logging.
    #[serde(default)]
    pub log: LogConfig,
    /// `[mongo]`: the MongoDB sink; absent means no sync.
    pub mongo: Option<MongoConfig>,
    /// `[sources]`: serial ports, OBD adapters, MQTT brokers, simulators.
    #[serde(default)]
    pub sources: SourcesConfig,
}

/// `[gateway]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Gateway id; part of every frame's MongoDB `_id`.
    pub id: String,
}

/// `[log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `fieldgate=debug` (`RUST_LOG` wins).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// A config problem, with the dotted path of the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A key is missing, unknown, or has a bad value.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key path, e.g. `sources.serial[1].baud`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The file is not valid TOML.
    #[error("not valid TOML: {0}")]
    Syntax(String),
}

impl ConfigError {
    /// A bad value at `key`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Rewrite serde's "invalid type: X, expected Y" into "expected Y, got X".
fn plain_message(msg: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((got, expected)) = rest.split_once(", expected ") {
                return format!("expected {expected}, got {got}");
            }
        }
    }
    msg.to_string()
}

/// A valid gateway id: 1-64 chars of `[A-Za-z0-9._-]` (it becomes part of `_id`s).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Config {
    /// Parse TOML text (no environment overrides).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = plain_message(inner.message());
            if key == "." {
                if message.starts_with("missing field") || message.starts_with("unknown field") {
                    return ConfigError::invalid("(top level)", message);
                }
                return ConfigError::Syntax(inner.to_string().trim().to_string());
            }
            ConfigError::invalid(key, message)
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a file and apply environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg = Config::parse(&text)?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Apply `FIELDGATE_GATEWAY_ID`, `FIELDGATE_MONGO_URI`, `FIELDGATE_LISTEN`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(id) = var("FIELDGATE_GATEWAY_ID") {
            self.gateway.id = id;
        }
        if let Some(uri) = var("FIELDGATE_MONGO_URI") {
            match &mut self.mongo {
                Some(m) => m.uri = uri,
                None => self.mongo = Some(MongoConfig::with_uri(uri)),
            }
        }
        if let Some(addr) = var("FIELDGATE_LISTEN") {
            self.listen.address = addr.parse().map_err(|_| {
                ConfigError::invalid(
                    "FIELDGATE_LISTEN",
                    format!("expected an address such as 0.0.0.0:3004, got {addr:?}"),
                )
            })?;
        }
        self.validate()
    }

    /// Checks serde cannot express: id syntax, unique source names, component rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_id(&self.gateway.id) {
            return Err(ConfigError::invalid(
                "gateway.id",
                format!(
                    "expected 1-64 characters of A-Z a-z 0-9 . _ -, got {:?}",
                    self.gateway.id
                ),
            ));
        }
        if self.journal.max_bytes.0 < 64 * 1024 {
            return Err(ConfigError::invalid(
                "journal.max_bytes",
                format!(
                    "expected at least 64KiB, got {} bytes",
                    self.journal.max_bytes.0
                ),
            ));
        }
        if self.journal.pending_max_bytes.0 < 64 * 1024 {
            return Err(ConfigError::invalid(
                "journal.pending_max_bytes",
                format!(
                    "expected at least 64KiB (a few MiB is right), got {} bytes",
                    self.journal.pending_max_bytes.0
                ),
            ));
        }
        if let Err(e) = self
            .log
            .level
            .parse::<tracing_subscriber::filter::Targets>()
        {
            return Err(ConfigError::invalid(
                "log.level",
                format!(
                    "expected a level or target=level list such as \"info,sled=warn\", got {:?}: {e}",
                    self.log.level
                ),
            ));
        }
        if let Some(m) = &self.mongo {
            m.validate("mongo")?;
        }
        let mut names = HashSet::new();
        for (key, name) in self.sources.names() {
            if !names.insert(name.clone()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("source name {name:?} is used twice; names must be unique"),
                ));
            }
        }
        self.sources.validate()
    }
}

#[cfg(test)]
mod tests;
