//! The durable journal: every frame gets its seq here before anything else happens.
//!
//! `append` assigns the seq, queues the encoded frame and hands it to live subscribers at
//! once. A background flusher thread group-commits: once per `flush_ms` window it writes
//! the queued frames to sled as compressed chunks (see `chunk`), fsyncs, and publishes the
//! durable seq, which is what MQTT acks and crash-safety claims wait on. Seqs are leased durably ahead
//! of use, so a seq is never reused, even after kill -9; the lease is mirrored in a seq floor
//! file beside the directory (see `floor`), so not after a quarantine or a deleted journal
//! either. The same thread enforces the byte cap (drop-oldest eviction) and retention
//! (prune what every sink acknowledged).
//!
//! The write queue is bounded in bytes (`pending_max_bytes`) and never drops: a full queue
//! refuses appends ([`JournalError::Full`]) so that the source applies backpressure (MQTT
//! stops reading from its broker, see [`Journal::wait_room`]) or counts the loss (serial).
//! The durable seq only ever covers frames that were written.

pub(crate) mod chunk;
mod floor;
mod flusher;
mod open;
mod refuse;
mod stats;

pub use open::Quarantine;
pub use stats::JournalStats;

use crate::frame::{key_seq, seq_key, DecodeError, Frame, RawFrame, RecordView};
use crate::sync::lock;
use crate::units::{ByteSize, HumanDuration, Positive};
use floor::SeqFloor;
use serde::Deserialize;
use stats::Counters;
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// How many seqs are reserved durably ahead of use; a crash skips at most this many.
const SEQ_LEASE: u64 = 10_000;
/// Capacity of the live broadcast channel (frames), per subscriber.
const LIVE_CAPACITY: usize = 4_096;
/// Bytes counted per queued frame on top of its encoded record (queue slot, Arc, Vec).
const PENDING_OVERHEAD: u64 = 64;

/// `[journal]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// Byte cap; over it the oldest frames are evicted, synced or not.
    pub max_bytes: ByteSize,
    /// Longest time between an append and the fsync that makes it durable.
    pub flush_ms: Positive,
    /// Frames every sink acknowledged are pruned once older than this.
    pub retention: HumanDuration,
    /// sled page cache size.
    pub cache_bytes: ByteSize,
    /// Most bytes of appended frames waiting for their write (encoded size + 64 per frame).
    /// A full queue refuses appends: MQTT stops reading from the broker, serial sources
    /// count `overrun` drops. Nothing in the queue is ever dropped.
    pub pending_max_bytes: ByteSize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: PathBuf::from("/var/lib/fieldgate/journal"),
            max_bytes: ByteSize(512 << 20),
            flush_ms: Positive(20),
            retention: HumanDuration(Duration::from_secs(7 * 86_400)),
            cache_bytes: ByteSize(4 << 20),
            pending_max_bytes: ByteSize(4 << 20),
        }
    }
}

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The storage engine failed.
    #[error("journal storage error: {0}")]
    Sled(#[from] sled::Error),
    /// The journal was closed by shutdown.
    #[error("journal is closed")]
    Closed,
    /// Another process holds the journal.
    #[error(
        "journal {0} is in use by another process (a running fieldgate service?); stop it \
         first (`systemctl stop fieldgate`) or use another journal. Nothing was moved."
    )]
    Locked(PathBuf),
    /// The journal is not corrupt but cannot be used (permissions, a full disk, ...); the
    /// message names the path, the owner and the fix.
    #[error("{0}")]
    Refused(String),
    /// The directory could not be moved aside or recreated.
    #[error("cannot quarantine journal: {0}")]
    Io(#[from] std::io::Error),
    /// The write queue cannot take these frames now (the disk is slow or failing); nothing
    /// was appended. [`Journal::wait_room`] waits until it can.
    #[error("journal write queue full: {pending} of {max} bytes wait for the disk, {frames} frames ({needed} bytes) refused")]
    Full {
        /// Encoded bytes of the refused frames.
        needed: u64,
        /// How many frames were refused.
        frames: u64,
        /// Bytes queued.
        pending: u64,
        /// `pending_max_bytes`.
        max: u64,
    },
}

