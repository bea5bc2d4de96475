//! Journal counters: kept in atomics by the writer and flusher, read by status and metrics.

use super::chunk;
use super::Quarantine;
use crate::frame::key_seq;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often an ongoing eviction is logged (the counter always counts).
const EVICT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Live counters, updated lock-free.
#[derive(Default)]
pub(super) struct Counters {
    pub first_seq: AtomicU64,
    pub last_seq: AtomicU64,
    pub durable_seq: AtomicU64,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub evicted: AtomicU64,
    pub pruned: AtomicU64,
    pub decode_errors: AtomicU64,
    pub flushes: AtomicU64,
    /// Unix ms of the flusher's last loop turn (the watchdog's view of the writer).
    pub heartbeat_ms: AtomicU64,
    pub appended_total: AtomicU64,
    /// Appends refused because the write queue was full.
    pub full: AtomicU64,
    /// Frames and bytes in the write queue (kept by its lock holders, read lock-free).
    pending_frames: AtomicU64,
    pending_bytes: AtomicU64,
    /// Most bytes the write queue has held.
    pending_peak: AtomicU64,
    /// The seq floor file's value.
    pub seq_floor: AtomicU64,
    flush_failing: AtomicBool,
    evict_log: Mutex<Option<(Instant, u64)>>,
}

/// A point-in-time view of the journal, as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JournalStats {
    /// Oldest seq still stored (0 when empty).
    pub first_seq: u64,
    /// Highest seq issued.
    pub last_seq: u64,
    /// Highest seq known to be on disk.
    pub durable_seq: u64,
    /// Frames stored.
    pub frames: u64,
    /// Logical bytes stored (keys + encoded frames).
    pub bytes: u64,
    /// Bytes sled occupies on disk.
    pub disk_bytes: u64,
    /// Frames evicted by the byte cap since the journal was created.
    pub evicted: u64,
    /// Frames pruned by retention in this run.
    pub pruned: u64,
    /// Records that failed to decode in this run.
    pub decode_errors: u64,
    /// Group commits in this run.
    pub flushes: u64,
    /// Frames appended in this run.
    pub appended: u64,
    /// Frames appended but not yet written.
    pub pending_frames: u64,
    /// Bytes those frames count against `pending_max_bytes`.
    pub pending_bytes: u64,
    /// The write queue's bound (`journal.pending_max_bytes`).
    pub pending_max_bytes: u64,
    /// Most bytes the write queue held in this run.
    pub pending_peak_bytes: u64,
    /// Appends refused in this run because the write queue was full (the source waited
    /// or, for serial ports, dropped them as `overrun`).
    pub full: u64,
    /// Last acknowledged seq per registered sink cursor.
    pub cursors: BTreeMap<String, u64>,
    /// Set when the journal found at start could not be opened and was moved aside.
    pub quarantine: Option<Quarantine>,
    /// The seq floor file's value: at or above every seq issued (see `journal::floor`).
    pub seq_floor: u64,
    /// Writes have been failing for a while (a full disk, ...); frames wait in memory.
    pub write_failing: bool,
}

impl Counters {
    /// Count what the frames tree holds (run once at open; reads chunk headers only).
    pub fn scan(&self, frames: &sled::Tree) -> Result<(), sled::Error> {
        let (mut n, mut bytes) = (0u64, 0u64);
        // The last chunk is taken on the way: sled's `Tree::last` iterates backwards, which
        // costs the binary 1 MiB (see `chunk_start` in journal.rs).
        let mut last_chunk = None;
        for item in frames.iter() {
            let (k, v) = item?;
            n += chunk::header(&v).map_or(0, |h| u64::from(h.count));
            bytes += (k.len() + v.len()) as u64;
            last_chunk = Some((k, v));
        }
        self.frames.store(n, Relaxed);
        self.bytes.store(bytes, Relaxed);
        let last = last_chunk
            .and_then(|(k, v)| Some(key_seq(&k)? + u64::from(chunk::header(&v)?.count) - 1))
            .unwrap_or(0);
        self.last_seq.store(last, Relaxed);
        self.refresh_first(frames)
    }

    /// Re-read the oldest stored seq.
    pub fn refresh_first(&self, frames: &sled::Tree) -> Result<(), sled::Error> {
        let first = frames.first()?.and_then(|(k, _)| key_seq(&k)).unwrap_or(0);
        self.first_seq.store(first, Relaxed);
        Ok(())
    }

