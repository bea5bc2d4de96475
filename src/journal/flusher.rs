//! The flusher thread: group commit, seq lease extension, eviction and retention.
//!
//! One commit per `flush_ms` window gathers small appends into one fsync; a commit is
//! taken at once when asked (`commit_now`: a source whose sender waits for acks, or a
//! write queue half full), because then waiting only slows the senders down.

use super::chunk::{self, ChunkHeader, CHUNK_MAX_FRAMES, CHUNK_MAX_RAW};
use super::{lock, meta_u64, Inner, JournalError, SEQ_LEASE};
use crate::frame::{key_seq, now_ms, seq_key};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often retention runs (eviction runs at every commit).
const RETENTION_EVERY: Duration = Duration::from_secs(5);
/// Most chunks one maintenance pass removes before letting a commit happen.
const MAINTENANCE_CHUNKS: usize = 4_096;

impl Inner {
    /// Wake the flusher.
    pub(super) fn kick(&self) {
        let (lk, cv) = &self.wake;
        *lock(lk) = true;
        cv.notify_all();
    }

    /// Wake the flusher for a commit now, cutting its `flush_ms` wait short.
    pub(super) fn commit_now(&self) {
        self.flow.urgent.store(true, Relaxed);
        self.kick();
    }

    /// Sleep out the rest of the group-commit window, unless a commit is asked for now.
    fn wait_window(&self, rest: Duration) {
        let (lk, cv) = &self.wake;
        let guard = lock(lk);
        let _guard = match cv.wait_timeout_while(guard, rest, |_| !self.flow.urgent.load(Relaxed)) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }

