//! Ack-after-journal: QoS1 publishes are acknowledged to the broker only once the journal
//! flush that covers their frames has completed.
//!
//! The event loop task appends frames and hands this task one [`AckBatch`] per append, in
//! arrival order; this task waits for durability and sends the PUBACKs in that same order,
//! so the event loop itself never blocks on an fsync.
//!
//! Packet ids are only meaningful on the connection that delivered them: after a reconnect
//! the broker redelivers whatever we did not ack, and a stale PUBACK could acknowledge a
//! *different* message that reuses the id. Every batch therefore carries the connection
//! [`Generation`] it arrived on; acks for an older generation are dropped (the broker's
//! redelivery is journaled again, a duplicate rather than a loss).

use crate::journal::Journal;
use rumqttc::{AsyncClient, Publish, QoS};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most batches merged behind one durability wait.
const MERGE_MAX: usize = 256;

/// PUBACKs owed for one append.
#[derive(Debug)]
pub struct AckBatch {
    /// Connection generation the publishes arrived on.
    pub generation: u64,
    /// Seq that must be durable before acking (0: nothing was journaled).
    pub durable_seq: u64,
    /// Packet ids to acknowledge, in arrival order.
    pub pkids: Vec<u16>,
}

/// The current connection generation; bumped by the event loop on every disconnect.
#[derive(Clone, Default)]
pub struct Generation(Arc<Mutex<u64>>);

impl Generation {
    /// Lock the counter (acks are queued while holding it, see [`Generation::bump`]).
    pub fn lock(&self) -> MutexGuard<'_, u64> {
        crate::sync::lock(&self.0)
    }

    /// Start a new generation and run `purge` (which drops queued acks) under the same
    /// lock, so no ack of the old generation can slip in between.
    pub fn bump(&self, purge: impl FnOnce()) -> u64 {
        let mut g = self.lock();
        *g += 1;
        purge();
        *g
    }
}

/// A PUBACK request for `pkid` in the form `AsyncClient::try_ack` takes.
fn ack_packet(pkid: u16) -> Publish {
    let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
    p.pkid = pkid;
    p
}

/// Queue acks for `pkids` while `generation` is current. Returns how many were queued
/// before the request channel filled up (the caller retries the rest), or `None` when
/// the generation is stale (the rest must be dropped).
fn queue_acks(
    client: &AsyncClient,
    generation: &Generation,
    batch_gen: u64,
    pkids: &[u16],
) -> Option<usize> {
    let g = generation.lock();
    if *g != batch_gen {
        return None;
    }
    for (i, pkid) in pkids.iter().enumerate() {
        if client.try_ack(&ack_packet(*pkid)).is_err() {
            return Some(i);
        }
    }
    Some(pkids.len())
}

/// Counts reported when the task ends (for the log line).
#[derive(Debug, Default)]
pub struct AckTotals {
    /// PUBACKs queued to the event loop.
    pub acked: u64,
    /// Acks dropped because their connection was gone (the broker redelivers them).
    pub stale: u64,
}

/// Run until the batch channel closes or `stop` fires.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<AckBatch>,
    journal: Journal,
    client: AsyncClient,
    generation: Generation,
    stop: CancellationToken,
) -> AckTotals {
    let mut totals = AckTotals::default();
    let mut batches: Vec<AckBatch> = Vec::new();
    loop {
        batches.clear();
        let first = tokio::select! {
            b = rx.recv() => b,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        batches.push(first);
        while batches.len() < MERGE_MAX {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        let wait = batches.iter().map(|b| b.durable_seq).max().unwrap_or(0);
        if wait > 0 {
            let durable = tokio::select! {
                d = journal.wait_durable(wait) => d.is_ok(),
                _ = stop.cancelled() => false,
            };
            if !durable {
                break;
            }
        }
        for b in &batches {
            let mut rest: &[u16] = &b.pkids;
            while !rest.is_empty() {
                match queue_acks(&client, &generation, b.generation, rest) {
                    None => {
                        totals.stale += rest.len() as u64;
                        break;
                    }
                    Some(n) => {
                        totals.acked += n as u64;
                        rest = &rest[n..];
                    }
                }
                if !rest.is_empty() {
                    // The request channel is full: the event loop is busy writing.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                        _ = stop.cancelled() => return totals,
                    }
                }
            }
        }
    }
    totals
}