    /// Frames `first..=last` were appended (queued for the next commit).
    pub fn appended(&self, first: u64, last: u64) {
        let n = last - first + 1;
        let _ = self.first_seq.compare_exchange(0, first, Relaxed, Relaxed);
        self.frames.fetch_add(n, Relaxed);
        self.appended_total.fetch_add(n, Relaxed);
        self.last_seq.store(last, SeqCst);
    }

    /// The write queue now holds `frames` frames counting `bytes` (called under its lock).
    pub fn queued(&self, frames: usize, bytes: u64) {
        self.pending_frames.store(frames as u64, Relaxed);
        self.pending_bytes.store(bytes, Relaxed);
        self.pending_peak.fetch_max(bytes, Relaxed);
    }

    /// The flusher is alive.
    pub fn beat(&self) {
        self.heartbeat_ms
            .store(crate::frame::now_ms().max(0) as u64, Relaxed);
    }

    /// A commit wrote `bytes` of chunks.
    pub fn stored(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Relaxed);
    }

    /// Whether commits have been failing for a while.
    pub fn flush_failing(&self) -> bool {
        self.flush_failing.load(Relaxed)
    }

    /// Record whether commits are failing.
    pub fn set_flush_failing(&self, v: bool) {
        self.flush_failing.store(v, Relaxed);
    }

    /// A group commit covering every seq ≤ `covered` finished.
    pub fn flushed(&self, covered: u64) {
        self.durable_seq.fetch_max(covered, SeqCst);
        self.flushes.fetch_add(1, Relaxed);
    }

    fn removed(&self, n: u64, bytes: u64) {
        self.frames
            .fetch_sub(n.min(self.frames.load(Relaxed)), Relaxed);
        self.bytes
            .fetch_sub(bytes.min(self.bytes.load(Relaxed)), Relaxed);
    }

    /// `n` frames were evicted by the byte cap; logged at most every 10 s.
    pub fn evict(&self, n: u64, bytes: u64, cap: u64) {
        self.removed(n, bytes);
        let total = self.evicted.fetch_add(n, Relaxed) + n;
        let mut log = crate::sync::lock(&self.evict_log);
        let due = log.is_none_or(|(at, _)| at.elapsed() >= EVICT_LOG_EVERY);
        if due {
            let since = total - log.map_or(0, |(_, t)| t);
            tracing::warn!(
                evicted = since,
                evicted_total = total,
                cap_bytes = cap,
                "journal over its byte cap: evicting the oldest frames (unsynced ones included)"
            );
            *log = Some((Instant::now(), total));
        }
    }

    /// `n` acknowledged frames were pruned by retention.
    pub fn prune(&self, n: u64, bytes: u64) {
        self.removed(n, bytes);
        self.pruned.fetch_add(n, Relaxed);
    }

    /// A stored record at `seq` could not be decoded.
    pub fn record_decode_error(&self, seq: u64, error: &str) {
        let n = self.decode_errors.fetch_add(1, Relaxed);
        if n < 10 || n.is_power_of_two() {
            tracing::error!(
                seq,
                error,
                errors = n + 1,
                "undecodable journal record skipped"
            );
        }
    }

    /// Snapshot for status.
    pub fn snapshot(
        &self,
        disk_bytes: u64,
        cursors: BTreeMap<String, u64>,
        quarantine: Option<Quarantine>,
    ) -> JournalStats {
        JournalStats {
            first_seq: self.first_seq.load(Relaxed),
            last_seq: self.last_seq.load(Relaxed),
            durable_seq: self.durable_seq.load(Relaxed),
            frames: self.frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            disk_bytes,
            evicted: self.evicted.load(Relaxed),
            pruned: self.pruned.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            appended: self.appended_total.load(Relaxed),
            pending_frames: self.pending_frames.load(Relaxed),
            pending_bytes: self.pending_bytes.load(Relaxed),
            pending_max_bytes: 0,
            pending_peak_bytes: self.pending_peak.load(Relaxed),
            full: self.full.load(Relaxed),
            cursors,
            quarantine,
            seq_floor: self.seq_floor.load(Relaxed),
            write_failing: self.flush_failing(),
        }
    }
}
