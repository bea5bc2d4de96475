//! The hub: one task that follows the journal live, encodes each frame once, writes it to
//! every client socket that wants it, and keeps the live status of devices and vehicles.
//! At start the live status is seeded from the newest stored records' routing fields and
//! position members, without parsing whole payloads.

use super::conn::{text_frame, Conn, DeliveryTotals};
use super::latency::LatencyHistogram;
use crate::frame::RecordView;
use crate::journal::{Appended, Journal};
use crate::sync::lock;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How many recent frames seed the live status at start.
const SEED_FRAMES: usize = 5_000;
/// Most frames the hub prepares before it publishes them.
const BURST_MAX: usize = 256;
/// Most bytes of encoded frames the hub prepares before it publishes them.
const BURST_BYTES: usize = 1 << 20;

/// A frame ready to send: its routing fields and its TMD text as a WebSocket frame.
pub struct LiveFrame {
    /// Journal seq.
    pub seq: u64,
    /// Device id.
    pub device: String,
    /// Vehicle id.
    pub vehicle: Option<String>,
    /// Kind.
    pub kind: String,
    /// `{"type":"frame","message":"","data":<Frame>}` in a server text frame.
    pub wire: Bytes,
    /// When the journal appended it; `None` for a frame replayed from storage.
    pub appended: Option<Instant>,
}

impl LiveFrame {
    /// A frame's `frame` message as a server WebSocket text frame (from a
    /// [`crate::frame::Frame`] or a [`RecordView`] of its record: the same JSON).
    pub fn encode(f: &impl Serialize) -> Bytes {
        text_frame(super::tmd("frame", "", f))
    }

    /// Encode a stored frame once for all clients.
    pub fn new(f: &RecordView<'_>, appended: Option<Instant>) -> Self {
        LiveFrame {
            seq: f.seq,
            device: f.device.to_string(),
            vehicle: f.vehicle.map(str::to_string),
            kind: f.kind.to_string(),
            wire: Self::encode(f),
            appended,
        }
    }
}

/// What the live status takes from one frame.
struct Sighting<'a> {
    seq: u64,
    device: &'a str,
    vehicle: Option<&'a str>,
    kind: &'a str,
    ts_ms: i64,
    position: Option<[f64; 2]>,
    speed_kmh: Option<f64>,
}

/// The payload members the live status reads; the others are skipped unparsed.
#[derive(Deserialize)]
struct LiveMembers {
    lat: Option<Value>,
    lon: Option<Value>,
    speed_kmh: Option<Value>,
}

impl<'a> Sighting<'a> {
    /// From a stored record; positions and speeds are only kept per vehicle, so a frame
    /// without one is not looked into.
    fn of(v: &RecordView<'a>) -> Self {
        let members = v
            .vehicle
            .and_then(|_| serde_json::from_str::<LiveMembers>(v.payload.get()).ok());
        let num = |m: &Option<Value>| m.as_ref().and_then(Value::as_f64);
        let (position, speed_kmh) = match &members {
            Some(m) => (
                num(&m.lat).zip(num(&m.lon)).map(|(lat, lon)| [lat, lon]),
                num(&m.speed_kmh),
            ),
            None => (None, None),
        };
        Sighting {
            seq: v.seq,
            device: v.device,
            vehicle: v.vehicle,
            kind: v.kind,
            ts_ms: v.ts_ms,
            position,
            speed_kmh,
        }
    }
}

/// Last known state of a device, derived from its frames.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceLive {
    /// Last frame time, unix ms.
    pub last_seen_ms: i64,
    /// Seq of that frame.
    pub last_seq: u64,
    /// Its kind.
    pub last_kind: String,
    /// Frames seen in this run.
    pub frames: u64,
}

/// Last known state of a vehicle, derived from its frames.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VehicleLive {
    /// Last frame time, unix ms.
    pub last_seen_ms: i64,
    /// Last position `[lat, lon]`.
    pub position: Option<[f64; 2]>,
    /// Last speed, km/h.
    pub speed_kmh: Option<f64>,
    /// Seq of the last frame.
    pub last_seq: u64,
}

/// A connected WebSocket client, as `/api/connections` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    /// Session id.
    pub id: u64,
    /// The subprotocol it offered first (the seed client's name).
    pub name: String,
    /// Peer address.
    pub address: SocketAddr,
    /// Key id it authenticated with.
    pub key_id: String,
    /// Connect time, unix ms.
    pub connected_at_ms: i64,
    /// Current filters.
    pub filters: serde_json::Value,
    /// Frames sent.
    pub sent: u64,
    /// Frames dropped because it lagged.
    pub dropped: u64,
}

