//! Mirror of the device and vehicle registries (sled trees) into MongoDB collections.
//!
//! Every key is marked dirty at start and on every change, and a dirty key is synced from
//! the tree's *current* value (upsert on `_id`, or delete when gone). Changes during an
//! outage therefore coalesce, nothing is replayed out of order, and the sled subscriber is
//! drained promptly so writers of the registry never wait on MongoDB.

use super::client::{describe, sleep_or_stop, Backoff, OP_TIMEOUT};
use super::health::Health;
use crate::journal::Journal;
use bson::{doc, Bson, Document};
use futures_util::FutureExt;
use mongodb::{Collection, Database};
use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The mirrored registries: sled tree name = collection name.
const REGISTRIES: [&str; 2] = ["devices", "vehicles"];
/// At most one log line per this period for invalid registry entries.
const INVALID_LOG_EVERY: Duration = Duration::from_secs(60);

/// One registry: its sled tree, change feed and collection.
struct Registry {
    tree: sled::Tree,
    changes: sled::Subscriber,
    coll: Collection<Document>,
}

/// Why an entry could not be mirrored.
enum SyncError {
    /// The entry itself is unusable (bad id or value); retrying will not help.
    Invalid(String),
    /// MongoDB did not take it; retry.
    Mongo(String),
}

/// Mirror both registries until `stop`.
pub(super) async fn mirror(
    db: Database,
    journal: Journal,
    health: Arc<Health>,
    backoff_max: Duration,
    stop: CancellationToken,
) {
    let mut regs = Vec::new();
    for name in REGISTRIES {
        let tree = match journal.tree(name) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(registry = name, error = %e, "cannot open registry; not mirrored");
                health.note_error(&format!("cannot open registry {name}: {e}"));
                continue;
            }
        };
        // Subscribe before the initial scan so no change falls between the two.
        let changes = tree.watch_prefix(vec![]);
        regs.push(Registry {
            tree,
            changes,
            coll: db.collection(name),
        });
    }
    let mut dirty: BTreeSet<(usize, Vec<u8>)> = BTreeSet::new();
    for (i, r) in regs.iter().enumerate() {
        dirty.extend(
            r.tree
                .iter()
                .keys()
                .filter_map(|k| k.ok())
                .map(|k| (i, k.to_vec())),
        );
    }
    let mut backoff = Backoff::new(backoff_max);
    let mut invalid_logged: Option<Instant> = None;
    let mut failing = false;
    loop {
        drain_changes(&mut regs, &mut dirty);
        let Some((i, key)) = dirty.first().cloned() else {
            // Idle: wait for the next change on any registry.
            let changed = wait_change(&mut regs, &stop).await;
            match changed {
                Some(Some(entry)) => {
                    dirty.insert(entry);
                    continue;
                }
                _ => return,
            }
        };
        // Clones: the change feed in `regs` is not `Sync`, so it must not be held across awaits.
        let (tree, coll) = (regs[i].tree.clone(), regs[i].coll.clone());
        match sync_key(&tree, &coll, &key, &stop).await {
            Ok(()) => {
                dirty.remove(&(i, key));
                backoff.reset();
                failing = false;
            }
            Err(SyncError::Invalid(e)) => {
                dirty.remove(&(i, key));
                health.note_error(&e);
                if invalid_logged.is_none_or(|t| t.elapsed() >= INVALID_LOG_EVERY) {
                    invalid_logged = Some(Instant::now());
                    tracing::warn!(error = %e, "registry entry not mirrored to MongoDB");
                }
            }
            Err(SyncError::Mongo(_)) if stop.is_cancelled() => return,
            Err(SyncError::Mongo(e)) => {
                // While frames get through this is a registry-only problem: say so once.
                // Otherwise the frame loop has already reported the outage.
                if !failing && health.is_online() {
                    tracing::warn!(error = %e, "registry mirror failing; will retry");
                }
                failing = true;
                health.note_error(&e);
                if !sleep_or_stop(backoff.delay(), &stop).await {
                    return;
                }
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Move every change already queued into the dirty set, without waiting.
fn drain_changes(regs: &mut [Registry], dirty: &mut BTreeSet<(usize, Vec<u8>)>) {
    for (i, r) in regs.iter_mut().enumerate() {
        while let Some(Some(ev)) = (&mut r.changes).now_or_never() {
            dirty.insert((i, event_key(&ev)));
        }
    }
}

/// The next change on any registry; `None` on stop, `Some(None)` when the feeds ended.
async fn wait_change(
    regs: &mut [Registry],
    stop: &CancellationToken,
) -> Option<Option<(usize, Vec<u8>)>> {
    if regs.is_empty() {
        stop.cancelled().await;
        return None;
    }
    let feeds = regs.iter_mut().enumerate().map(|(i, r)| {
        FutureExt::map(&mut r.changes, move |ev| ev.map(|ev| (i, event_key(&ev)))).boxed()
    });
    tokio::select! {
        _ = stop.cancelled() => None,
        (ev, _, _) = futures_util::future::select_all(feeds) => Some(ev),
    }
}

fn event_key(ev: &sled::Event) -> Vec<u8> {
    match ev {
        sled::Event::Insert { key, .. } | sled::Event::Remove { key } => key.to_vec(),
    }
}

/// Bring one entry's document in line with the tree.
async fn sync_key(
    tree: &sled::Tree,
    coll: &Collection<Document>,
    key: &[u8],
    stop: &CancellationToken,
) -> Result<(), SyncError> {
    let id = std::str::from_utf8(key)
        .map_err(|_| SyncError::Invalid(format!("registry key {key:?} is not UTF-8")))?
        .to_string();
    let current = tree
        .get(key)
        .map_err(|e| SyncError::Invalid(format!("registry read of {id:?} failed: {e}")))?;
    let filter = doc! {"_id": &id};
    let op = match current {
        Some(value) => {
            let doc = document(&id, &value)?;
            coll.replace_one(filter, doc)
                .upsert(true)
                .into_future()
                .map(|r| r.map(|_| ()))
                .boxed()
        }
        None => coll
            .delete_one(filter)
            .into_future()
            .map(|r| r.map(|_| ()))
            .boxed(),
    };
    tokio::select! {
        _ = stop.cancelled() => Err(SyncError::Mongo("stopped".into())),
        r = tokio::time::timeout(OP_TIMEOUT, op) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SyncError::Mongo(format!("registry {id:?}: {}", describe(&e)))),
            Err(_) => Err(SyncError::Mongo(format!("registry {id:?}: timed out"))),
        },
    }
}

/// The document for a registry entry: its JSON fields plus `_id`.
fn document(id: &str, value: &[u8]) -> Result<Document, SyncError> {
    let json: serde_json::Value = serde_json::from_slice(value)
        .map_err(|e| SyncError::Invalid(format!("registry {id:?}: value is not JSON: {e}")))?;
    let Ok(Bson::Document(mut doc)) = bson::to_bson(&json) else {
        return Err(SyncError::Invalid(format!(
            "registry {id:?}: value is not a JSON object"
        )));
    };
    doc.insert("_id", id);
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_documents_carry_the_id() {
        let Ok(d) = document("gps0", br#"{"id":"gps0","kind":"gps","vehicle":"van-07"}"#) else {
            panic!("valid entry rejected");
        };
        assert_eq!(d.get_str("_id").ok(), Some("gps0"));
        assert_eq!(d.get_str("vehicle").ok(), Some("van-07"));
        assert!(document("x", b"[1,2]").is_err());
        assert!(document("x", b"not json").is_err());
    }
}
