//! The sink's link state (`starting` / `online` / `offline` / `stopped`) and its status slot.
//!
//! Going offline and coming back are each logged exactly once, whatever the number of
//! failed attempts in between, so an outage of hours does not flood the log.
//!
//! The methods run on the async workers, so they touch only counters; the one figure that
//! needs a journal read (the age of the oldest unacknowledged frame) is recomputed by
//! [`refresh_loop`] on the blocking pool.

use super::encode::Special;
use crate::frame::now_ms;
use crate::journal::Journal;
use crate::sink::SinkSlot;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often lag figures are recomputed while nothing is delivered.
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Starting,
    Online,
    Offline,
    Stopped,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Starting => "starting",
            Link::Online => "online",
            Link::Offline => "offline",
            Link::Stopped => "stopped",
        }
    }
}

/// Shared link state of the sink.
pub(super) struct Health {
    slot: SinkSlot,
    journal: Journal,
    acked: AtomicU64,
    link: Mutex<Link>,
}

impl Health {
    /// Fresh state; `acked` is the cursor's persisted position.
    pub(super) fn new(slot: SinkSlot, journal: Journal, acked: u64) -> Self {
        let h = Health {
            slot,
            journal,
            acked: AtomicU64::new(acked),
            link: Mutex::new(Link::Starting),
        };
        h.slot.update(|s| {
            s.state = Link::Starting.name().into();
            s.acked_seq = acked;
        });
        h.refresh_lag();
        h
    }

    fn set_link(&self, to: Link) -> Link {
        let mut l = crate::sync::lock(&self.link);
        let from = *l;
        *l = to;
        from
    }

    /// Whether the last attempt reached the server.
    pub(super) fn is_online(&self) -> bool {
        *crate::sync::lock(&self.link) == Link::Online
    }

    /// The server answered (a write, an index build): we are online.
    pub(super) fn reachable(&self) {
        let from = self.set_link(Link::Online);
        if from == Link::Online {
            return;
        }
        let behind = self.behind();
        self.slot.update(|s| s.state = Link::Online.name().into());
        match from {
            Link::Offline => {
                tracing::info!(frames_behind = behind, "mongo sink back online")
            }
            _ => tracing::info!(frames_behind = behind, "mongo sink online"),
        }
    }

    /// An attempt failed: record the error; the first failure of a streak logs once.
    pub(super) fn failed(&self, error: &str) {
        let from = self.set_link(Link::Offline);
        self.slot.update(|s| {
            s.state = Link::Offline.name().into();
            s.last_error = Some(error.to_string());
        });
        if from != Link::Offline {
            tracing::warn!(
                error,
                frames_behind = self.behind(),
                "mongo sink offline; journaling continues, will retry with backoff"
            );
        }
    }

    /// Record an error that does not change the link state (e.g. a registry entry).
    pub(super) fn note_error(&self, error: &str) {
        self.slot.update(|s| s.last_error = Some(error.to_string()));
    }

    /// Frames up to `seq` are acknowledged by the server; `n` of them in this batch.
    pub(super) fn delivered(&self, seq: u64, n: u64) {
        self.acked.store(seq, SeqCst);
        self.slot.update(|s| {
            s.acked_seq = seq;
            s.delivered += n;
        });
        self.reachable();
        self.refresh_lag();
    }

    /// Frames of a delivered batch that were not stored as plain documents.
    pub(super) fn encoded(&self, specials: &[Special]) {
        if specials.is_empty() {
            return;
        }
        self.slot.update(|s| {
            for sp in specials {
                *s.encode_fallbacks.entry(sp.label().into()).or_default() += 1;
            }
        });
    }

    /// `n` frames met a different frame under their `_id`.
    pub(super) fn collided(&self, n: u64) {
        self.slot.update(|s| s.collisions += n);
    }

    /// The cursor stepped over seqs that hold no frame (nothing was sent).
    pub(super) fn skipped_to(&self, seq: u64) {
        self.moved_to(seq, 0);
    }

    /// The cursor went back to `seq` to re-send `lost` frames the server no longer has.
    pub(super) fn rewound_to(&self, seq: u64, lost: u64) {
        self.moved_to(seq, lost);
    }

    fn moved_to(&self, seq: u64, resent: u64) {
        self.acked.store(seq, SeqCst);
        self.slot.update(|s| {
            s.acked_seq = seq;
            s.resent += resent;
        });
        self.refresh_lag();
    }

    /// The sink has ended.
    pub(super) fn stopped(&self) {
        self.set_link(Link::Stopped);
        self.slot.update(|s| s.state = Link::Stopped.name().into());
        self.refresh_lag();
    }

    fn behind(&self) -> u64 {
        self.journal
            .last_seq()
            .saturating_sub(self.acked.load(SeqCst))
    }

    /// Recompute `lag` from counters alone (no I/O: safe on the async workers); a sink that
    /// caught up has no lag age either.
    fn refresh_lag(&self) {
        let lag = self.behind();
        self.slot.update(|s| {
            s.lag = lag;
            if lag == 0 {
                s.lag_seconds = 0.0;
            }
        });
    }

    /// Recompute `lag` and `lag_seconds` from the journal (blocking: a journal read).
    fn refresh(&self) {
        let acked = self.acked.load(SeqCst);
        let lag = self.behind();
        let lag_seconds = if lag == 0 {
            0.0
        } else {
            // The oldest unacknowledged frame still in the journal.
            self.journal
                .range(acked + 1, 1)
                .first()
                .map_or(0.0, |f| (now_ms() - f.ts_ms).max(0) as f64 / 1000.0)
        };
        self.slot.update(|s| {
            s.lag = lag;
            s.lag_seconds = lag_seconds;
        });
    }
}

/// Keep the lag figures current while the link is idle or down.
pub(super) async fn refresh_loop(health: Arc<Health>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let h = Arc::clone(&health);
        // A journal read: keep it off the async workers.
        if tokio::task::spawn_blocking(move || h.refresh())
            .await
            .is_err()
        {
            return;
        }
    }
}
