//! The frame loop: journal cursor → batches → `insert_many` → ack.
//!
//! Exactly-once in effect rests on three rules: a batch is retried (read again from the
//! cursor) until the server acknowledges it, the cursor moves only after that, and every
//! frame has a fixed `_id`, so a batch re-sent after a crash or a lost reply only meets
//! duplicate-key errors.
//! Only durable frames are sent, so MongoDB never holds a frame the journal could lose.
//! At start and after every failure the acknowledged tail is re-checked first (`recheck`):
//! what a crashed server lost after acknowledging it is sent again.

use super::client::{describe, only_duplicates, sleep_or_stop, Backoff, OP_TIMEOUT};
use super::health::Health;
use super::recheck::{self, Tail};
use super::MongoConfig;
use crate::frame::Frame;
use crate::journal::{Cursor, Journal};
use bson::{doc, Document};
use mongodb::{Collection, Database, IndexModel};
use std::future::IntoFuture;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// After shutdown, how long an in-flight `insert_many` may still finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// While writes work but index creation does not, how often to try it again.
const INDEX_RETRY: Duration = Duration::from_secs(60);

/// Result of one delivery attempt.
enum Attempt {
    /// The server has every document of the batch (`duplicates` were already there).
    Delivered { duplicates: usize },
    /// Retry later.
    Failed(String),
    /// Shutdown while in flight; the batch stays unacknowledged and is re-sent next run.
    Abandoned,
}

/// Sync until shutdown or until the journal closes.
pub(super) async fn sync(
    cfg: &MongoConfig,
    db: &Database,
    journal: &Journal,
    cursor: &Cursor,
    health: &Health,
    shutdown: &CancellationToken,
) {
    let coll = db.collection::<Document>("frames");
    let batch_max = cfg.batch_max.0.clamp(1, 100_000) as usize;
    let batch_wait = Duration::from_millis(cfg.batch_ms.0);
    let mut backoff = Backoff::new(cfg.backoff_max.0);
    let mut acked = cursor.acked();
    let mut indexes_ok = ensure_indexes(&coll, health, shutdown).await;
    let mut index_retry = Instant::now() + INDEX_RETRY;
    let window = recheck::window(batch_max);
    // At start and after every failure, before anything else is sent.
    let mut recheck_due = true;
    // The batch after the one in flight, being read.
    let mut ahead: Option<tokio::task::JoinHandle<Batch>> = None;
    loop {
        if recheck_due {
            let tail = Tail {
                coll: &coll,
                journal,
                cursor,
                health,
            };
            let Some(from) = tail.recheck(acked, window, &mut backoff, shutdown).await else {
                return;
            };
            acked = from;
            recheck_due = false;
        }
        let batch = match ahead.take() {
            Some(read) => match read.await {
                Ok(b) => b,
                Err(_) => return,
            },
            None => match next_batch(journal, acked, batch_max, batch_wait, shutdown).await {
                Some(b) => b,
                None => return,
            },
        };
        let Some((first, last)) = batch.seqs else {
            // Seqs up to `durable` exist but no frame above `acked` does: a seq-lease gap
            // after a crash, or evicted frames. Step over them so lag reads true.
            let durable = batch.durable;
            if durable > acked {
                record(cursor, durable);
                acked = durable;
                health.skipped_to(durable);
            }
            continue;
        };
        // Catching up (a full batch already durable behind this one): read and encode the
        // next batch while this one is in flight.
        let next = (journal.durable_seq() >= last + batch_max as u64).then(|| {
            let j = journal.clone();
            tokio::task::spawn_blocking(move || Batch::read(&j, last, batch_max))
        });
        match insert(&coll, &batch.docs, shutdown).await {
            Attempt::Delivered { duplicates } => {
                if duplicates > 0 {
                    tracing::debug!(
                        duplicates,
                        first_seq = first,
                        last_seq = last,
                        "documents already in MongoDB (replayed batch)"
                    );
                }
                ahead = next;
            }
            Attempt::Abandoned => return,
            Attempt::Failed(e) => {
                // The same frames are read again after the re-check.
                health.failed(&e);
                recheck_due = true;
                if !sleep_or_stop(backoff.delay(), shutdown).await {
                    return;
                }
                continue;
            }
        }
        backoff.reset();
        record(cursor, last);
        acked = last;
        health.delivered(last, batch.docs.len() as u64);
        if !indexes_ok && Instant::now() >= index_retry {
            index_retry = Instant::now() + INDEX_RETRY;
            indexes_ok = ensure_indexes(&coll, health, shutdown).await;
        }
    }
}

