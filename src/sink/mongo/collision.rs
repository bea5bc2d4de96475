//! Seqs MongoDB already holds for other frames (seqs never repeat: docs/architecture.md).
//!
//! The journal never reissues a seq while its floor file lives, but the floor can be lost
//! together with the journal (a new SD card), and a second gateway may be configured with
//! the same `gateway.id`. So:
//! - before its first insert after every (re)connection the sink reads the highest `seq`
//!   `frames` holds for this gateway at or above the journal's next seq (indexed queries on
//!   `{gateway, seq}`) and lifts the journal's floor above it: frames journaled from then
//!   on cannot collide;
//! - a duplicate-key error is checked against the stored document: the same content hash
//!   (`h`, see `encode::content_hash`) is this very frame, already delivered; anything else
//!   is a *collision*: logged, counted, never delivered — the frame is journaled again and
//!   so reaches MongoDB under a fresh seq. A stored document without `h` (written before
//!   the hash existed) counts as this frame when its seq, gateway, ts and device match.

use super::client::{describe, unauthorized, OP_TIMEOUT};
use super::encode::Encoded;
use crate::journal::{Journal, JournalError};
use crate::source::events::LogLimit;
use bson::{doc, Bson, Document};
use futures_util::TryStreamExt;
use mongodb::Collection;
use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;

/// Seqs above this in `frames` are not believed (a hand-made document): the floor is left.
const SEQ_SANE: u64 = 1 << 53;

/// How a stored document compares with the one we sent under the same `_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    /// The same frame: already delivered.
    Same,
    /// A different frame: a collision.
    Other,
    /// Nothing there any more (deleted since the insert): send again.
    Gone,
}

/// The highest `seq` in `frames` for `gateway` if any is at or above `from` (`None`: none
/// is, or the server refuses the query — a write-only user: then only the journal's own
/// floor protects). Normally one query finds nothing at or above the journal's next seq;
/// only when something is there does a second one read the highest (both on the
/// `{gateway, seq}` index; the first never scans more than what lies above `from`, which
/// matters on servers that do not stop a sorted scan at the limit).
pub(super) async fn highest_seq(
    coll: &Collection<Document>,
    gateway: &str,
    from: u64,
) -> Result<Option<u64>, String> {
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let probe = coll
        .find_one(doc! {"gateway": gateway, "seq": {"$gte": from}})
        .projection(doc! {"_id": 0, "seq": 1});
    if query(probe).await?.is_none() {
        return Ok(None);
    }
    let top = coll
        .find_one(doc! {"gateway": gateway})
        .sort(doc! {"seq": -1})
        .projection(doc! {"_id": 0, "seq": 1});
    Ok(query(top).await?.and_then(|d| match d.get("seq") {
        Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
        Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
        Some(Bson::Double(f)) if *f >= 0.0 => Some(*f as u64),
        _ => None,
    }))
}

/// Run a `find_one` with the operation timeout; `Ok(None)` also when not authorized.
async fn query(
    op: impl std::future::IntoFuture<Output = mongodb::error::Result<Option<Document>>>,
) -> Result<Option<Document>, String> {
    match tokio::time::timeout(OP_TIMEOUT, op.into_future()).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) if unauthorized(&e) => {
            tracing::warn!(
                error = %describe(&e),
                "cannot read the highest stored seq (the server refused the query); relying \
                 on the journal's seq floor alone"
            );
            Ok(None)
        }
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!(
            "reading the highest seq timed out after {OP_TIMEOUT:?}"
        )),
    }
}

/// Lift the journal's floor above the highest seq `frames` holds for `gateway`.
pub(super) async fn lift(
    coll: &Collection<Document>,
    gateway: &str,
    journal: &Journal,
) -> Result<(), String> {
    let t0 = std::time::Instant::now();
    let top = highest_seq(coll, gateway, journal.next_seq()).await?;
    let took_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(
        highest = top,
        took_ms,
        "stored seqs at or above the next one read"
    );
    let Some(top) = top else {
        return Ok(());
    };
    if top > SEQ_SANE {
        tracing::error!(
            seq = top,
            "frames holds an implausible seq for this gateway; not lifting the seq floor to it \
             (collisions are still detected)"
        );
        return Ok(());
    }
    let j = journal.clone();
    match tokio::task::spawn_blocking(move || j.lift_floor(top)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(JournalError::Closed)) | Err(_) => Ok(()),
        // Not a MongoDB problem, but nothing may be inserted until the floor is safe.
        Ok(Err(e)) => Err(format!("cannot lift the journal's seq floor: {e}")),
    }
}

