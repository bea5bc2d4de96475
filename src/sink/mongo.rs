//! MongoDB sink configuration (`[mongo]`); the sync worker itself follows DESIGN.md §5.

use crate::config::ConfigError;
use crate::units::{HumanDuration, Positive};
use serde::Deserialize;
use std::time::Duration;

/// `[mongo]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string, `mongodb://` or `mongodb+srv://`.
    pub uri: String,
    /// Database name.
    #[serde(default = "default_database")]
    pub database: String,
    /// Most frames per `insert_many`.
    #[serde(default = "default_batch_max")]
    pub batch_max: Positive,
    /// Longest wait to fill a batch, ms.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: Positive,
    /// Cap of the retry backoff.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
    /// Write concern: `majority` or a node count such as `1`.
    #[serde(default = "default_write_concern")]
    pub write_concern: String,
}

fn default_database() -> String {
    "fieldgate".into()
}
fn default_batch_max() -> Positive {
    Positive(1000)
}
fn default_batch_ms() -> Positive {
    Positive(200)
}
fn default_backoff_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_write_concern() -> String {
    "majority".into()
}

impl MongoConfig {
    /// Defaults for everything but the URI.
    pub fn with_uri(uri: String) -> Self {
        MongoConfig {
            uri,
            database: default_database(),
            batch_max: default_batch_max(),
            batch_ms: default_batch_ms(),
            backoff_max: default_backoff_max(),
            write_concern: default_write_concern(),
        }
    }

    /// Checks beyond types; `key` is this section's path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            return Err(ConfigError::invalid(
                format!("{key}.uri"),
                format!(
                    "expected a mongodb:// or mongodb+srv:// URI, got {:?}",
                    self.uri
                ),
            ));
        }
        if self.database.is_empty() || self.database.contains(['/', '.', ' ', '$']) {
            return Err(ConfigError::invalid(
                format!("{key}.database"),
                format!("expected a database name, got {:?}", self.database),
            ));
        }
        let wc = self.write_concern.as_str();
        if wc != "majority" && wc.parse::<u32>().is_err() {
            return Err(ConfigError::invalid(
                format!("{key}.write_concern"),
                format!("expected \"majority\" or a node count, got {wc:?}"),
            ));
        }
        Ok(())
    }
}
