//! Typed events of the technician listener, each defined once: refused connections and
//! sessions, wrong keys, closed idle connections.
//!
//! Anyone who can reach the port can trigger them, so each one counts (for `/metrics`) and
//! logs through one shared [`LogLimit`], the sources' limiter: the first occurrence in
//! full, then at most one summary line per 10 s. Handlers call these; they never format
//! such log lines themselves.

use crate::source::events::LogLimit;
use crate::sync::lock;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Why a connection, session or request was refused; the label of
/// `fieldgate_http_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached and no idle connection to close: 503.
    Busy,
    /// `max_connections_per_ip` reached for this address: 429.
    PerAddress,
    /// `max_sessions_per_key` WebSocket sessions open on this key: 429.
    SessionsPerKey,
    /// Too many wrong keys from this address: 429.
    Throttled,
}

impl Refusal {
    /// All reasons, in label order.
    pub const ALL: [Refusal; 4] = [
        Refusal::Busy,
        Refusal::PerAddress,
        Refusal::SessionsPerKey,
        Refusal::Throttled,
    ];

    /// Counter label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Busy => "max_connections",
            Refusal::PerAddress => "max_connections_per_ip",
            Refusal::SessionsPerKey => "max_sessions_per_key",
            Refusal::Throttled => "throttled",
        }
    }
}

/// Why the listener closed a connection by itself; the label of
/// `fieldgate_http_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The request head did not arrive within `header_timeout`.
    HeaderTimeout,
    /// Nothing moved for `idle_timeout`.
    Idle,
    /// Closed to make room under `max_connections`.
    Evicted,
    /// The TLS handshake failed or timed out.
    Handshake,
}

impl Closed {
    /// All reasons, in label order.
    pub const ALL: [Closed; 4] = [
        Closed::HeaderTimeout,
        Closed::Idle,
        Closed::Evicted,
        Closed::Handshake,
    ];

    /// Counter label.
    pub fn reason(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::Idle => "idle_timeout",
            Closed::Evicted => "evicted",
            Closed::Handshake => "tls_handshake",
        }
    }
}

/// The listener's event sink: counters plus the rate-limited log.
#[derive(Debug)]
pub struct ListenEvents {
    log: Mutex<LogLimit>,
    refused: [AtomicU64; Refusal::ALL.len()],
    closed: [AtomicU64; Closed::ALL.len()],
    wrong_keys: AtomicU64,
}

impl ListenEvents {
    /// Count a refusal and log it (rate-limited).
    pub fn refused(&self, what: Refusal, peer: IpAddr, limit: usize) {
        self.refused[what as usize].fetch_add(1, Relaxed);
        let mut log = lock(&self.log);
        if log.admit(what.reason()) {
            tracing::warn!(%peer, reason = what.reason(), limit, "refused");
        }
        summary(&mut log);
    }

    /// Count a presented, non-empty wrong key and log it (rate-limited; never the key).
    pub fn wrong_key(&self, peer: IpAddr, failures: u32, path: &str) {
        self.wrong_keys.fetch_add(1, Relaxed);
        let path: String = path.chars().take(80).collect();
        let mut log = lock(&self.log);
        if log.admit("wrong_key") {
            tracing::warn!(%peer, failures, path = ?path, "unknown API key");
        }
        summary(&mut log);
    }

    /// An `accept` failed (typically: out of file descriptors); logged, rate-limited.
    pub fn accept_failed(&self, e: &std::io::Error) {
        let mut log = lock(&self.log);
        if log.admit("accept_error") {
            tracing::warn!(error = %e, "cannot accept a connection");
        }
        summary(&mut log);
    }

    /// Count a connection the listener closed (logged at debug only: these are routine).
    pub fn closed(&self, why: Closed, peer: IpAddr) {
        self.closed[why as usize].fetch_add(1, Relaxed);
        tracing::debug!(%peer, reason = why.reason(), "connection closed");
    }

    /// Refusals so far, per reason.
    pub fn refused_total(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (r.reason(), self.refused[*r as usize].load(Relaxed)))
            .collect()
    }

    /// Closed connections so far, per reason.
    pub fn closed_total(&self) -> Vec<(&'static str, u64)> {
        Closed::ALL
            .iter()
            .map(|c| (c.reason(), self.closed[*c as usize].load(Relaxed)))
            .collect()
    }

    /// Wrong keys presented so far.
    pub fn wrong_keys_total(&self) -> u64 {
        self.wrong_keys.load(Relaxed)
    }
}

impl Default for ListenEvents {
    fn default() -> Self {
        ListenEvents {
            log: Mutex::new(LogLimit::logging_first(1)),
            refused: Default::default(),
            closed: Default::default(),
            wrong_keys: AtomicU64::new(0),
        }
    }
}

/// The summary line of what the limiter held back, when one is due.
fn summary(log: &mut LogLimit) {
    if let Some(counts) = log.summary_due() {
        let total: u64 = counts.values().sum();
        tracing::warn!(suppressed = total, by_reason = ?counts,
            "more refused connections and wrong keys since the last report");
    }
}
