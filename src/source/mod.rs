//! Sources: everything that produces frames for the journal.
//!
//! Each source is one task of (its config, the journal, a shutdown token, its status slot)
//! that returns when shutdown fires. Sources never talk to sinks or the relay directly.

pub mod can;
pub mod elm327;
pub mod events;
pub mod framing;
pub mod mqtt;
pub mod nmea;
pub mod obd;
pub mod port;
pub mod serial;
pub mod sim;
pub mod sim_devices;

use crate::config::ConfigError;
use crate::journal::Journal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What every source task is given: where frames go, its status slot, when to stop.
#[derive(Clone)]
pub struct SourceCtx {
    /// Gateway id for the frames.
    pub gateway: String,
    /// The journal frames are appended to.
    pub journal: Journal,
    /// This source's status entry.
    pub slot: SourceSlot,
    /// Fires on shutdown; the task returns soon after.
    pub shutdown: CancellationToken,
    /// Where a source that can write to its devices registers them for `command`s.
    pub commands: crate::relay::hub::CommandRoutes,
}

/// `[sources]`: every configured source, by kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// Serial ports.
    #[serde(default)]
    pub serial: Vec<serial::SerialConfig>,
    /// ELM327 OBD-II adapters.
    #[serde(default)]
    pub obd: Vec<obd::ObdConfig>,
    /// MQTT brokers.
    #[serde(default)]
    pub mqtt: Vec<mqtt::MqttConfig>,
    /// Simulated vehicles.
    #[serde(default)]
    pub sim: Vec<sim::SimConfig>,
    /// CAN buses.
    #[serde(default)]
    pub can: Vec<can::CanConfig>,
}

impl SourcesConfig {
    /// `(key path, name)` of every source, for uniqueness checks.
    pub fn names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, s) in self.serial.iter().enumerate() {
            out.push((format!("sources.serial[{i}]"), s.name.clone()));
        }
        for (i, s) in self.obd.iter().enumerate() {
            out.push((format!("sources.obd[{i}]"), s.name.clone()));
        }
        for (i, s) in self.mqtt.iter().enumerate() {
            out.push((format!("sources.mqtt[{i}]"), s.name.clone()));
        }
        for (i, s) in self.sim.iter().enumerate() {
            out.push((format!("sources.sim[{i}]"), s.name.clone()));
        }
        for (i, s) in self.can.iter().enumerate() {
            out.push((format!("sources.can[{i}]"), s.name.clone()));
        }
        out
    }

    /// Per-source checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, s) in self.serial.iter().enumerate() {
            s.validate(&format!("sources.serial[{i}]"))?;
        }
        for (i, s) in self.obd.iter().enumerate() {
            s.validate(&format!("sources.obd[{i}]"))?;
        }
        for (i, s) in self.mqtt.iter().enumerate() {
            s.validate(&format!("sources.mqtt[{i}]"))?;
        }
        for (i, s) in self.can.iter().enumerate() {
            s.validate(&format!("sources.can[{i}]"))?;
        }
        Ok(())
    }
}

/// What a source is doing right now, as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceState {
    /// Source kind: `serial`, `obd`, `mqtt`, `sim`, `can`.
    pub kind: &'static str,
    /// `starting`, `running`, `waiting` (device absent / broker down), `stopped`.
    pub state: String,
    /// Frames this source journaled in this run.
    pub frames: u64,
    /// Input it rejected in this run.
    pub invalid: u64,
    /// `invalid` split by reason (`bad_checksum`, `too_long`, `timeout`, ...), for
    /// `fieldgate_frames_invalid_total{source, reason}`.
    pub invalid_by_reason: BTreeMap<String, u64>,
    /// Last error, if any; cleared once the source runs again.
    pub last_error: Option<String>,
    /// Counters the source's broker publishes (MQTT `$SYS`, broker-wide), by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub broker: BTreeMap<&'static str, u64>,
    /// When `last_error` happened, unix ms.
    pub last_error_at_ms: Option<i64>,
    /// What a simulator produced, by kind: `gps`/`obd` samples journaled (direct mode), or
    /// `nmea` sentences and `elm327` answers written to its ptys for the serial and OBD
    /// sources to read (pty mode, where its own `frames` stay 0). Empty for other sources.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub produced: BTreeMap<&'static str, u64>,
    /// Source-specific status (a CAN bus: decoded messages, top unknown ids, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// When the source's loop last turned (see [`SourceSlot::beat`]).
    #[serde(skip)]
    pub last_beat: Instant,
    /// Silence after which this source counts as wedged.
    #[serde(skip)]
    pub wedged_after: Duration,
}

