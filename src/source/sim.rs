//! The simulator: a synthetic vehicle driving a looped route, for `fieldgate demo`.
//!
//! It needs no hardware, broker or database, so a newcomer's first run shows frames
//! flowing. The model is simple but physical enough to look right on a dashboard: speed
//! follows a drifting target, position advances along the route by speed × time, rpm
//! follows speed through a gear ratio, the coolant warms up, the battery charges.

use crate::frame::Frame;
use crate::source::events::{count_append, LogLimit};
use crate::source::SourceCtx;
use crate::units::Positive;
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// `[[sources.sim]]`: one simulated vehicle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Source name (unique).
    #[serde(default = "default_name")]
    pub name: String,
    /// Vehicle id of the frames.
    #[serde(default = "default_vehicle")]
    pub vehicle: String,
    /// Time between samples, ms (each sample is one gps and one obd frame).
    #[serde(default = "default_interval")]
    pub interval_ms: Positive,
    /// Random seed, so runs are reproducible.
    #[serde(default)]
    pub seed: u64,
    /// `direct` (journal frames in-process) or `pty` (act as an NMEA GPS and an ELM327
    /// adapter on pseudo-terminals, for serial and OBD sources to read).
    #[serde(default)]
    pub mode: SimMode,
    /// `pty` mode: symlink to publish the GPS pty at (default `$TMPDIR/fieldgate-<name>/gps`).
    pub gps_link: Option<std::path::PathBuf>,
    /// `pty` mode: symlink to publish the OBD pty at (default `$TMPDIR/fieldgate-<name>/obd`).
    pub obd_link: Option<std::path::PathBuf>,
    /// `pty` mode: also act as an SLCAN adapter on a pty published here (see
    /// [`super::can::sim`]).
    pub can_link: Option<std::path::PathBuf>,
}

/// How the simulator delivers its vehicle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimMode {
    /// Frames straight into the journal.
    #[default]
    Direct,
    /// Through pseudo-terminals, as serial devices (see [`super::sim_devices`]).
    Pty,
}

fn default_name() -> String {
    "sim".into()
}
fn default_vehicle() -> String {
    "demo-van".into()
}
fn default_interval() -> Positive {
    Positive(200)
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            name: default_name(),
            vehicle: default_vehicle(),
            interval_ms: default_interval(),
            seed: 0,
            mode: SimMode::Direct,
            gps_link: None,
            obd_link: None,
            can_link: None,
        }
    }
}

/// A loop through Hamburg's port district (lat, lon).
const ROUTE: [(f64, f64); 6] = [
    (53.5461, 9.9661),
    (53.5413, 9.9842),
    (53.5300, 9.9930),
    (53.5222, 9.9710),
    (53.5310, 9.9480),
    (53.5420, 9.9520),
];

const EARTH_M: f64 = 6_371_000.0;

/// Metres between two points (equirectangular; fine at city scale).
fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let lat = ((a.0 + b.0) / 2.0).to_radians();
    let dx = (b.1 - a.1).to_radians() * libm::cos(lat);
    let dy = (b.0 - a.0).to_radians();
    (dx * dx + dy * dy).sqrt() * EARTH_M
}

/// Course over ground in degrees from a to b.
fn bearing_deg(a: (f64, f64), b: (f64, f64)) -> f64 {
    let lat = ((a.0 + b.0) / 2.0).to_radians();
    let dx = (b.1 - a.1) * libm::cos(lat);
    let dy = b.0 - a.0;
    (libm::atan2(dx, dy).to_degrees() + 360.0) % 360.0
}

/// The simulated vehicle's state.
pub struct Vehicle {
    rng: StdRng,
    leg: usize,
    along_m: f64,
    speed_kmh: f64,
    target_kmh: f64,
    coolant_c: f64,
    battery_v: f64,
}

/// One sample of the vehicle.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Course, degrees.
    pub course_deg: f64,
    /// Speed, km/h.
    pub speed_kmh: f64,
    /// Engine speed.
    pub rpm: f64,
    /// Coolant temperature, °C.
    pub coolant_c: f64,
    /// Battery voltage.
    pub battery_v: f64,
    /// Throttle position, %.
    pub throttle_pct: f64,
}

impl Vehicle {
    /// A vehicle parked at the route's start, engine cold.
    pub fn new(seed: u64) -> Self {
        Vehicle {
            rng: StdRng::seed_from_u64(seed),
            leg: 0,
            along_m: 0.0,
            speed_kmh: 0.0,
            target_kmh: 40.0,
            coolant_c: 18.0,
            battery_v: 12.4,
        }
    }

