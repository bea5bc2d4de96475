//! On every (re)connection: is the tail of what the server acknowledged still there?
//!
//! A server can lose writes it has acknowledged: one without a journal or with `j` ignored
//! that is killed, a replica set that rolls back a primary's last writes after a failover.
//! The cursor is already past those frames, so without this check they would never reach
//! MongoDB. Before sending anything after start or after a failure, the sink compares the
//! last acknowledged window of the journal with `frames` (one indexed query on
//! `{gateway, seq}`) and, if frames are missing, moves its cursor back to re-send them —
//! what is still there only meets duplicate-key errors.

use super::client::{describe, unauthorized, until_ok, Backoff, OP_TIMEOUT};
use super::health::Health;
use crate::frame::Frame;
use crate::journal::{Cursor, Journal};
use bson::{doc, Document};
use futures_util::TryStreamExt;
use mongodb::Collection;
use std::collections::HashSet;
use tokio_util::sync::CancellationToken;

/// Frames checked: this many batches back from the cursor…
const WINDOW_BATCHES: u64 = 20;
/// …but never more than this many frames.
const WINDOW_MAX: u64 = 50_000;

/// What a re-check found.
#[derive(Debug, PartialEq, Eq)]
enum Recheck {
    /// Every journaled frame of the window is in `frames`.
    Complete,
    /// `count` frames are missing, the first at seq `first`.
    Missing { first: u64, count: usize },
    /// The server refused the query as not authorized (a user allowed to insert but not to
    /// read): nothing to re-check with; the reason.
    Refused(String),
}

/// How many frames back from the cursor to check for `batch_max`-frame batches.
pub(super) fn window(batch_max: usize) -> u64 {
    (batch_max as u64)
        .saturating_mul(WINDOW_BATCHES)
        .min(WINDOW_MAX)
}

/// Compare the journaled seqs `seqs` (ascending, all ≤ the cursor) of `gateways` with the
/// documents in `frames`. `Err` when the server could not be reached (retry later).
async fn check(
    coll: &Collection<Document>,
    gateways: &[&str],
    seqs: &[u64],
) -> Result<Recheck, String> {
    let (Some(&from), Some(&to)) = (seqs.first(), seqs.last()) else {
        return Ok(Recheck::Complete);
    };
    let query = async {
        let filter = doc! {
            "gateway": {"$in": gateways},
            "seq": {"$gte": from as i64, "$lte": to as i64},
        };
        let mut cur = coll
            .find(filter)
            .projection(doc! {"_id": 0, "seq": 1})
            .await?;
        let mut have = HashSet::with_capacity(seqs.len());
        while let Some(d) = cur.try_next().await? {
            if let Ok(s) = d.get_i64("seq") {
                have.insert(s as u64);
            }
        }
        Ok::<_, mongodb::error::Error>(have)
    };
    let have = match tokio::time::timeout(OP_TIMEOUT, query).await {
        Ok(Ok(have)) => have,
        Ok(Err(e)) if unauthorized(&e) => return Ok(Recheck::Refused(describe(&e))),
        Ok(Err(e)) => return Err(describe(&e)),
        Err(_) => return Err(format!("re-checking frames timed out after {OP_TIMEOUT:?}")),
    };
    let mut missing = seqs.iter().filter(|s| !have.contains(s));
    Ok(match missing.next() {
        None => Recheck::Complete,
        Some(&first) => Recheck::Missing {
            first,
            count: 1 + missing.count(),
        },
    })
}

/// What re-checking the acknowledged tail needs.
pub(super) struct Tail<'a> {
    pub(super) coll: &'a Collection<Document>,
    pub(super) journal: &'a Journal,
    pub(super) cursor: &'a Cursor,
    pub(super) health: &'a Health,
}

impl Tail<'_> {
    /// Re-send what the server acknowledged and then lost (see the module doc): returns
    /// the seq to continue after — `acked`, or one before the first lost frame; `None` on
    /// shutdown. Retries with backoff while the server is unreachable.
    pub(super) async fn recheck(
        &self,
        acked: u64,
        window: u64,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<u64> {
        if acked == 0 {
            return Some(0);
        }
        let from = acked.saturating_sub(window) + 1;
        let j = self.journal.clone();
        let frames =
            tokio::task::spawn_blocking(move || j.range(from, (acked + 1 - from) as usize))
                .await
                .ok()?;
        let frames: Vec<&Frame> = frames.iter().filter(|f| f.seq <= acked).collect();
        let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
        // The gateway id is per frame: the journal may predate a change of `gateway.id`.
        let mut gateways: Vec<&str> = frames.iter().map(|f| f.gateway.as_str()).collect();
        gateways.sort_unstable();
        gateways.dedup();
        let found = until_ok(self.health, backoff, shutdown, || {
            check(self.coll, &gateways, &seqs)
        })
        .await?;
        Some(match found {
            Recheck::Complete => acked,
            Recheck::Missing { first, count } => {
                tracing::warn!(
                    first_seq = first,
                    missing = count,
                    acked_seq = acked,
                    "MongoDB no longer has frames it acknowledged (a server crash or \
                         rollback); sending them again"
                );
                let to = first - 1;
                super::frames::record(self.cursor, to);
                self.health.rewound_to(to, count as u64);
                to
            }
            Recheck::Refused(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot re-check acknowledged frames (the server refused the query); \
                     continuing without"
                );
                acked
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_twenty_batches_capped() {
        assert_eq!(window(500), 10_000);
        assert_eq!(window(1000), 20_000);
        assert_eq!(window(100_000), WINDOW_MAX);
        assert_eq!(window(usize::MAX), WINDOW_MAX);
    }
}
