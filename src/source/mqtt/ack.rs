//! Ack-after-journal: QoS1 publishes are acknowledged to the broker only once the journal
//! flush that covers their frames has completed.
//!
//! The event loop task appends frames and hands this task one [`AckBatch`] per append, in
//! arrival order; this task waits for durability and sends the PUBACKs in that same order,
//! so the event loop itself never blocks on an fsync.
//!
//! One group commit clears hundreds of acks at once. rumqttc writes and flushes every
//! request on its own, so sending each as a request would put hundreds of 4-byte segments
//! on the wire and cost the broker a wake-up each (the largest part of the relay's
//! 10k msg/s latency tail, README). Instead the first ack of a cleared run goes through
//! rumqttc's request channel, which wakes the event loop, and the rest wait in
//! [`Generation`]'s ready queue; when rumqttc reports that first PUBACK sent, the event loop
//! writes the rest straight after it with one flush ([`Generation::acks_after`]).
//!
//! Packet ids are only meaningful on the connection that delivered them: after a reconnect
//! the broker redelivers whatever we did not ack, and a stale PUBACK could acknowledge a
//! *different* message that reuses the id. Every batch therefore carries the connection
//! [`Generation`] it arrived on; acks for an older generation are dropped (the broker's
//! redelivery is journaled again, a duplicate rather than a loss).
//!
//! [`Generation::owe`] counts the PUBACKs owed (queued here, not yet handed to rumqttc), so
//! the event loop can ask for a commit at once when they fill the broker's in-flight window.

use crate::journal::Journal;
use rumqttc::{AsyncClient, Publish, QoS};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
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

/// Acks cleared by one durability wait: `head` is sent as a rumqttc request, `rest` is
/// written by the event loop once rumqttc reports `head` sent.
#[derive(Debug)]
struct Ready {
    head: u16,
    rest: Vec<u16>,
}

#[derive(Default)]
struct Shared {
    generation: Mutex<u64>,
    ready: Mutex<VecDeque<Ready>>,
    owed: AtomicUsize,
}

/// The current connection generation (bumped by the event loop on every disconnect) and
/// the acks cleared for it.
#[derive(Clone, Default)]
pub struct Generation(Arc<Shared>);

impl Generation {
    /// Lock the counter (acks are queued while holding it, see [`Generation::bump`]).
    pub fn lock(&self) -> MutexGuard<'_, u64> {
        crate::sync::lock(&self.0.generation)
    }

    /// Start a new generation and run `purge` (which drops queued acks) under the same
    /// lock, so no ack of the old generation can slip in between.
    pub fn bump(&self, purge: impl FnOnce()) -> u64 {
        let mut g = self.lock();
        *g += 1;
        crate::sync::lock(&self.0.ready).clear();
        purge();
        *g
    }

    /// `n` more PUBACKs are owed (handed to the ack task); returns how many are owed now.
    pub fn owe(&self, n: usize) -> usize {
        self.0.owed.fetch_add(n, Relaxed) + n
    }

    /// `n` owed PUBACKs were queued to rumqttc or dropped as stale.
    fn settled(&self, n: usize) {
        let _ = self
            .0
            .owed
            .fetch_update(Relaxed, Relaxed, |o| Some(o.saturating_sub(n)));
    }

    /// rumqttc has sent the PUBACK for `pkid`: the acks queued behind it, to be written
    /// now, in this order.
    pub fn acks_after(&self, pkid: u16) -> Option<Vec<u16>> {
        let mut ready = crate::sync::lock(&self.0.ready);
        match ready.front() {
            Some(r) if r.head == pkid => ready.pop_front().map(|r| r.rest),
            _ => None,
        }
    }
}

/// A PUBACK request for `pkid` in the form `AsyncClient::try_ack` takes.
fn ack_packet(pkid: u16) -> Publish {
    let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
    p.pkid = pkid;
    p
}

/// Hand `pkids` (durable, in arrival order) to the event loop while `generation` is
/// current: the first as a PUBACK request, the rest queued behind it. `None` when the
/// generation is stale (drop them), `Some(false)` when rumqttc's request channel is full
/// (nothing was queued; retry).
fn queue_acks(
    client: &AsyncClient,
    generation: &Generation,
    batch_gen: u64,
    pkids: &[u16],
) -> Option<bool> {
    let g = generation.lock();
    if *g != batch_gen {
        return None;
    }
    let Some((&head, rest)) = pkids.split_first() else {
        return Some(true);
    };
    // Queued before the request exists, so the event loop finds it when `head` goes out.
    let mut ready = crate::sync::lock(&generation.0.ready);
    ready.push_back(Ready {
        head,
        rest: rest.to_vec(),
    });
    if client.try_ack(&ack_packet(head)).is_err() {
        ready.pop_back();
        return Some(false);
    }
    Some(true)
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
        for run in batches.chunk_by(|a, b| a.generation == b.generation) {
            let pkids: Vec<u16> = run.iter().flat_map(|b| b.pkids.iter().copied()).collect();
            loop {
                match queue_acks(&client, &generation, run[0].generation, &pkids) {
                    None => {
                        totals.stale += pkids.len() as u64;
                        generation.settled(pkids.len());
                    }
                    Some(true) => {
                        totals.acked += pkids.len() as u64;
                        generation.settled(pkids.len());
                    }
                    Some(false) => {
                        // The request channel is full: the event loop is busy writing.
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(1)) => continue,
                            _ = stop.cancelled() => return totals,
                        }
                    }
                }
                break;
            }
        }
    }
    totals
}
