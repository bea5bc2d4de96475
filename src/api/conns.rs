//! The listener's table of open connections: the total and per-address caps, each
//! connection's phase and deadlines, and eviction of idle connections when the table is
//! full.
//!
//! A connection is in one phase at a time: `Head` (a request head is arriving, or a new
//! connection has sent nothing yet: it has `header_timeout`), `Busy` (a request is being
//! served: it may not stall for `idle_timeout`), `Idle` (kept alive between requests: it is
//! closed after `idle_timeout`, or earlier to make room for a new connection), `Upgraded`
//! (a WebSocket session: it keeps its slot, its liveness is the session's business).
//! A connection that cannot get a slot is refused with 429 (its address has
//! `max_connections_per_ip`) or 503 (the table is full of busy connections).

use super::events::{Closed, Refusal};
use super::listen::Limits;
use crate::auth::address_key;
use crate::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Milliseconds on the listener's monotonic clock.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let ms = START.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Where a connection is in its life; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for a request head (or receiving one).
    Head = 0,
    /// Serving a request.
    Busy = 1,
    /// Kept alive between requests.
    Idle = 2,
    /// Handed to a WebSocket session.
    Upgraded = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Head,
            1 => Phase::Busy,
            2 => Phase::Idle,
            _ => Phase::Upgraded,
        }
    }
}

/// One open connection.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    /// The address it counts under (IPv6 by /64).
    ip: IpAddr,
    phase: AtomicU8,
    /// When the current phase began (ms).
    since: AtomicU64,
    /// When a byte last moved (ms).
    last_io: AtomicU64,
    /// Fires when the table evicts the connection.
    pub evicted: Notify,
}

impl Slot {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Relaxed))
    }

    /// Enter `phase` now.
    pub fn enter(&self, phase: Phase) {
        self.since.store(now_ms(), Relaxed);
        self.phase.store(phase as u8, Relaxed);
    }

    /// A request finished: back to `Idle` unless it was upgraded.
    pub fn finished(&self) {
        let now = now_ms();
        if self
            .phase
            .compare_exchange(Phase::Busy as u8, Phase::Idle as u8, Relaxed, Relaxed)
            .is_ok()
        {
            self.since.store(now, Relaxed);
        }
    }

    /// Bytes arrived: an idle connection starts a new request head.
    pub fn read(&self) {
        let now = now_ms();
        self.last_io.store(now, Relaxed);
        if self
            .phase
            .compare_exchange(Phase::Idle as u8, Phase::Head as u8, Relaxed, Relaxed)
            .is_ok()
        {
            self.since.store(now, Relaxed);
        }
    }

    /// Bytes left.
    pub fn wrote(&self) {
        self.last_io.store(now_ms(), Relaxed);
    }

    /// When the connection is due to be closed, and why (`None`: never, by the listener).
    pub fn deadline(&self, l: &Limits) -> Option<(Instant, Closed)> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let since = self.since.load(Relaxed);
        let last_io = self.last_io.load(Relaxed);
        let (at, why) = match self.phase() {
            Phase::Head => (
                since.saturating_add(ms(l.header_timeout)),
                Closed::HeaderTimeout,
            ),
            Phase::Busy | Phase::Idle => (
                since.max(last_io).saturating_add(ms(l.idle_timeout)),
                Closed::Idle,
            ),
            Phase::Upgraded => return None,
        };
        let left = Duration::from_millis(at.saturating_sub(now_ms()));
        Some((Instant::now() + left, why))
    }

    /// Whether the deadline has passed (`Some(why)` then).
    pub fn expired(&self, l: &Limits) -> Option<Closed> {
        self.deadline(l)
            .filter(|(at, _)| *at <= Instant::now())
            .map(|(_, why)| why)
    }
}

/// Held while a connection (or the WebSocket session it became) is open; the last clone
/// frees the slot.
#[derive(Debug, Clone)]
pub struct ConnHandle(Arc<Held>);

#[derive(Debug)]
struct Held {
    slot: Arc<Slot>,
    table: Arc<Connections>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.table.release(&self.slot);
    }
}

impl ConnHandle {
    /// The connection's slot.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.0.slot
    }
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Slot>>,
    per_ip: HashMap<IpAddr, usize>,
}

/// The table of open connections.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    table: Mutex<Table>,
}