/// Cheap-to-clone handle to the journal.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
    flusher: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// A frame as live subscribers get it: with the moment it was appended.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Its seq.
    pub seq: u64,
    /// Its journal record (see [`Appended::view`]), shared with the write queue.
    pub record: Arc<Vec<u8>>,
    /// When `append` took it (the start of the relay's own latency).
    pub at: Instant,
}

impl Appended {
    /// The frame's fields, borrowed from its record (no payload tree is built).
    pub fn view(&self) -> Result<RecordView<'_>, DecodeError> {
        Frame::view(self.seq, &self.record)
    }
}

/// A frame appended but not yet written to sled by the flusher: its record only (a
/// `Frame`'s payload tree can be many times the record's size).
struct Pending {
    seq: u64,
    ts_ms: i64,
    record: Arc<Vec<u8>>,
}

impl Pending {
    /// What this entry counts against `pending_max_bytes`.
    fn cost(&self) -> u64 {
        self.record.len() as u64 + PENDING_OVERHEAD
    }
}

/// Seq allocation state; held while a frame is appended so pending order is seq order.
struct WriteState {
    next_seq: u64,
    lease_end: u64,
    closed: bool,
    pending: VecDeque<Pending>,
    /// Sum of the queued entries' [`Pending::cost`].
    pending_bytes: u64,
}

impl WriteState {
    /// Whether `frames` frames counting `bytes` can be queued now without waiting for the
    /// disk: within `max` bytes and the seqs already leased (the flusher extends the lease
    /// as it commits). An empty queue takes anything.
    fn fits(&self, frames: u64, bytes: u64, max: u64) -> bool {
        self.pending.is_empty()
            || (self.pending_bytes + bytes <= max && self.next_seq + frames <= self.lease_end + 1)
    }
}

/// Flow control between appenders and the flusher.
#[derive(Default)]
struct Flow {
    /// Notified whenever a commit frees room in the queue, and on close.
    room: tokio::sync::Notify,
    /// Commit now instead of at the end of the `flush_ms` window.
    urgent: AtomicBool,
    /// Test hook: held to stall commits, as a disk that stopped answering does.
    #[cfg(test)]
    stall: Mutex<()>,
}

struct Inner {
    cfg: JournalConfig,
    db: sled::Db,
    frames: sled::Tree,
    cursors: sled::Tree,
    meta: sled::Tree,
    write: Mutex<WriteState>,
    counters: Counters,
    durable: watch::Sender<u64>,
    live: broadcast::Sender<Appended>,
    wake: (Mutex<bool>, Condvar),
    sinks: Mutex<BTreeSet<String>>,
    quarantine: Option<Quarantine>,
    flow: Flow,
    /// The seq floor file; its mutex also orders lease writes.
    floor: Mutex<SeqFloor>,
    /// `<journal>.lock`, held while open.
    _lock: std::fs::File,
    /// sled's data file, fdatasynced after every flush: sled's own flush ends in
    /// `sync_file_range`, which writes the data but not the metadata that finds it (the
    /// file's size and extents), so a power cut could lose frames reported durable.
    data: std::fs::File,
}

impl Inner {
    /// Make what sled has flushed survive a power cut (see [`Inner::data`]).
    fn sync_data(&self) -> Result<(), JournalError> {
        self.data
            .sync_data()
            .map_err(|e| JournalError::Sled(sled::Error::Io(e)))
    }
}

fn meta_u64(meta: &sled::Tree, key: &str) -> Result<Option<u64>, sled::Error> {
    Ok(meta.get(key)?.as_deref().and_then(key_seq))
}

/// The key of the chunk that holds `seq`: the greatest chunk key at most `seq` among the
/// [`chunk::CHUNK_MAX_FRAMES`] seqs up to it (no chunk holds more), else `seq` itself.
///
/// Forward iteration only: sled's reverse iteration (`next_back`, `Tree::last`, `get_lt`,
/// `pop_max`) links a 1 MiB constant (its "greatest key", `[255; 1 << 20]`) into the
/// binary, a sixth of the Pi's size budget (docs/benchmarks.md, "Binary size"); clippy.toml
/// refuses those calls. The windows are searched nearest first (`seq` itself, the 15 seqs
/// below, then the rest), so small chunks, where many keys lie close together, are found
/// without walking up to 255 keys (`fold`, not `last`: clippy would suggest `next_back`).
fn chunk_start(frames: &sled::Tree, seq: u64) -> u64 {
    let mut hi = seq;
    for width in [1, 16, chunk::CHUNK_MAX_FRAMES as u64] {
        let lo = seq.saturating_sub(width - 1);
        let greatest = frames
            .range(seq_key(lo)..=seq_key(hi))
            .filter_map(|item| key_seq(&item.ok()?.0))
            .fold(None, |_, key| Some(key));
        if let Some(key) = greatest {
            return key;
        }
        if lo == 0 {
            break;
        }
        hi = lo - 1;
    }
    seq
}

