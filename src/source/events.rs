//! Typed observability events of the serial-side sources, each defined once.
//!
//! Input the gateway does not control (a noisy wire, a flaky adapter, a cable pulled out)
//! must never turn into a log storm or a silent loss. Every such event is a struct here
//! whose `emit` both counts (in the source's status slot, which `/api/status` and the
//! Prometheus exporter read as `fieldgate_frames_invalid_total{source, reason}`) and logs
//! through a per-source [`LogLimit`]: the first few occurrences in full, then at most one
//! summary line per interval. Components call `emit`; they never format these lines.

use crate::journal::JournalError;
use crate::source::SourceSlot;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::{Duration, Instant};

/// Occurrences logged one by one before summaries take over.
const LOG_FIRST: u32 = 5;
/// Least time between two summary lines of one source.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate limiter for one source's input-triggered log lines.
#[derive(Debug)]
pub struct LogLimit {
    first: u32,
    logged: u32,
    last: Option<Instant>,
    suppressed: BTreeMap<&'static str, u64>,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

impl LogLimit {
    /// A limiter that has logged nothing yet.
    pub fn new() -> Self {
        LogLimit::logging_first(LOG_FIRST)
    }

    /// A limiter that logs the first `first` occurrences in full (then summaries).
    pub fn logging_first(first: u32) -> Self {
        LogLimit {
            first,
            logged: 0,
            last: None,
            suppressed: BTreeMap::new(),
        }
    }

    /// Whether an occurrence of `reason` may be logged now; if not, it is tallied for the
    /// next summary.
    pub(crate) fn admit(&mut self, reason: &'static str) -> bool {
        if self.logged < self.first {
            self.logged += 1;
            self.last = Some(Instant::now());
            return true;
        }
        *self.suppressed.entry(reason).or_default() += 1;
        false
    }

    /// The suppressed counts, if a summary is due (and resets them).
    pub(crate) fn summary_due(&mut self) -> Option<BTreeMap<&'static str, u64>> {
        let due = self.last.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if !due || self.suppressed.is_empty() {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Input a serial port delivered that is not a good frame (bad checksum, too long, ...).
pub struct InvalidFrame<'a> {
    /// Source name.
    pub source: &'a str,
    /// Stable reason label, e.g. `bad_checksum`.
    pub reason: &'static str,
    /// Human-readable detail for the log.
    pub detail: &'a dyn Display,
}

impl InvalidFrame<'_> {
    /// Count it in `slot` and log it (rate-limited by `limit`).
    pub fn emit(self, slot: &SourceSlot, limit: &mut LogLimit) {
        slot.add_invalid_reason(self.reason, 1);
        if limit.admit(self.reason) {
            tracing::warn!(source = %self.source, reason = self.reason, detail = %self.detail,
                "invalid input skipped");
        }
        flush_summary(self.source, limit);
    }
}

/// An OBD adapter command that got no usable answer (`timeout`, `no_data`, `error`, ...).
pub struct ObdCommandFailed<'a> {
    /// Source name.
    pub source: &'a str,
    /// The command sent, e.g. `010C`.
    pub command: &'a str,
    /// Stable reason label.
    pub reason: &'static str,
    /// What the adapter said, if anything.
    pub detail: &'a str,
}

impl ObdCommandFailed<'_> {
    /// Count it in `slot` and log it (rate-limited by `limit`).
    pub fn emit(self, slot: &SourceSlot, limit: &mut LogLimit) {
        slot.add_invalid_reason(self.reason, 1);
        if limit.admit(self.reason) {
            tracing::warn!(source = %self.source, command = %self.command, reason = self.reason,
                answer = %self.detail, "OBD command failed");
        }
        flush_summary(self.source, limit);
    }
}

/// An OBD adapter failed so often in a row that it is being re-initialised.
pub struct AdapterReinit<'a> {
    /// Source name.
    pub source: &'a str,
    /// Failed commands in a row.
    pub failures: u32,
}