/// A source whose loop has not turned for this long (and is not `stopped`) is wedged: far
/// longer than any backoff sleep (≤ 10 s), serial/OBD timeout or beat interval.
pub const SOURCE_WEDGED_AFTER: Duration = Duration::from_secs(60);

/// How often an idle source loop beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// The interval a source loop selects on to beat while idle (first tick after
/// [`BEAT_EVERY`]; missed ticks are not caught up).
pub fn beat_interval() -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + BEAT_EVERY, BEAT_EVERY);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Status slots of all sources, shared between the sources and the API.
#[derive(Clone, Default)]
pub struct SourceStates(Arc<Mutex<BTreeMap<String, SourceState>>>);

impl SourceStates {
    /// Register a source and get its slot.
    pub fn register(&self, name: &str, kind: &'static str) -> SourceSlot {
        self.lock().insert(
            name.to_string(),
            SourceState {
                kind,
                state: "starting".into(),
                frames: 0,
                invalid: 0,
                invalid_by_reason: BTreeMap::new(),
                last_error: None,
                broker: BTreeMap::new(),
                last_error_at_ms: None,
                produced: BTreeMap::new(),
                detail: None,
                last_beat: Instant::now(),
                wedged_after: SOURCE_WEDGED_AFTER,
            },
        );
        SourceSlot {
            states: self.clone(),
            name: name.to_string(),
        }
    }

    /// A copy of every source's state.
    pub fn snapshot(&self) -> BTreeMap<String, SourceState> {
        self.lock().clone()
    }

    /// Sources that are not `stopped` and whose loop has been silent longer than their
    /// `wedged_after`, with how long they have been silent.
    pub fn wedged(&self) -> Vec<(String, Duration)> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.state != "stopped" && s.last_beat.elapsed() > s.wedged_after)
            .map(|(name, s)| (name.clone(), s.last_beat.elapsed()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SourceState>> {
        crate::sync::lock(&self.0)
    }
}

/// One source's handle on its status entry.
#[derive(Clone)]
pub struct SourceSlot {
    states: SourceStates,
    name: String,
}

impl SourceSlot {
    /// Apply `f` to this source's status entry.
    fn update(&self, f: impl FnOnce(&mut SourceState)) {
        if let Some(s) = self.states.lock().get_mut(&self.name) {
            f(s);
        }
    }

    /// Record that the source's loop turned (it is alive, idle or not); the systemd
    /// watchdog is withheld when a running source stops beating.
    pub fn beat(&self) {
        self.update(|s| s.last_beat = Instant::now());
    }

    /// Silence after which this source counts as wedged (default [`SOURCE_WEDGED_AFTER`]).
    pub fn set_wedged_after(&self, after: Duration) {
        self.update(|s| s.wedged_after = after);
    }

    /// Change the state word and record `error` (with its time); `running` without an
    /// error clears the last one: it is over.
    pub fn set_state(&self, state: &str, error: Option<String>) {
        self.update(|s| {
            s.last_beat = Instant::now();
            s.state = state.to_string();
            if error.is_some() {
                s.last_error = error;
                s.last_error_at_ms = Some(crate::frame::now_ms());
            } else if state == "running" {
                s.last_error = None;
                s.last_error_at_ms = None;
            }
        });
    }

    /// Count `n` journaled frames.
    pub fn add_frames(&self, n: u64) {
        self.update(|s| {
            s.last_beat = Instant::now();
            s.frames += n;
        });
    }

    /// Count `n` items of `kind` written for other sources to read.
    pub fn add_produced(&self, kind: &'static str, n: u64) {
        self.update(|s| {
            s.last_beat = Instant::now();
            *s.produced.entry(kind).or_default() += n;
        });
    }

    /// Replace the source-specific status shown in `/api/status`.
    pub fn set_detail(&self, detail: serde_json::Value) {
        self.update(|s| s.detail = Some(detail));
    }

    /// Count one rejected input.
    pub fn add_invalid(&self) {
        self.update(|s| s.invalid += 1);
    }

    /// Record a counter the source's broker reported.
    pub fn set_broker_stat(&self, name: &'static str, value: u64) {
        self.update(|s| {
            s.broker.insert(name, value);
        });
    }

    /// Count `n` rejected inputs for `reason` (also added to `invalid`).
    pub fn add_invalid_reason(&self, reason: &str, n: u64) {
        self.update(|s| {
            s.invalid += n;
            *s.invalid_by_reason.entry(reason.to_string()).or_default() += n;
        });
    }
}
