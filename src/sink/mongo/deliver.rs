//! One batch into `frames`: `insert_many` (`ordered = false`), then sort out what the
//! server said about each document.
//!
//! - inserted: delivered;
//! - duplicate key (11000): compared with the stored document (`collision::compare`): the
//!   same frame is delivered, another frame is a collision;
//! - refused for its content (a validator, a server older than 5.0 refusing `$` or `.` in
//!   a key, ...): sent again at once in the fallback form (`encode::fallback`), so one bad
//!   document never holds up a batch;
//! - anything else (network, write concern, a server refusing the fallback too): the batch
//!   failed and is retried from the cursor.

use super::client::{describe, write_errors, DUPLICATE_KEY, OP_TIMEOUT};
use super::collision::{self, Stored};
use super::encode::{self, Encoded, Special};
use crate::journal::Journal;
use bson::{Document, RawDocumentBuf};
use mongodb::Collection;
use std::future::IntoFuture;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// After shutdown, how long an in-flight `insert_many` may still finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Write-error codes that mean "this document, as it is" rather than "this server, now":
/// BadValue, InvalidBSON, DollarPrefixedFieldName, InvalidDBRef, EmptyFieldName,
/// DottedFieldName, DocumentValidationFailure, BSONObjectTooLarge.
const REFUSED_CONTENT: [i32; 8] = [2, 22, 52, 55, 56, 57, 121, 10334];

/// What the server holds of a batch after a successful attempt.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Documents that are now in `frames` (inserted, or this very frame already there).
    pub delivered: u64,
    /// Of those, how many were already there.
    pub duplicates: usize,
    /// Seqs whose `_id` holds a different frame: not delivered.
    pub collisions: Vec<u64>,
    /// Delivered frames not stored as plain documents.
    pub specials: Vec<Special>,
}

/// Result of one delivery attempt.
pub(super) enum Attempt {
    /// The server has every document of the batch, or a collision under its `_id`.
    Delivered(Outcome),
    /// Retry later.
    Failed(String),
    /// Shutdown while in flight; the batch stays unacknowledged and is re-sent next run.
    Abandoned,
}

/// How one `insert_many` went, per document.
enum Sent {
    All,
    /// Per-document errors as (index, code, message); the rest went in.
    Partly(Vec<(usize, i32, String)>),
    Failed(String),
    Abandoned,
}

/// Where the sink writes and reads.
pub(super) struct Target<'a> {
    /// `frames`, for inserts.
    pub raw: &'a Collection<RawDocumentBuf>,
    /// `frames`, for queries.
    pub coll: &'a Collection<Document>,
    /// The journal the documents came from (re-read for fallback forms).
    pub journal: &'a Journal,
}