impl AdapterReinit<'_> {
    /// Log it (rate-limited by `limit`); the failures themselves were counted already.
    pub fn emit(self, limit: &mut LogLimit) {
        if limit.admit("reinit") {
            tracing::warn!(source = %self.source, failures = self.failures,
                "adapter keeps failing; re-initialising");
        }
        flush_summary(self.source, limit);
    }
}

/// The journal's write queue was full (its disk stalled or failing), so frames from a
/// device that cannot be paused were dropped.
pub struct Overrun<'a> {
    /// Source name.
    pub source: &'a str,
    /// Frames dropped.
    pub frames: u64,
}

impl Overrun<'_> {
    /// Count the frames under reason `overrun` in `slot` and log (rate-limited by `limit`).
    pub fn emit(self, slot: &SourceSlot, limit: &mut LogLimit) {
        slot.add_invalid_reason("overrun", self.frames);
        if limit.admit("overrun") {
            tracing::error!(source = %self.source, frames = self.frames,
                "journal write queue full (disk stalled or failing): frames dropped");
        }
        flush_summary(self.source, limit);
    }
}

/// Count the outcome of journaling `frames` frames: `Ok(true)` journaled (added to the
/// source's frames), `Ok(false)` refused by a full write queue (an [`Overrun`]), `Err` any
/// other journal error for the caller to end on.
pub fn count_append<T>(
    result: Result<T, JournalError>,
    frames: u64,
    source: &str,
    slot: &SourceSlot,
    limit: &mut LogLimit,
) -> Result<bool, JournalError> {
    match result {
        Ok(_) => {
            slot.add_frames(frames);
            Ok(true)
        }
        Err(JournalError::Full { .. }) => {
            Overrun { source, frames }.emit(slot, limit);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Logs the summary of suppressed lines when one is due.
fn flush_summary(source: &str, limit: &mut LogLimit) {
    if let Some(counts) = limit.summary_due() {
        let total: u64 = counts.values().sum();
        tracing::warn!(source = %source, suppressed = total, by_reason = ?counts,
            "more invalid input since the last report");
    }
}

/// The device behind a port went away or cannot be opened; logged once per outage.
pub struct PortUnavailable<'a> {
    /// Source name.
    pub source: &'a str,
    /// Device path.
    pub path: &'a std::path::Path,
    /// Why.
    pub error: &'a dyn Display,
}

impl PortUnavailable<'_> {
    /// Set the slot to `waiting`; log only if `first` (the start of an outage).
    pub fn emit(self, slot: &SourceSlot, first: bool) {
        slot.set_state(
            "waiting",
            Some(format!("{}: {}", self.path.display(), self.error)),
        );
        if first {
            tracing::warn!(source = %self.source, path = %self.path.display(), error = %self.error,
                "serial device unavailable; retrying with backoff");
        }
    }
}

/// The port is open (again) and the source is reading.
pub struct PortOpened<'a> {
    /// Source name.
    pub source: &'a str,
    /// Device path.
    pub path: &'a std::path::Path,
    /// Whether this ends an outage (as opposed to the first open).
    pub after_outage: bool,
}

impl PortOpened<'_> {
    /// Set the slot to `running` and log.
    pub fn emit(self, slot: &SourceSlot) {
        slot.set_state("running", None);
        if self.after_outage {
            tracing::info!(source = %self.source, path = %self.path.display(), "serial device back");
        } else {
            tracing::info!(source = %self.source, path = %self.path.display(), "serial device open");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_logs_first_few_then_tallies() {
        let mut l = LogLimit::new();
        let admitted = (0..20).filter(|_| l.admit("crc")).count();
        assert_eq!(admitted, LOG_FIRST as usize);
        assert_eq!(l.suppressed.get("crc"), Some(&15));
        // Not yet due: the last logged line was just now.
        assert!(l.summary_due().is_none());
        l.last = Some(Instant::now() - LOG_EVERY);
        let summary = l.summary_due().expect("due");
        assert_eq!(summary.get("crc"), Some(&15));
        assert!(l.suppressed.is_empty() && l.summary_due().is_none());
    }
}