/// The live fan-out point, shared by the API and every session.
pub struct Hub {
    clients: Mutex<BTreeMap<u64, (ClientInfo, Arc<Conn>)>>,
    /// The connections the hub writes to, copied on connect/disconnect so that a burst
    /// takes the lock once.
    fanout: Mutex<Arc<[Arc<Conn>]>>,
    devices: Mutex<HashMap<String, DeviceLive>>,
    vehicles: Mutex<HashMap<String, VehicleLive>>,
    next_id: AtomicU64,
    commands: CommandRoutes,
    /// Frames published to clients in this run.
    pub published: AtomicU64,
    /// Frames the hub itself missed (it fell behind the journal).
    pub hub_lagged: AtomicU64,
    /// Journal append → client socket, per delivery.
    pub relay_latency: Arc<LatencyHistogram>,
    /// Frames sent to / dropped for all clients in this run, departed ones included.
    pub delivery: Arc<DeliveryTotals>,
}

/// Where commands for a device go: sources that can write to a device register here.
#[derive(Clone, Default)]
pub struct CommandRoutes(Arc<Mutex<HashMap<String, mpsc::Sender<serde_json::Value>>>>);

impl CommandRoutes {
    /// Route commands for `device` to `tx` (replacing an earlier route).
    pub fn register(&self, device: &str, tx: mpsc::Sender<serde_json::Value>) {
        lock(&self.0).insert(device.to_string(), tx);
    }

    /// Send a command; errors name why it could not be delivered.
    pub fn send(&self, device: &str, payload: serde_json::Value) -> Result<(), String> {
        let routes = lock(&self.0);
        let tx = routes
            .get(device)
            .ok_or_else(|| format!("device {device:?} has no command route"))?;
        tx.try_send(payload).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                format!("device {device:?} command queue is full")
            }
            mpsc::error::TrySendError::Closed(_) => format!("device {device:?} is not connected"),
        })
    }
}

/// Apply `f` to the entry for `key`, created on first sight (the key is only copied then).
fn update<V: Default>(map: &mut HashMap<String, V>, key: &str, f: impl FnOnce(&mut V)) {
    match map.get_mut(key) {
        Some(v) => f(v),
        None => f(map.entry(key.to_string()).or_default()),
    }
}