impl Target<'_> {
    /// Deliver `docs` (see the module doc).
    pub(super) async fn deliver(&self, docs: &[Encoded], shutdown: &CancellationToken) -> Attempt {
        let errs = match insert(self.raw, docs, shutdown).await {
            Sent::All => {
                return Attempt::Delivered(Outcome {
                    delivered: docs.len() as u64,
                    specials: docs.iter().filter_map(|e| e.special).collect(),
                    ..Outcome::default()
                })
            }
            Sent::Partly(errs) => errs,
            Sent::Failed(e) => return Attempt::Failed(e),
            Sent::Abandoned => return Attempt::Abandoned,
        };
        let (dups, refused) = match split(errs, docs.len()) {
            Ok(s) => s,
            Err(e) => return Attempt::Failed(e),
        };
        let mut dup_docs: Vec<&Encoded> = dups.iter().map(|&i| &docs[i]).collect();
        let mut out = Outcome::default();
        // What was refused as-is goes again, in the fallback form.
        let fallbacks = match self.fallbacks(docs, &refused).await {
            Ok(f) => f,
            Err(e) => return Attempt::Failed(e),
        };
        if !fallbacks.is_empty() {
            match insert(self.raw, &fallbacks, shutdown).await {
                Sent::All => {}
                Sent::Partly(errs) => {
                    let (dups2, refused2) = match split(errs, fallbacks.len()) {
                        Ok(s) => s,
                        Err(e) => return Attempt::Failed(e),
                    };
                    if let Some((i, why)) = refused2.first() {
                        return Attempt::Failed(format!(
                            "MongoDB refuses frame seq {} even in the fallback form: {why}",
                            fallbacks[*i].seq
                        ));
                    }
                    dup_docs.extend(dups2.iter().map(|&i| &fallbacks[i]));
                }
                Sent::Failed(e) => return Attempt::Failed(e),
                Sent::Abandoned => return Attempt::Abandoned,
            }
        }
        // Duplicates: this very frame, or another one under the same `_id`?
        let stored = if dup_docs.is_empty() {
            Vec::new()
        } else {
            match collision::compare(self.coll, &dup_docs).await {
                Ok(s) => s,
                Err(e) => return Attempt::Failed(e),
            }
        };
        if let Some(gone) = stored.iter().position(|s| *s == Stored::Gone) {
            return Attempt::Failed(format!(
                "frame seq {} met a duplicate key but its document is gone; sending again",
                dup_docs[gone].seq
            ));
        }
        for (e, s) in dup_docs.iter().zip(&stored) {
            if *s == Stored::Other {
                out.collisions.push(e.seq);
            } else {
                out.duplicates += 1;
            }
        }
        out.collisions.sort_unstable();
        let refused_idx: Vec<usize> = refused.iter().map(|r| r.0).collect();
        let collided = |seq: u64| out.collisions.binary_search(&seq).is_ok();
        out.specials = docs
            .iter()
            .enumerate()
            .filter(|(i, e)| !refused_idx.contains(i) && !collided(e.seq))
            .filter_map(|(_, e)| e.special)
            .chain(
                fallbacks
                    .iter()
                    .filter(|e| !collided(e.seq))
                    .filter_map(|e| e.special),
            )
            .collect();
        out.delivered = (docs.len() - out.collisions.len()) as u64;
        Attempt::Delivered(out)
    }

    /// The fallback form of the refused documents, from the journal's frames.
    async fn fallbacks(
        &self,
        docs: &[Encoded],
        refused: &[(usize, String)],
    ) -> Result<Vec<Encoded>, String> {
        if refused.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<(u64, String)> = refused
            .iter()
            .map(|(i, why)| (docs[*i].seq, why.clone()))
            .collect();
        let j = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            wanted
                .iter()
                .map(|(seq, why)| {
                    j.get(*seq)
                        .map(|f| encode::fallback(&f, why))
                        .ok_or_else(|| {
                            format!("frame seq {seq} was refused and is no longer in the journal")
                        })
                })
                .collect()
        })
        .await
        .map_err(|e| format!("fallback encoding task: {e}"))?
    }
}

/// Duplicate indexes and refused (index, reason) of a batch of `n`; `Err` when any error
/// is neither (or names no document of the batch).
#[allow(clippy::type_complexity)]
fn split(
    errs: Vec<(usize, i32, String)>,
    n: usize,
) -> Result<(Vec<usize>, Vec<(usize, String)>), String> {
    let (mut dups, mut refused) = (Vec::new(), Vec::new());
    for (i, code, msg) in errs {
        if i >= n {
            return Err(format!(
                "insert_many write error {code} for document {i} of {n}: {msg}"
            ));
        }
        match code {
            DUPLICATE_KEY => dups.push(i),
            c if REFUSED_CONTENT.contains(&c) => refused.push((i, format!("{msg} ({c})"))),
            c => return Err(format!("insert_many write error {c}: {msg}")),
        }
    }
    Ok((dups, refused))
}

/// One `insert_many`; in-flight writes get a short grace after shutdown.
async fn insert(
    coll: &Collection<RawDocumentBuf>,
    docs: &[Encoded],
    shutdown: &CancellationToken,
) -> Sent {
    let op = tokio::time::timeout(
        OP_TIMEOUT,
        coll.insert_many(docs.iter().map(|e| &e.doc))
            .ordered(false)
            .into_future(),
    );
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = op => match r {
            Ok(Ok(_)) => Sent::All,
            Ok(Err(e)) => match write_errors(&e) {
                Some(errs) => Sent::Partly(
                    errs.iter().map(|w| (w.index, w.code, w.message.clone())).collect(),
                ),
                None => Sent::Failed(describe(&e)),
            },
            Err(_) => Sent::Failed(format!("insert_many timed out after {OP_TIMEOUT:?}")),
        },
        _ = grace => Sent::Abandoned,
    }
}
