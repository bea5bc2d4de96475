//! The relay's own latency: from a frame's journal append to its bytes written to a
//! WebSocket client's socket, one observation per delivery, as a Prometheus histogram.
//!
//! End-to-end latency (device → broker → gateway → client) depends on the broker and the
//! network; this is the part the gateway adds, so an operator can tell the two apart.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Bucket upper bounds, µs: fine around the relay's millisecond budget, coarse past it.
pub const BOUNDS_US: [u64; 14] = [
    250, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 7_500, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000,
];

/// A fixed-bucket histogram of delivery latencies, shared by every session.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per-bucket counts (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Per-bucket counts (not cumulative), `BOUNDS_US` then `+Inf`.
    pub buckets: Vec<u64>,
    /// Sum of all observations, µs.
    pub sum_us: u64,
}

impl Snapshot {
    /// Observations in total.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl LatencyHistogram {
    /// Record one delivery per `appended` instant, all written at `written`.
    ///
    /// Counts are gathered locally first: a burst touches each shared counter once.
    pub fn observe(&self, written: Instant, appended: impl IntoIterator<Item = Instant>) {
        let mut local = [0u64; BOUNDS_US.len() + 1];
        let mut sum = 0u64;
        for at in appended {
            let us = written.saturating_duration_since(at).as_micros() as u64;
            sum += us;
            local[BOUNDS_US.partition_point(|&b| b < us)] += 1;
        }
        for (shared, n) in self.buckets.iter().zip(local) {
            if n > 0 {
                shared.fetch_add(n, Relaxed);
            }
        }
        self.sum_us.fetch_add(sum, Relaxed);
    }

    /// Current counts.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_are_upper_bounds() {
        let h = LatencyHistogram::default();
        let now = Instant::now();
        let ago = |us| now.checked_sub(Duration::from_micros(us)).unwrap_or(now);
        h.observe(
            now,
            [ago(0), ago(250), ago(251), ago(4_999), ago(2_000_000)],
        );
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2, "0 and 250 µs are ≤ 250 µs");
        assert_eq!(s.buckets[1], 1, "251 µs is in (250, 500]");
        assert_eq!(s.buckets[6], 1, "4,999 µs is in (4, 5] ms");
        assert_eq!(s.buckets[BOUNDS_US.len()], 1, "2 s is past the last bound");
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum_us, 250 + 251 + 4_999 + 2_000_000);
    }
}