/// Compare the documents stored under the `_id`s of `sent` with what we sent (one query).
pub(super) async fn compare(
    coll: &Collection<Document>,
    sent: &[&Encoded],
) -> Result<Vec<Stored>, String> {
    let ids: Vec<&str> = sent
        .iter()
        .filter_map(|e| e.doc.get_str("_id").ok())
        .collect();
    let query = async {
        let mut cur = coll
            .find(doc! {"_id": {"$in": &ids}})
            .projection(doc! {"h": 1, "seq": 1, "gateway": 1, "ts": 1, "device": 1})
            .await?;
        let mut stored = HashMap::with_capacity(ids.len());
        while let Some(d) = cur.try_next().await? {
            if let Ok(id) = d.get_str("_id") {
                stored.insert(id.to_string(), d);
            }
        }
        Ok::<_, mongodb::error::Error>(stored)
    };
    let stored = match tokio::time::timeout(OP_TIMEOUT, query).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if unauthorized(&e) => {
            // Cannot tell: keep the pre-hash behaviour (a duplicate is "already there").
            tracing::warn!(error = %describe(&e),
                "cannot compare duplicate documents (the server refused the query); \
                 treating them as already delivered");
            return Ok(vec![Stored::Same; sent.len()]);
        }
        Ok(Err(e)) => return Err(describe(&e)),
        Err(_) => {
            return Err(format!(
                "comparing duplicates timed out after {OP_TIMEOUT:?}"
            ))
        }
    };
    Ok(sent
        .iter()
        .map(|e| {
            let id = e.doc.get_str("_id").unwrap_or_default();
            stored.get(id).map_or(Stored::Gone, |d| verdict(e, d))
        })
        .collect())
}

/// Same frame or another, by `h`, or for documents without `h` by seq/gateway/ts/device.
fn verdict(sent: &Encoded, stored: &Document) -> Stored {
    let d = &sent.doc;
    let same = match stored.get("h") {
        Some(h) => *h == Bson::Int64(sent.hash),
        None => {
            d.get_i64("seq").ok() == stored.get_i64("seq").ok()
                && d.get_str("gateway").ok() == stored.get_str("gateway").ok()
                && d.get_datetime("ts").ok() == stored.get_datetime("ts").ok().copied()
                && d.get_str("device").ok() == stored.get_str("device").ok()
        }
    };
    if same {
        Stored::Same
    } else {
        Stored::Other
    }
}

/// Journal the frames at `seqs` again (fresh seqs, same content) and wait until that is
/// durable; returns the new seqs. Frames no longer in the journal are logged.
pub(super) async fn rejournal(
    journal: &Journal,
    seqs: &[u64],
) -> Result<Option<RangeInclusive<u64>>, JournalError> {
    let (Some(&first), Some(&last)) = (seqs.iter().min(), seqs.iter().max()) else {
        return Ok(None);
    };
    let want: HashSet<u64> = seqs.iter().copied().collect();
    let j = journal.clone();
    let range = tokio::task::spawn_blocking(move || {
        let frames: Vec<_> = j
            .range(first, (last - first + 1) as usize)
            .into_iter()
            .filter(|f| want.contains(&f.seq))
            .collect();
        if frames.len() < want.len() {
            tracing::error!(
                missing = want.len() - frames.len(),
                "colliding frames no longer in the journal (evicted); they cannot be re-sent"
            );
        }
        if frames.is_empty() {
            return Ok(None);
        }
        j.append_many(frames).map(Some)
    })
    .await
    .map_err(|_| JournalError::Closed)??;
    if let Some(r) = &range {
        journal.wait_durable(*r.end()).await?;
    }
    Ok(range)
}

/// Log a batch's collisions loudly, rate-limited.
pub(super) fn report(
    limit: &mut LogLimit,
    gateway: &str,
    old: &[u64],
    new: Option<&RangeInclusive<u64>>,
) {
    if limit.admit("collision") {
        tracing::error!(
            gateway,
            collisions = old.len(),
            first_seq = old.first().copied(),
            new_first_seq = new.map(|r| *r.start()),
            new_last_seq = new.map(|r| *r.end()),
            "MongoDB already holds different frames under these frames' _ids: this gateway's \
             seqs were used before (a journal replaced without its seq floor file, or another \
             gateway with the same gateway.id); journaled them again under fresh seqs"
        );
    }
    if let Some(suppressed) = limit.summary_due() {
        tracing::error!(
            gateway,
            suppressed = suppressed.values().sum::<u64>(),
            "more seq collisions since the last report"
        );
    }
}