impl Connections {
    /// An empty table with these limits.
    pub fn new(limits: Limits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            table: Mutex::default(),
        })
    }

    /// The limits the table keeps.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        lock(&self.table).open.len()
    }

    /// A slot for a new connection from `ip`, closing the longest-idle connection if the
    /// table is full; or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnHandle, Refusal> {
        let ip = address_key(ip);
        let mut t = lock(&self.table);
        if t.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_ip {
            return Err(Refusal::PerAddress);
        }
        if t.open.len() >= self.limits.max_connections {
            let victim = t
                .open
                .values()
                .filter(|s| matches!(s.phase(), Phase::Idle | Phase::Head))
                .min_by_key(|s| s.since.load(Relaxed).max(s.last_io.load(Relaxed)))
                .cloned();
            let Some(victim) = victim else {
                return Err(Refusal::Busy);
            };
            Self::remove(&mut t, &victim);
            victim.evicted.notify_one();
        }
        t.next_id += 1;
        let now = now_ms();
        let slot = Arc::new(Slot {
            id: t.next_id,
            ip,
            phase: AtomicU8::new(Phase::Head as u8),
            since: AtomicU64::new(now),
            last_io: AtomicU64::new(now),
            evicted: Notify::new(),
        });
        t.open.insert(slot.id, Arc::clone(&slot));
        *t.per_ip.entry(ip).or_default() += 1;
        Ok(ConnHandle(Arc::new(Held {
            slot,
            table: Arc::clone(self),
        })))
    }

    fn release(&self, slot: &Slot) {
        Self::remove(&mut lock(&self.table), slot);
    }

    /// Take `slot` out of the table (once: an evicted slot is gone before its handle is).
    fn remove(t: &mut Table, slot: &Slot) {
        if t.open.remove(&slot.id).is_none() {
            return;
        }
        if let Some(n) = t.per_ip.get_mut(&slot.ip) {
            *n -= 1;
            if *n == 0 {
                t.per_ip.remove(&slot.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: total,
            max_per_ip: per_ip,
            max_sessions_per_key: 8,
        }
    }

    #[test]
    fn per_address_cap_counts_ipv6_by_64() {
        let t = Connections::new(limits(100, 2));
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let b: IpAddr = "2001:db8::2".parse().expect("ip");
        let _h1 = t.admit(a).expect("first");
        let h2 = t.admit(b).expect("second");
        assert_eq!(t.admit(a).err(), Some(Refusal::PerAddress));
        assert!(t.admit("127.0.0.1".parse().expect("ip")).is_ok());
        drop(h2);
        assert!(t.admit(a).is_ok(), "a closed connection frees its slot");
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_and_never_a_busy_or_upgraded_one() {
        let t = Connections::new(limits(3, 3));
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let busy = t.admit(ip(1)).expect("busy");
        busy.slot().enter(Phase::Busy);
        let ws = t.admit(ip(2)).expect("ws");
        ws.slot().enter(Phase::Upgraded);
        let idle = t.admit(ip(3)).expect("idle");
        idle.slot().enter(Phase::Idle);
        let newcomer = t.admit(ip(4)).expect("room is made");
        // The idle one was told and is out of the table.
        assert!(futures_util::FutureExt::now_or_never(idle.slot().evicted.notified()).is_some());
        assert_eq!(t.open(), 3);
        newcomer.slot().enter(Phase::Busy);
        assert_eq!(t.admit(ip(5)).err(), Some(Refusal::Busy));
        drop(idle);
        assert_eq!(t.open(), 3, "the evicted handle's drop frees nothing twice");
        drop(busy);
        assert_eq!(t.open(), 2);
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let l = limits(10, 10);
        let t = Connections::new(l);
        let h = t.admit(IpAddr::from([10, 0, 0, 1])).expect("slot");
        let s = h.slot();
        let (_, why) = s.deadline(&l).expect("head");
        assert_eq!(why, Closed::HeaderTimeout);
        s.enter(Phase::Busy);
        s.finished();
        assert_eq!(s.phase(), Phase::Idle);
        assert_eq!(s.deadline(&l).expect("idle").1, Closed::Idle);
        s.read();
        assert_eq!(
            s.phase(),
            Phase::Head,
            "bytes on an idle connection start a head"
        );
        s.enter(Phase::Upgraded);
        s.finished();
        assert_eq!(s.phase(), Phase::Upgraded, "an upgrade is not undone");
        assert!(s.deadline(&l).is_none());
        // Back-date the head: it is past its deadline.
        s.enter(Phase::Head);
        s.since.store(0, Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        let l0 = Limits {
            header_timeout: Duration::from_millis(1),
            ..l
        };
        assert_eq!(s.expired(&l0), Some(Closed::HeaderTimeout));
    }
}