/// Move the cursor to `seq`. A failure is logged, not fatal: the cursor only decides what
/// is sent again after a restart, and a re-sent frame meets a duplicate-key error.
pub(super) fn record(cursor: &Cursor, seq: u64) {
    if let Err(e) = cursor.ack(seq) {
        tracing::error!(error = %e, seq, "cannot record the mongo cursor");
    }
}

/// Durable frames read from the journal, as documents.
struct Batch {
    /// First and last seq; `None` when no frame above the read position is durable.
    seqs: Option<(u64, u64)>,
    docs: Vec<Document>,
    /// The durable seq the frames were read under.
    durable: u64,
}

impl Batch {
    /// Up to `max` durable frames after `after` (blocking: a journal read).
    fn read(journal: &Journal, after: u64, max: usize) -> Batch {
        let durable = journal.durable_seq();
        let mut frames = journal.range(after + 1, max);
        frames.retain(|f| f.seq <= durable);
        Batch {
            seqs: frames
                .first()
                .zip(frames.last())
                .map(|(a, b)| (a.seq, b.seq)),
            docs: frames.iter().map(Frame::to_document).collect(),
            durable,
        }
    }
}

/// Wait for durable frames after `acked`, up to `max` of them: at once if a full batch is
/// waiting, else up to `wait` for one to fill. `None` on shutdown or a closed journal.
async fn next_batch(
    journal: &Journal,
    acked: u64,
    max: usize,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Option<Batch> {
    tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = journal.wait_durable(acked + 1) => { r.ok()?; }
    }
    let full = acked + max as u64;
    if journal.durable_seq() < full {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::timeout(wait, journal.wait_durable(full)) => {}
        }
    }
    let j = journal.clone();
    tokio::task::spawn_blocking(move || Batch::read(&j, acked, max))
        .await
        .ok()
}

/// One `insert_many` of the batch; in-flight writes get a short grace after shutdown.
async fn insert(
    coll: &Collection<Document>,
    docs: &[Document],
    shutdown: &CancellationToken,
) -> Attempt {
    let op = tokio::time::timeout(
        OP_TIMEOUT,
        coll.insert_many(docs).ordered(false).into_future(),
    );
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = op => match r {
            Ok(Ok(_)) => Attempt::Delivered { duplicates: 0 },
            Ok(Err(e)) => match only_duplicates(&e) {
                Some(duplicates) => Attempt::Delivered { duplicates },
                None => Attempt::Failed(describe(&e)),
            },
            Err(_) => Attempt::Failed(format!("insert_many timed out after {OP_TIMEOUT:?}")),
        },
        _ = grace => Attempt::Abandoned,
    }
}

/// The query indexes of `frames`: by device and by vehicle, newest first, and by seq.
pub(crate) fn index_keys() -> [Document; 3] {
    [
        doc! {"device": 1, "ts": -1},
        doc! {"vehicle": 1, "ts": -1},
        doc! {"gateway": 1, "seq": 1},
    ]
}

/// Create the query indexes ([`index_keys`]); true when the server confirmed them. A failure
/// while writes work is recorded (and logged once per retry period), not an outage.
async fn ensure_indexes(
    coll: &Collection<Document>,
    health: &Health,
    shutdown: &CancellationToken,
) -> bool {
    let models = index_keys()
        .into_iter()
        .map(|keys| IndexModel::builder().keys(keys).build());
    let op = tokio::time::timeout(OP_TIMEOUT, coll.create_indexes(models).into_future());
    let r = tokio::select! {
        _ = shutdown.cancelled() => return false,
        r = op => r,
    };
    match r {
        Ok(Ok(_)) => {
            health.reachable();
            true
        }
        Ok(Err(e)) => {
            index_failed(health, &format!("cannot create indexes: {}", describe(&e)));
            false
        }
        Err(_) => {
            index_failed(health, "creating indexes timed out");
            false
        }
    }
}

fn index_failed(health: &Health, error: &str) {
    if health.is_online() {
        health.note_error(error);
        tracing::warn!(error, "mongo indexes not created; will retry");
    } else {
        health.failed(error);
    }
}