    /// Advance by `dt` seconds and sample.
    pub fn step(&mut self, dt: f64) -> Sample {
        if self.rng.random_bool(0.02) {
            self.target_kmh = self.rng.random_range(0.0..70.0);
        }
        let accel = (self.target_kmh - self.speed_kmh).clamp(-15.0 * dt, 8.0 * dt);
        self.speed_kmh = (self.speed_kmh + accel).max(0.0);
        self.along_m += self.speed_kmh / 3.6 * dt;
        loop {
            let (a, b) = (ROUTE[self.leg], ROUTE[(self.leg + 1) % ROUTE.len()]);
            let len = distance_m(a, b);
            if self.along_m < len {
                break;
            }
            self.along_m -= len;
            self.leg = (self.leg + 1) % ROUTE.len();
        }
        let (a, b) = (ROUTE[self.leg], ROUTE[(self.leg + 1) % ROUTE.len()]);
        let t = self.along_m / distance_m(a, b);
        self.coolant_c += (90.0 - self.coolant_c) * 0.01 * dt;
        self.battery_v += (14.1 - self.battery_v) * 0.05 * dt + self.rng.random_range(-0.01..0.01);
        let gear_ratio = match self.speed_kmh {
            s if s < 15.0 => 110.0,
            s if s < 30.0 => 70.0,
            s if s < 50.0 => 48.0,
            _ => 36.0,
        };
        let round = |x: f64, places: i32| (x * 10f64.powi(places)).round() / 10f64.powi(places);
        Sample {
            lat: round(a.0 + (b.0 - a.0) * t, 6),
            lon: round(a.1 + (b.1 - a.1) * t, 6),
            course_deg: round(bearing_deg(a, b), 1),
            speed_kmh: round(self.speed_kmh, 1),
            rpm: round((800.0 + self.speed_kmh * gear_ratio).min(6000.0), 0),
            coolant_c: round(self.coolant_c, 1),
            battery_v: round(self.battery_v, 2),
            throttle_pct: round((accel.max(0.0) / (8.0 * dt)) * 60.0 + 12.0, 1),
        }
    }
}

/// The two frames (gps, obd) a sample becomes.
pub fn frames(gateway: &str, cfg: &SimConfig, s: &Sample) -> [Frame; 2] {
    let mut gps = Frame::new(
        gateway,
        "sim",
        &format!("{}-gps", cfg.name),
        "gps",
        json!({"lat": s.lat, "lon": s.lon, "speed_kmh": s.speed_kmh, "course_deg": s.course_deg,
               "alt_m": 12.0, "fix": 1, "satellites": 9}),
    );
    let mut obd = Frame::new(
        gateway,
        "sim",
        &format!("{}-obd", cfg.name),
        "obd",
        json!({"rpm": s.rpm, "speed_kmh": s.speed_kmh, "coolant_c": s.coolant_c,
               "battery_v": s.battery_v, "throttle_pct": s.throttle_pct}),
    );
    gps.vehicle = Some(cfg.vehicle.clone());
    obd.vehicle = Some(cfg.vehicle.clone());
    [gps, obd]
}

/// Start the simulator. In `pty` mode its pseudo-terminals and links exist when this
/// returns, so the sources that read them (started after it) never see them missing; the
/// returned future runs it until shutdown.
pub fn start(cfg: SimConfig, ctx: SourceCtx) -> BoxFuture<'static, ()> {
    if cfg.mode == SimMode::Pty {
        let devices = super::sim_devices::SimDevices::open(&cfg);
        return Box::pin(super::sim_devices::run(devices, cfg, ctx));
    }
    Box::pin(run(cfg, ctx))
}

/// Run the in-process simulator until shutdown: a gps and an obd frame per interval.
async fn run(cfg: SimConfig, ctx: SourceCtx) {
    let SourceCtx {
        gateway,
        journal,
        slot,
        shutdown,
        ..
    } = ctx;
    let interval = Duration::from_millis(cfg.interval_ms.0);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut vehicle = Vehicle::new(cfg.seed);
    slot.set_state("running", None);
    let mut beat = super::beat_interval();
    let mut limit = LogLimit::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = beat.tick() => {
                slot.beat();
                continue;
            }
        }
        let sample = vehicle.step(interval.as_secs_f64());
        let appended = journal.append_many(frames(&gateway, &cfg, &sample).into());
        match count_append(appended, 2, &cfg.name, &slot, &mut limit) {
            Ok(true) => {
                slot.add_produced("gps", 1);
                slot.add_produced("obd", 1);
            }
            Ok(false) => {}
            Err(e) => {
                slot.set_state("stopped", Some(e.to_string()));
                tracing::error!(source = %cfg.name, error = %e, "simulator cannot journal; stopping");
                return;
            }
        }
    }
    slot.set_state("stopped", None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vehicle_moves_along_route_and_warms_up() {
        let mut v = Vehicle::new(1);
        let first = v.step(0.2);
        let mut last = first.clone();
        for _ in 0..3_000 {
            last = v.step(0.2);
            assert!((53.5..53.56).contains(&last.lat), "lat {}", last.lat);
            assert!((9.94..10.0).contains(&last.lon), "lon {}", last.lon);
            assert!((0.0..=6000.0).contains(&last.rpm));
        }
        assert!(distance_m((first.lat, first.lon), (last.lat, last.lon)) > 1.0);
        assert!(last.coolant_c > first.coolant_c + 20.0);
        assert!((12.0..15.0).contains(&last.battery_v));
    }

    #[test]
    fn same_seed_same_drive() {
        let (mut a, mut b) = (Vehicle::new(9), Vehicle::new(9));
        for _ in 0..100 {
            assert_eq!(a.step(0.5), b.step(0.5));
        }
    }
}
