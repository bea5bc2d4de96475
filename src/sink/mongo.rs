//! The MongoDB sink: store-and-forward of the journal to MongoDB.
//!
//! The uplink comes and goes, so this sink never drops and never duplicates: it reads the
//! journal from its own cursor, writes batches with `insert_many` (`ordered = false`,
//! `_id = "<gateway>:<seq>"`, so a replay lands on the same documents and a duplicate-key
//! error means "already there"), and advances the cursor only after the server acknowledged.
//! Failures are retried with capped exponential backoff; being offline is a status, logged
//! once on entering and once on leaving. The device and vehicle registries are mirrored
//! alongside (see `registry`).

mod client;
mod collision;
mod deliver;
pub mod encode;
mod frames;
mod health;
mod recheck;
mod registry;

pub(crate) use client::{describe as describe_error, options as client_options};
pub(crate) use frames::index_keys;

use crate::config::ConfigError;
use crate::journal::Journal;
use crate::sink::SinkSlot;
use crate::units::{HumanDuration, Positive};
use health::Health;
use mongodb::options::WriteConcern;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    /// Write concern: `majority` or a node count such as `1`; always with `j: true`.
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
        if !cfg!(feature = "srv") && self.uri.starts_with("mongodb+srv://") {
            return Err(ConfigError::invalid(
                format!("{key}.uri"),
                "this build has no DNS SRV support (built without the `srv` feature): use a \
                 mongodb://host1,host2,.../?replicaSet=NAME seed list, or rebuild with \
                 `cargo build --release --features srv`",
            ));
        }
        if self.database.is_empty() || self.database.contains(['/', '.', ' ', '$']) {
            return Err(ConfigError::invalid(
                format!("{key}.database"),
                format!("expected a database name, got {:?}", self.database),
            ));
        }
        let wc = self.write_concern.as_str();
        if wc != "majority" && !wc.parse::<u32>().is_ok_and(|n| n > 0) {
            return Err(ConfigError::invalid(
                format!("{key}.write_concern"),
                format!(
                    "expected \"majority\" or a node count of at least 1 \
                     (0 would not wait for the server to acknowledge), got {wc:?}"
                ),
            ));
        }
        Ok(())
    }

    /// The configured write concern (`validate` has checked it; anything else is majority),
    /// with `j: true`: an acknowledged batch is in the server's on-disk journal, so a server
    /// killed right after its reply still has it (with `j` unset a server may acknowledge
    /// writes it loses in a crash, and the cursor would already be past them).
    pub fn write_concern(&self) -> WriteConcern {
        let mut wc = match self.write_concern.parse::<u32>() {
            Ok(n) if n > 0 => WriteConcern::nodes(n),
            _ => WriteConcern::majority(),
        };
        wc.journal = Some(true);
        wc
    }
}

/// Run the sink until `shutdown`: mirror the registries and sync the journal to MongoDB.
///
/// Never returns early on a MongoDB problem; the status slot says what is going on.
pub async fn run(
    cfg: MongoConfig,
    gateway: String,
    journal: Journal,
    slot: SinkSlot,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("mongo_sink", gateway = %gateway, database = %cfg.database);
    run_inner(cfg, &gateway, journal, slot, shutdown)
        .instrument(span)
        .await
}

async fn run_inner(
    cfg: MongoConfig,
    gateway: &str,
    journal: Journal,
    slot: SinkSlot,
    shutdown: CancellationToken,
) {
    // Registering the cursor first makes retention wait for us even while offline.
    let cursor = journal.cursor("mongo");
    let health = Arc::new(Health::new(slot, journal.clone(), cursor.acked()));
    // Helpers stop with the gateway, or when the frame loop ends (journal closed).
    let stop = shutdown.child_token();
    let refresher =
        tokio::spawn(health::refresh_loop(Arc::clone(&health), stop.clone()).in_current_span());
    let Some(client) = client::connect_until_ok(&cfg, &health, &shutdown).await else {
        stop.cancel();
        let _ = refresher.await;
        health.stopped();
        return;
    };
    let db = client.database(&cfg.database);
    let mirror = tokio::spawn(
        registry::mirror(
            db.clone(),
            journal.clone(),
            Arc::clone(&health),
            cfg.backoff_max.0,
            stop.clone(),
        )
        .in_current_span(),
    );
    frames::sync(&cfg, gateway, &db, &journal, &cursor, &health, &shutdown).await;
    stop.cancel();
    let _ = mirror.await;
    let _ = refresher.await;
    health.stopped();
    client.shutdown().immediate(true).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::options::Acknowledgment;

    #[test]
    fn write_concern_always_waits_for_the_servers_journal() {
        let mut cfg = MongoConfig::with_uri("mongodb://127.0.0.1/".into());
        let wc = cfg.write_concern();
        assert_eq!(wc.w, Some(Acknowledgment::Majority));
        assert_eq!(wc.journal, Some(true));
        cfg.write_concern = "2".into();
        let wc = cfg.write_concern();
        assert_eq!(wc.w, Some(Acknowledgment::Nodes(2)));
        assert_eq!(wc.journal, Some(true));
    }
}