    /// Block until kicked (or a second passes).
    fn wait_for_work(&self) {
        let (lk, cv) = &self.wake;
        let mut pending = lock(lk);
        if !*pending {
            pending = match cv.wait_timeout(pending, Duration::from_secs(1)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        *pending = false;
    }

    /// The flusher loop; returns after the commit that follows `close`.
    pub(super) fn flush_loop(self: Arc<Self>) {
        let window = Duration::from_millis(self.cfg.flush_ms.0);
        let mut last_retention = Instant::now();
        let mut failing_since: Option<Instant> = None;
        loop {
            self.wait_for_work();
            self.counters.beat();
            let started = Instant::now();
            self.flow.urgent.store(false, Relaxed);
            let retention = last_retention.elapsed() >= RETENTION_EVERY;
            if retention {
                last_retention = started;
            }
            if let Err(e) = self.maintain(retention) {
                tracing::error!(error = %e, "journal maintenance failed");
            }
            match self.commit() {
                Ok(true) => return,
                Ok(false) => {
                    failing_since = None;
                    self.counters.set_flush_failing(false);
                }
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::error!(error = %e, path = %self.cfg.path.display(),
                            "journal write failed; frames stay queued, retrying");
                    }
                    let since = *failing_since.get_or_insert(started);
                    if since.elapsed() > Duration::from_secs(2) {
                        self.counters.set_flush_failing(true);
                    }
                    if lock(&self.write).closed && self.counters.flush_failing() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            // Group commit: at most one fsync per window unless asked for one now.
            if let Some(rest) = window.checked_sub(started.elapsed()) {
                self.wait_window(rest);
            }
        }
    }

    /// One group commit; returns true once the journal is closed and everything written.
    fn commit(&self) -> Result<bool, JournalError> {
        #[cfg(test)]
        let _stalled = lock(&self.flow.stall);
        let (batch, closed, extend) = {
            let st = lock(&self.write);
            // The lease grows in two steps: recorded here (the floor file fsynced outside
            // the writer lock, so appends never wait on it), usable after the flush below.
            let extend = (!st.closed && st.lease_end.saturating_sub(st.next_seq) < SEQ_LEASE / 2)
                .then_some(st.next_seq + SEQ_LEASE);
            let batch: Vec<(u64, i64, Arc<Vec<u8>>)> = st
                .pending
                .iter()
                .map(|p| (p.seq, p.ts_ms, Arc::clone(&p.record)))
                .collect();
            (batch, st.closed, extend)
        };
        if let Some(lease_end) = extend {
            self.persist_lease(lease_end)?;
        }
        let mut written = 0u64;
        let mut i = 0;
        while i < batch.len() {
            let start = i;
            let (mut raw, mut max_ts) = (0usize, i64::MIN);
            while i < batch.len()
                && i - start < CHUNK_MAX_FRAMES
                && (i == start || raw + batch[i].2.len() <= CHUNK_MAX_RAW)
            {
                raw += batch[i].2.len() + 4;
                max_ts = max_ts.max(batch[i].1);
                i += 1;
            }
            let value = chunk::encode(batch[start..i].iter().map(|b| b.2.as_slice()), max_ts);
            written += 8 + value.len() as u64;
            self.frames.insert(seq_key(batch[start].0), value)?;
        }
        self.counters.stored(written);
        self.meta
            .insert("evicted", &seq_key(self.counters.evicted.load(Relaxed)))?;
        self.db.flush()?;
        self.sync_data()?;
        if let Some(lease_end) = extend {
            let mut st = lock(&self.write);
            st.lease_end = st.lease_end.max(lease_end);
        }
        // Durable is exactly what this commit wrote: the queue is contiguous and in seq
        // order, and nothing leaves it unwritten.
        let Some(&(covered, _, _)) = batch.last() else {
            // A grown lease is room too (see `WriteState::fits`).
            self.flow.room.notify_waiters();
            self.counters.flushed(0);
            return Ok(closed);
        };
        {
            let mut st = lock(&self.write);
            while st.pending.front().is_some_and(|p| p.seq <= covered) {
                if let Some(p) = st.pending.pop_front() {
                    st.pending_bytes -= p.cost();
                }
            }
            self.counters.queued(st.pending.len(), st.pending_bytes);
        }
        self.flow.room.notify_waiters();
        self.counters.flushed(covered);
        self.durable.send_if_modified(|d| {
            let changed = *d < covered;
            *d = (*d).max(covered);
            changed
        });
        Ok(closed)
    }

    /// Evict over the byte cap; when `retention` is set, also prune old acknowledged frames.
    pub(super) fn maintain(&self, retention: bool) -> Result<(), JournalError> {
        let cap = self.cfg.max_bytes.0;
        loop {
            let excess = self.counters.bytes.load(Relaxed).saturating_sub(cap);
            if excess == 0 {
                break;
            }
            let (n, bytes) = self.remove_front(|_, _, removed| removed < excess)?;
            if bytes == 0 {
                break;
            }
            self.counters.evict(n, bytes, cap);
        }
        if retention {
            let safe = self.safe_seq();
            let cutoff = now_ms() - self.cfg.retention.0.as_millis() as i64;
            let (n, bytes) = self.remove_front(|first, h, _| {
                first + u64::from(h.count).saturating_sub(1) <= safe && h.max_ts_ms < cutoff
            })?;
            if n > 0 {
                self.counters.prune(n, bytes);
                tracing::info!(
                    frames = n,
                    "journal pruned acknowledged frames past retention"
                );
            }
        }
        Ok(())
    }

    /// Highest seq every registered sink acknowledged (all durable frames if no sinks).
    fn safe_seq(&self) -> u64 {
        let sinks = lock(&self.sinks).clone();
        let durable = self.counters.durable_seq.load(Relaxed);
        sinks
            .iter()
            .map(|n| meta_u64(&self.cursors, n).ok().flatten().unwrap_or(0))
            .fold(durable, u64::min)
    }

    /// Remove chunks from the front while `keep_going(first_seq, header, bytes_removed)`;
    /// returns (frames, bytes) removed. Unreadable chunks at the front are removed too.
    fn remove_front(
        &self,
        mut keep_going: impl FnMut(u64, ChunkHeader, u64) -> bool,
    ) -> Result<(u64, u64), JournalError> {
        let (mut n, mut bytes) = (0u64, 0u64);
        for item in self.frames.iter().take(MAINTENANCE_CHUNKS) {
            let (k, v) = item?;
            let size = (k.len() + v.len()) as u64;
            match (key_seq(&k), chunk::header(&v)) {
                (Some(first), Some(h)) => {
                    if !keep_going(first, h, bytes) {
                        break;
                    }
                    n += u64::from(h.count);
                }
                _ => tracing::error!(key = ?k, "removing an unreadable journal chunk"),
            }
            self.frames.remove(k)?;
            bytes += size;
        }
        if bytes > 0 {
            self.counters.refresh_first(&self.frames)?;
        }
        Ok((n, bytes))
    }
}
