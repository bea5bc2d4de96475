//! The frame loop: journal cursor → batches → `insert_many` → ack.
//!
//! Exactly-once in effect rests on three rules: a batch is retried (read again from the
//! cursor) until the server acknowledges it, the cursor moves only after that, and every
//! frame has a fixed `_id`, so a batch re-sent after a crash or a lost reply only meets
//! duplicate-key errors.
//! Only durable frames are sent, so MongoDB never holds a frame the journal could lose.
//! At start and after every failure, before anything is sent, the journal's seq floor is
//! lifted above what `frames` holds (`collision`) and the acknowledged tail is re-checked
//! (`recheck`): what a crashed server lost after acknowledging it is sent again.

use super::client::{describe, sleep_or_stop, until_ok, Backoff, OP_TIMEOUT};
use super::collision;
use super::deliver::{Attempt, Target};
use super::encode::{self, Encoded};
use super::health::Health;
use super::recheck::{self, Tail};
use super::MongoConfig;
use crate::journal::{Cursor, Journal};
use crate::source::events::LogLimit;
use bson::{doc, Document, RawDocumentBuf};
use mongodb::{Collection, Database, IndexModel};
use std::future::IntoFuture;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// While writes work but index creation does not, how often to try it again.
const INDEX_RETRY: Duration = Duration::from_secs(60);
/// After shutdown, how long journaling colliding frames again may still take.
const REJOURNAL_GRACE: Duration = Duration::from_secs(5);

/// Sync until shutdown or until the journal closes.
pub(super) async fn sync(
    cfg: &MongoConfig,
    gateway: &str,
    db: &Database,
    journal: &Journal,
    cursor: &Cursor,
    health: &Health,
    shutdown: &CancellationToken,
) {
    let coll = db.collection::<Document>("frames");
    let raw = coll.clone_with_type::<RawDocumentBuf>();
    let target = Target {
        raw: &raw,
        coll: &coll,
        journal,
    };
    let mut collision_log = LogLimit::new();
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
            // Nothing is inserted before new seqs are above what `frames` holds.
            let lifted = until_ok(health, &mut backoff, shutdown, || {
                collision::lift(&coll, gateway, journal)
            });
            if lifted.await.is_none() {
                return;
            }
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
        let outcome = match target.deliver(&batch.docs, shutdown).await {
            Attempt::Delivered(outcome) => {
                if outcome.duplicates > 0 {
                    tracing::debug!(
                        duplicates = outcome.duplicates,
                        first_seq = first,
                        last_seq = last,
                        "documents already in MongoDB (replayed batch)"
                    );
                }
                ahead = next;
                outcome
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
        };
        if !outcome.collisions.is_empty() {
            let collided = Collided {
                seqs: &outcome.collisions,
                gateway,
                target: &target,
                health,
            };
            if !collided
                .settle(&mut collision_log, &mut backoff, shutdown)
                .await
            {
                return;
            }
        }
        backoff.reset();
        record(cursor, last);
        acked = last;
        health.encoded(&outcome.specials);
        health.delivered(last, outcome.delivered);
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

/// Frames of a delivered batch whose `_id` holds a different frame.
struct Collided<'a> {
    seqs: &'a [u64],
    gateway: &'a str,
    target: &'a Target<'a>,
    health: &'a Health,
}

impl Collided<'_> {
    /// Lift the floor again (the other writer may have moved on) and journal the frames
    /// under fresh seqs, durably, before the cursor passes their old ones. False on
    /// shutdown or a closed journal (the cursor stays: they are compared again next time).
    async fn settle(
        &self,
        log: &mut LogLimit,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> bool {
        let (coll, journal) = (self.target.coll, self.target.journal);
        let lifted = until_ok(self.health, backoff, shutdown, || {
            collision::lift(coll, self.gateway, journal)
        });
        if lifted.await.is_none() {
            return false;
        }
        // Normally done within the journal's flush window. On shutdown it may still finish
        // (given up, it could leave the new copies durable and the cursor before the old
        // ones: sent twice next run); a disk that stopped taking writes gets a bound.
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(REJOURNAL_GRACE).await;
        };
        let moved = tokio::select! {
            _ = grace => return false,
            r = collision::rejournal(journal, self.seqs) => r,
        };
        match moved {
            Ok(moved) => {
                self.health.collided(self.seqs.len() as u64);
                collision::report(log, self.gateway, self.seqs, moved.as_ref());
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot journal colliding frames again");
                false
            }
        }
    }
}

/// Durable frames read from the journal, as documents.
struct Batch {
    /// First and last seq; `None` when no frame above the read position is durable.
    seqs: Option<(u64, u64)>,
    docs: Vec<Encoded>,
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
            docs: frames.iter().map(encode::encode).collect(),
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