impl Hub {
    /// Start the hub task following `journal` until `shutdown`.
    pub fn spawn(
        journal: &Journal,
        commands: CommandRoutes,
        shutdown: CancellationToken,
    ) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            clients: Mutex::default(),
            fanout: Mutex::new(Arc::new([])),
            devices: Mutex::default(),
            vehicles: Mutex::default(),
            next_id: AtomicU64::new(1),
            commands,
            published: AtomicU64::new(0),
            hub_lagged: AtomicU64::new(0),
            relay_latency: Arc::default(),
            delivery: Arc::default(),
        });
        let mut rx = journal.subscribe();
        let from = journal.last_seq().saturating_sub(SEED_FRAMES as u64) + 1;
        journal.scan(from, SEED_FRAMES, |v| {
            hub.observe(&Sighting::of(&v));
            true
        });
        let h = Arc::clone(&hub);
        let journal = journal.clone();
        tokio::spawn(async move {
            let mut burst = Vec::with_capacity(BURST_MAX);
            let mut bytes = 0;
            loop {
                let got = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = rx.recv() => got,
                };
                let mut got = got.map_err(|e| match e {
                    RecvError::Lagged(n) => TryRecvError::Lagged(n),
                    RecvError::Closed => TryRecvError::Closed,
                });
                loop {
                    match got {
                        Ok(f) => {
                            if let Some(lf) = h.prepare(&f, &journal) {
                                bytes += lf.wire.len();
                                burst.push(lf);
                            }
                        }
                        Err(TryRecvError::Lagged(n)) => {
                            h.hub_lagged.fetch_add(n, Relaxed);
                            tracing::warn!(missed = n, "live hub fell behind the journal");
                        }
                        Err(TryRecvError::Closed) => {
                            h.publish(&mut burst);
                            return;
                        }
                        Err(TryRecvError::Empty) => break,
                    }
                    if burst.len() == BURST_MAX || bytes >= BURST_BYTES {
                        break;
                    }
                    got = rx.try_recv();
                }
                h.publish(&mut burst);
                bytes = 0;
            }
        });
        hub
    }

    /// Serialize a frame and note it in the live status; `None` for a record that does not
    /// decode (counted by the journal).
    fn prepare(&self, a: &Appended, journal: &Journal) -> Option<Arc<LiveFrame>> {
        let v = match a.view() {
            Ok(v) => v,
            Err(e) => {
                journal.record_decode_error(a.seq, &e);
                return None;
            }
        };
        self.observe(&Sighting::of(&v));
        Some(Arc::new(LiveFrame::new(&v, Some(a.at))))
    }

    /// Write a prepared burst to every client that wants it: one `writev` per client per
    /// burst, straight from this task; a client whose socket is full gets it queued.
    fn publish(&self, burst: &mut Vec<Arc<LiveFrame>>) {
        self.published.fetch_add(burst.len() as u64, Relaxed);
        for c in self.conns().iter() {
            c.deliver(burst);
        }
        burst.clear();
    }

    /// Update live device/vehicle status from a frame.
    fn observe(&self, f: &Sighting<'_>) {
        update(&mut lock(&self.devices), f.device, |e: &mut DeviceLive| {
            e.last_seen_ms = e.last_seen_ms.max(f.ts_ms);
            e.last_seq = f.seq;
            if e.last_kind != f.kind {
                f.kind.clone_into(&mut e.last_kind);
            }
            e.frames += 1;
        });
        if let Some(v) = f.vehicle {
            update(&mut lock(&self.vehicles), v, |e: &mut VehicleLive| {
                e.last_seen_ms = e.last_seen_ms.max(f.ts_ms);
                e.last_seq = f.seq;
                if f.position.is_some() {
                    e.position = f.position;
                }
                if f.speed_kmh.is_some() {
                    e.speed_kmh = f.speed_kmh;
                }
            });
        }
    }

    /// Relay a `broadcast` message to every client.
    pub fn broadcast(&self, text: String) {
        let wire = text_frame(text);
        for c in self.conns().iter() {
            c.broadcast(&wire);
        }
    }

    /// Deliver a command to the source that owns `device`.
    pub fn route_command(&self, device: &str, payload: serde_json::Value) -> Result<(), String> {
        self.commands.send(device, payload)
    }

    /// Register a client's connection (live frames start flowing to it); returns its id.
    pub fn add_client(&self, mut info: ClientInfo, conn: Arc<Conn>) -> u64 {
        let id = self.next_id.fetch_add(1, Relaxed);
        info.id = id;
        let mut clients = lock(&self.clients);
        clients.insert(id, (info, conn));
        self.refresh_fanout(&clients);
        id
    }

    /// The connections now registered (a snapshot: the lock is not held while writing).
    fn conns(&self) -> Arc<[Arc<Conn>]> {
        Arc::clone(&lock(&self.fanout))
    }

    fn refresh_fanout(&self, clients: &BTreeMap<u64, (ClientInfo, Arc<Conn>)>) {
        *lock(&self.fanout) = clients.values().map(|(_, c)| Arc::clone(c)).collect();
    }

    /// Update a client's entry.
    pub fn update_client(&self, id: u64, f: impl FnOnce(&mut ClientInfo)) {
        if let Some((c, _)) = lock(&self.clients).get_mut(&id) {
            f(c);
        }
    }

    /// Forget a client.
    pub fn remove_client(&self, id: u64) {
        let mut clients = lock(&self.clients);
        clients.remove(&id);
        self.refresh_fanout(&clients);
    }

    /// Connected clients.
    pub fn clients(&self) -> Vec<ClientInfo> {
        lock(&self.clients)
            .values()
            .map(|(c, n)| ClientInfo {
                sent: n.sent.load(Relaxed),
                dropped: n.dropped.load(Relaxed),
                ..c.clone()
            })
            .collect()
    }

    /// Live status of one vehicle.
    pub fn vehicle(&self, id: &str) -> Option<VehicleLive> {
        lock(&self.vehicles).get(id).cloned()
    }

    /// Live status of one device.
    pub fn device(&self, id: &str) -> Option<DeviceLive> {
        lock(&self.devices).get(id).cloned()
    }

    /// Ids of every vehicle seen in frames.
    pub fn seen_vehicles(&self) -> Vec<String> {
        lock(&self.vehicles).keys().cloned().collect()
    }

    /// Ids of every device seen in frames.
    pub fn seen_devices(&self) -> Vec<String> {
        lock(&self.devices).keys().cloned().collect()
    }
}