impl Inner {
    /// Record a seq lease ending at `lease_end`: in the floor file at once (fsynced), in
    /// `meta` with the next flush. Never lowers either; seqs up to `lease_end` may be issued
    /// once this returned and a flush followed.
    fn persist_lease(&self, lease_end: u64) -> Result<(), JournalError> {
        let mut floor = lock(&self.floor);
        if lease_end <= floor.value() {
            return Ok(());
        }
        self.meta.insert("lease_end", &seq_key(lease_end))?;
        floor.update(lease_end, false);
        self.counters.seq_floor.store(floor.value(), Relaxed);
        Ok(())
    }
}

impl Journal {
    /// Open (or create) the journal; a corrupt journal is quarantined, one that cannot be
    /// used for another reason (permissions, a full disk, another process) is refused.
    pub fn open(cfg: JournalConfig) -> Result<Journal, JournalError> {
        let opened = open::open_or_quarantine(&cfg)?;
        let path = cfg.path.clone();
        // Writing at open (the lease, the floor) meets a full disk first.
        Journal::start(cfg, opened).map_err(|e| refuse::storage(&path, e))
    }

    fn start(cfg: JournalConfig, opened: open::Opened) -> Result<Journal, JournalError> {
        let open::Opened {
            db,
            quarantine,
            lock: lock_file,
        } = opened;
        let mut floor = SeqFloor::read(&cfg.path).map_err(|e| {
            let file = floor::beside(&cfg.path, ".seq").unwrap_or_else(|_| cfg.path.clone());
            refuse::io(&cfg.path, &file, &e)
        })?;
        let frames = db.open_tree("frames")?;
        let cursors = db.open_tree("cursors")?;
        let meta = db.open_tree("meta")?;
        let counters = Counters::default();
        counters.beat();
        counters.scan(&frames)?;
        counters
            .evicted
            .store(meta_u64(&meta, "evicted")?.unwrap_or(0), Relaxed);
        // Where to continue: after a clean close exactly where we stopped, after a crash
        // above every seq that may have been handed out (the durable lease), and above the
        // floor file (a journal quarantined or deleted since).
        let last_stored = counters.last_seq.load(Relaxed);
        let clean = meta_u64(&meta, "clean_next")?;
        let lease = meta_u64(&meta, "lease_end")?;
        let next_seq = [
            clean.unwrap_or(1),
            lease.map_or(1, |l| l + 1),
            last_stored + 1,
            floor.value() + 1,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let lease_end = next_seq + SEQ_LEASE - 1;
        meta.insert("lease_end", &seq_key(lease_end))?;
        meta.remove("clean_next")?;
        floor
            .raise(lease_end)
            .map_err(|e| refuse::io(&cfg.path, floor.path(), &e))?;
        counters.seq_floor.store(floor.value(), Relaxed);
        db.flush()?;
        // The data file and the directory entries sled created (for a new journal).
        let data = std::fs::File::open(cfg.path.join("db"))
            .and_then(|data| {
                data.sync_data()?;
                std::fs::File::open(&cfg.path)?.sync_all()?;
                Ok(data)
            })
            .map_err(|e| JournalError::Sled(sled::Error::Io(e)))?;
        counters.last_seq.store(next_seq - 1, Relaxed);
        counters.durable_seq.store(next_seq - 1, Relaxed);
        let (durable, _) = watch::channel(next_seq - 1);
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let inner = Arc::new(Inner {
            cfg,
            db,
            frames,
            cursors,
            meta,
            write: Mutex::new(WriteState {
                next_seq,
                lease_end,
                closed: false,
                pending: VecDeque::new(),
                pending_bytes: 0,
            }),
            counters,
            durable,
            live,
            wake: (Mutex::new(false), Condvar::new()),
            sinks: Mutex::new(BTreeSet::new()),
            quarantine,
            flow: Flow::default(),
            floor: Mutex::new(floor),
            _lock: lock_file,
            data,
        });
        let worker = Arc::clone(&inner);
        let flusher = std::thread::Builder::new()
            .name("journal-flush".into())
            .spawn(move || worker.flush_loop())?;
        tracing::info!(
            path = %inner.cfg.path.display(),
            frames = inner.counters.frames.load(Relaxed),
            next_seq,
            "journal open"
        );
        Ok(Journal {
            inner,
            flusher: Arc::new(Mutex::new(Some(flusher))),
        })
    }

    /// Append a frame: assigns and returns its seq, publishes it live. Durable after the
    /// next group commit; see [`Journal::wait_durable`].
    pub fn append(&self, frame: Frame) -> Result<u64, JournalError> {
        let seqs = self.append_many(vec![frame])?;
        Ok(*seqs.end())
    }

    /// Append several frames at once; returns the seq range they received. When the write
    /// queue is full the frames are dropped with [`JournalError::Full`]; see
    /// [`Journal::try_append_many`] to keep them.
    pub fn append_many(
        &self,
        mut frames: Vec<Frame>,
    ) -> Result<std::ops::RangeInclusive<u64>, JournalError> {
        self.try_append_many(&mut frames)
    }

    /// Append `frames`, waiting up to `limit` for room when the write queue is full (the
    /// source stops reading meanwhile, so the device's side buffers); past it the frames are
    /// dropped with [`JournalError::Full`] for the caller to count.
    pub async fn append_many_within(
        &self,
        mut frames: Vec<Frame>,
        limit: std::time::Duration,
    ) -> Result<std::ops::RangeInclusive<u64>, JournalError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.try_append_many(&mut frames) {
                Err(JournalError::Full {
                    needed, frames: n, ..
                }) if tokio::time::Instant::now() < deadline => {
                    let room = self.wait_room(n, needed);
                    if tokio::time::timeout_at(deadline, room).await.is_err() {
                        return self.append_many(frames);
                    }
                }
                other => return other,
            }
        }
    }

    /// Append all of `frames` (emptying it) or, when the write queue cannot take them, none
    /// ([`JournalError::Full`], `frames` untouched). An empty queue takes any batch.
    pub fn try_append_many(
        &self,
        frames: &mut Vec<Frame>,
    ) -> Result<std::ops::RangeInclusive<u64>, JournalError> {
        let inner = &self.inner;
        let at = Instant::now();
        // Records carry no seq, so they are encoded before the lock is taken.
        let records: Vec<Vec<u8>> = frames.iter().map(Frame::encode).collect();
        let needed: u64 = records
            .iter()
            .map(|r| r.len() as u64 + PENDING_OVERHEAD)
            .sum();
        let max = inner.cfg.pending_max_bytes.0;
        let mut st = lock(&inner.write);
        if st.closed {
            return Err(JournalError::Closed);
        }
        let first = st.next_seq;
        if frames.is_empty() {
            return Ok(first..=first - 1);
        }
        let count = frames.len() as u64;
        if !st.fits(count, needed, max) {
            let pending = st.pending_bytes;
            drop(st);
            inner.counters.full.fetch_add(1, Relaxed);
            inner.commit_now();
            return Err(JournalError::Full {
                needed,
                frames: count,
                pending,
                max,
            });
        }
        let last = first + count - 1;
        if last > st.lease_end {
            // The flusher extends the lease ahead of us with every commit; with nothing
            // queued (`fits`) this is the fallback, and the disk is not known to be stuck.
            st.lease_end = last + SEQ_LEASE;
            inner.persist_lease(st.lease_end)?;
            inner.db.flush()?;
        }
        // The frames themselves go here: what is queued and relayed is their records.
        let queued = st.pending.len();
        for (seq, (frame, record)) in (first..).zip(frames.drain(..).zip(records)) {
            st.pending.push_back(Pending {
                seq,
                ts_ms: frame.ts_ms,
                record: Arc::new(record),
            });
        }
        st.pending_bytes += needed;
        inner.counters.queued(st.pending.len(), st.pending_bytes);
        st.next_seq = last + 1;
        // Counted before anyone sees the frames: a WebSocket session decides from
        // `last_seq` that its replay has caught up (see `relay::ws`).
        inner.counters.appended(first, last);
        for p in st.pending.range(queued..) {
            // No receivers is fine: nobody is watching live right now.
            let _ = inner.live.send(Appended {
                seq: p.seq,
                record: Arc::clone(&p.record),
                at,
            });
        }
        let half_full = st.pending_bytes > max / 2;
        drop(st);
        if half_full {
            // The window gathers small appends; a queue this full is better written now.
            inner.commit_now();
        } else {
            inner.kick();
        }
        Ok(first..=last)
    }

    /// Wait until the write queue can take `frames` frames of `needed` bytes (those of a
    /// [`JournalError::Full`]) or is empty. Errors once the journal is closed.
    pub async fn wait_room(&self, frames: u64, needed: u64) -> Result<(), JournalError> {
        let inner = &self.inner;
        loop {
            let notified = inner.flow.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a commit in between still wakes us.
            notified.as_mut().enable();
            {
                let st = lock(&inner.write);
                if st.closed {
                    return Err(JournalError::Closed);
                }
                if st.fits(frames, needed, inner.cfg.pending_max_bytes.0) {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Ask for a group commit now instead of at the end of the `flush_ms` window: for a
    /// source that knows waiting is pointless (a broker whose in-flight window is full
    /// sends nothing more until it gets acks).
    pub fn commit_now(&self) {
        self.inner.commit_now();
    }

    /// Make every seq issued from now on greater than `seq`, durably (the seq floor and the
    /// lease are on disk when this returns). The Mongo sink calls it with the highest seq
    /// MongoDB already holds for this gateway. Returns whether the next seq moved.
    pub fn lift_floor(&self, seq: u64) -> Result<bool, JournalError> {
        let inner = &self.inner;
        let mut st = lock(&inner.write);
        if st.closed {
            return Err(JournalError::Closed);
        }
        if st.next_seq > seq {
            return Ok(false);
        }
        let next = seq.saturating_add(1);
        let lease_end = next.saturating_add(SEQ_LEASE - 1);
        inner.persist_lease(lease_end)?;
        inner.db.flush()?;
        tracing::info!(
            from = st.next_seq,
            to = next,
            "seq floor lifted: the next seq continues above what the destination holds"
        );
        st.next_seq = next;
        st.lease_end = st.lease_end.max(lease_end);
        Ok(true)
    }

    /// Wait until every seq ≤ `seq` is on disk (fsynced). Errors if the journal closed first.
    pub async fn wait_durable(&self, seq: u64) -> Result<u64, JournalError> {
        let mut rx = self.inner.durable.subscribe();
        let got = rx.wait_for(|d| *d >= seq).await.map(|d| *d);
        got.map_err(|_| JournalError::Closed)
    }

    /// Blocking form of [`Journal::wait_durable`] for threads outside the runtime.
    pub fn wait_durable_blocking(&self, seq: u64) -> Result<u64, JournalError> {
        loop {
            let d = self.durable_seq();
            if d >= seq {
                return Ok(d);
            }
            if lock(&self.inner.write).closed {
                return Err(JournalError::Closed);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The highest seq known to be durable.
    pub fn durable_seq(&self) -> u64 {
        self.inner.counters.durable_seq.load(SeqCst)
    }

    /// The seq the next append gets.
    pub fn next_seq(&self) -> u64 {
        lock(&self.inner.write).next_seq
    }

    /// The highest seq issued so far.
    pub fn last_seq(&self) -> u64 {
        self.inner.counters.last_seq.load(SeqCst)
    }

    /// Time since the journal writer last showed progress (it turns at least once a second).
    pub fn heartbeat_age(&self) -> Duration {
        let beat = self.inner.counters.heartbeat_ms.load(Relaxed);
        let now = crate::frame::now_ms().max(0) as u64;
        Duration::from_millis(now.saturating_sub(beat))
    }

    /// Test hook: hold the writer lock, wedging appends and the flusher until dropped.
    #[cfg(test)]
    pub(crate) fn wedge(&self) -> std::sync::MutexGuard<'_, impl Sized> {
        lock(&self.inner.write)
    }

    /// Test hook: stall commits (appends still queue) until dropped.
    #[cfg(test)]
    pub(crate) fn stall(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.inner.flow.stall)
    }

    /// A receiver of every frame appended from now on, in seq order.
    pub fn subscribe(&self) -> broadcast::Receiver<Appended> {
        self.inner.live.subscribe()
    }

    /// Read up to `limit` frames with seq ≥ `from_seq`, in order, including frames not yet
    /// written to disk. Undecodable records are counted and skipped.
    pub fn range(&self, from_seq: u64, limit: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        self.each_record(from_seq, limit, |seq, record| {
            match Frame::decode(seq, record) {
                Ok(f) => out.push(f),
                Err(e) => self.record_decode_error(seq, &e),
            }
            out.len() < limit
        });
        out
    }

    /// Frames with seq ≥ `from_seq` with their payloads left as text: up to `limit`, and
    /// no more once their payloads add up to `max_bytes` (the first frame always comes).
    pub fn range_raw(&self, from_seq: u64, limit: usize, max_bytes: usize) -> Vec<RawFrame> {
        let mut out = Vec::new();
        let mut bytes = 0;
        self.scan(from_seq, limit, |v| {
            bytes += v.payload.get().len();
            if bytes > max_bytes && !out.is_empty() {
                return false;
            }
            out.push(v.to_raw());
            true
        });
        out
    }

    /// Visit up to `limit` records with seq ≥ `from_seq` in seq order, stored or still
    /// queued, as views (payloads not parsed), until `visit` returns false. Undecodable
    /// records are counted and skipped. Blocking I/O: keep it off the async workers.
    pub fn scan(&self, from_seq: u64, limit: usize, mut visit: impl FnMut(RecordView<'_>) -> bool) {
        let mut left = limit;
        self.each_record(from_seq, limit, |seq, record| {
            match Frame::view(seq, record) {
                Ok(v) => {
                    left -= 1;
                    visit(v) && left > 0
                }
                Err(e) => {
                    self.record_decode_error(seq, &e);
                    true
                }
            }
        });
    }

    /// Call `visit(seq, record)` for the records with seq ≥ `from_seq` in seq order, stored
    /// or still queued, until it returns false; `limit` bounds the queued ones taken.
    /// Damaged chunks are counted and skipped.
    fn each_record(&self, from_seq: u64, limit: usize, mut visit: impl FnMut(u64, &[u8]) -> bool) {
        if limit == 0 {
            return;
        }
        let inner = &self.inner;
        // Snapshot the queue first: the flusher writes frames to sled before dropping them
        // from the queue, so every frame is in the snapshot or in the sled read below.
        let queued: Vec<(u64, Arc<Vec<u8>>)> = lock(&inner.write)
            .pending
            .iter()
            .filter(|p| p.seq >= from_seq)
            .take(limit)
            .map(|p| (p.seq, Arc::clone(&p.record)))
            .collect();
        // The lowest seq not visited yet (the queue and the last chunks may overlap).
        let mut next = from_seq;
        let start = chunk_start(&inner.frames, from_seq);
        for item in inner.frames.range(seq_key(start)..) {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    tracing::error!(error = %e, "journal read failed");
                    break;
                }
            };
            let Some(first) = key_seq(&k) else { continue };
            let (h, raw) = match chunk::unpack(&v) {
                Ok(c) => c,
                Err(e) => {
                    inner.counters.record_decode_error(first, &e.to_string());
                    continue;
                }
            };
            for (seq, record) in (first..).zip(chunk::records(&raw, h.count)) {
                let record = match record {
                    Ok(r) => r,
                    Err(e) => {
                        inner.counters.record_decode_error(seq, &e.to_string());
                        break;
                    }
                };
                if seq < next {
                    continue;
                }
                next = seq + 1;
                if !visit(seq, record) {
                    return;
                }
            }
        }
        for (seq, record) in queued {
            if seq >= next {
                next = seq + 1;
                if !visit(seq, &record) {
                    return;
                }
            }
        }
    }

    /// Count (and log, rate-limited) a stored record that could not be decoded.
    pub fn record_decode_error(&self, seq: u64, e: &DecodeError) {
        self.inner.counters.record_decode_error(seq, &e.to_string());
    }

    /// The first seq of the stored chunk that holds `seq` (else `seq`): where
    /// [`Journal::range`] starts reading (public for fieldgate-bench).
    pub fn chunk_start(&self, seq: u64) -> u64 {
        chunk_start(&self.inner.frames, seq)
    }

    /// One frame by seq, if still in the journal.
    pub fn get(&self, seq: u64) -> Option<Frame> {
        self.range(seq, 1).into_iter().find(|f| f.seq == seq)
    }

    /// A named sink cursor; registering it makes retention wait for its acks.
    pub fn cursor(&self, name: &str) -> Cursor {
        lock(&self.inner.sinks).insert(name.to_string());
        Cursor {
            journal: self.clone(),
            name: name.to_string(),
        }
    }

    /// Named sled tree for registries (`devices`, `vehicles`, `keys`).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, JournalError> {
        Ok(self.inner.db.open_tree(name)?)
    }

    /// Current statistics.
    pub fn stats(&self) -> JournalStats {
        let inner = &self.inner;
        let sinks = lock(&inner.sinks).clone();
        let cursors = sinks
            .into_iter()
            .map(|n| {
                let acked = self.cursor_acked(&n);
                (n, acked)
            })
            .collect();
        let mut stats = inner.counters.snapshot(
            inner.db.size_on_disk().unwrap_or(0),
            cursors,
            inner.quarantine.clone(),
        );
        stats.pending_max_bytes = inner.cfg.pending_max_bytes.0;
        stats
    }

    /// Force a group commit now and wait for it.
    pub async fn flush(&self) -> Result<u64, JournalError> {
        let last = self.last_seq();
        self.inner.kick();
        self.wait_durable(last).await
    }

    /// Stop accepting appends, write and flush everything, and record a clean close.
    pub fn close(&self) -> Result<(), JournalError> {
        let inner = &self.inner;
        let next = {
            let mut st = lock(&inner.write);
            if st.closed {
                return Ok(());
            }
            st.closed = true;
            st.next_seq
        };
        inner.commit_now();
        inner.flow.room.notify_waiters();
        // The flusher writes what is queued and exits once it sees `closed`.
        if let Some(handle) = lock(&self.flusher).take() {
            if handle.join().is_err() {
                tracing::error!("journal flusher panicked");
            }
        }
        let unwritten = lock(&inner.write).pending.len();
        if unwritten > 0 {
            tracing::error!(
                frames = unwritten,
                "journal closed with frames it could not write"
            );
        }
        inner.meta.insert("clean_next", &seq_key(next))?;
        inner.meta.insert("lease_end", &seq_key(next - 1))?;
        inner.db.flush()?;
        inner.sync_data()?;
        // Exactly the last seq issued: the next open continues there, not past the lease.
        let mut floor = lock(&inner.floor);
        floor.update(next - 1, true);
        inner.counters.seq_floor.store(floor.value(), Relaxed);
        tracing::info!(last_seq = next - 1, "journal closed");
        Ok(())
    }

    fn cursor_acked(&self, name: &str) -> u64 {
        meta_u64(&self.inner.cursors, name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Run one maintenance round now (eviction + retention), as the flusher does.
    pub fn maintain(&self) -> Result<(), JournalError> {
        self.inner.maintain(true)
    }
}

/// A sink's position in the journal: the last seq it has acknowledged.
#[derive(Clone)]
pub struct Cursor {
    journal: Journal,
    name: String,
}

impl Cursor {
    /// The last acknowledged seq (0 = nothing yet).
    pub fn acked(&self) -> u64 {
        self.journal.cursor_acked(&self.name)
    }

    /// Record that every frame ≤ `seq` has been delivered; persisted with the next flush.
    pub fn ack(&self, seq: u64) -> Result<(), JournalError> {
        let inner = &self.journal.inner;
        inner.cursors.insert(self.name.as_bytes(), &seq_key(seq))?;
        inner.kick();
        Ok(())
    }

    /// Up to `limit` frames after the acknowledged position.
    pub fn read(&self, limit: usize) -> Vec<Frame> {
        self.journal.range(self.acked() + 1, limit)
    }
}

#[cfg(test)]
mod tests;
