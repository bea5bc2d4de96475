//! The demo vehicle's CAN adapter: an SLCAN device on a pseudo-terminal.
//!
//! `fieldgate demo` drives its simulated vehicle through real devices so a first run
//! exercises the real paths; this is the CAN one. It behaves like a CANable: it answers
//! the host's `C`/`Sn`/`O`/`L`/`F` commands, stays silent until the channel is opened,
//! then sends the vehicle's engine, vehicle, battery and tyre messages every sample,
//! encoded with the demo DBC shipped in `hardware/can/demo-vehicle.dbc` (compiled into
//! the binary, so the demo needs no files). Like a real adapter it never waits for a
//! reader: frames nobody reads are dropped. A `writable` host's transmits are acked (`z`).

use super::config::CanConfig;
use super::dbc::Database;
use super::{slcan, CanFrame};
use crate::config::ConfigError;
use crate::source::sim::Sample;
use crate::source::sim_devices::{publish_link, Pty};
use crate::source::{SourceSlot, SourcesConfig};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The demo vehicle's DBC.
pub const DEMO_DBC: &str = include_str!("../../../hardware/can/demo-vehicle.dbc");
/// How the demo DBC is named in logs and errors.
pub const DEMO_DBC_NAME: &str = "demo-vehicle.dbc (built in)";
/// Longest host command line kept.
const COMMAND_MAX: usize = 64;

/// Adds the simulated adapter (at `dir/can`) and a `can` source reading it to the demo.
pub fn wire_demo(sources: &mut SourcesConfig, dir: &Path) -> Result<(), ConfigError> {
    let Some(sim) = sources.sim.first_mut() else {
        return Ok(());
    };
    let link = dir.join("can");
    sim.can_link = Some(link.clone());
    let (name, vehicle) = (&sim.name, &sim.vehicle);
    let text = format!(
        "name = \"can\"\ninterface = \"slcan\"\npath = {link:?}\nbitrate = 500000\n\
         device = \"{name}-can\"\nvehicle = \"{vehicle}\"\n\
         rules = [{{ signal = \"Gear\", on_change = true, max_period_ms = 10000 }}, {{ signal = \"*\", min_period_ms = 1000 }}]\n"
    );
    let mut cfg: CanConfig =
        toml::from_str(&text).map_err(|e| ConfigError::invalid("demo sources", e.to_string()))?;
    cfg.embedded_dbc = vec![(DEMO_DBC_NAME, DEMO_DBC)];
    sources.can.push(cfg);
    Ok(())
}

/// A message to encode: name, length, physical values by signal.
type Message<'a> = (&'a str, usize, Vec<(&'a str, f64)>);

/// The frames one sample becomes; `wheel` picks the tyre the TYRES frame reports.
pub fn frames(db: &Database, s: &Sample, wheel: u8) -> Vec<CanFrame> {
    let gear = if s.speed_kmh < 0.5 { 0.0 } else { 3.0 };
    let messages: [Message; 4] = [
        (
            "ENGINE",
            8,
            vec![
                ("EngineSpeed", s.rpm),
                ("CoolantTemp", s.coolant_c),
                ("ThrottlePos", s.throttle_pct),
                ("EngineLoad", (s.throttle_pct * 0.8 + 10.0).min(100.0)),
            ],
        ),
        (
            "VEHICLE",
            8,
            vec![
                ("VehicleSpeed", s.speed_kmh),
                ("Gear", gear),
                (
                    "BrakePressed",
                    f64::from(u8::from(s.throttle_pct < 12.5 && s.speed_kmh > 0.5)),
                ),
                ("SteeringAngle", ((s.course_deg % 90.0) - 45.0) * 2.0),
            ],
        ),
        (
            "BATTERY",
            6,
            vec![
                ("BatteryVoltage", s.battery_v),
                ("BatteryCurrent", (s.battery_v - 12.6) * 20.0),
                ("BatteryTemp", 18.0 + s.coolant_c / 10.0),
            ],
        ),
        (
            "TYRES",
            4,
            vec![
                ("Wheel", f64::from(wheel)),
                ("PressureFL", 240.0),
                ("PressureFR", 242.0),
                ("PressureRL", 250.0),
                ("PressureRR", 248.0),
                ("TyreTemp", 15.0 + s.speed_kmh / 5.0),
            ],
        ),
    ];
    messages
        .iter()
        .filter_map(|(name, len, values)| {
            let m = db.messages.iter().find(|m| m.name == *name)?;
            // The multiplexed pressures share bits: only the selected wheel's is written.
            let values: Vec<(&str, f64)> = values
                .iter()
                .filter(|(n, _)| {
                    !n.starts_with("Pressure")
                        || n.ends_with(["FL", "FR", "RL", "RR"][usize::from(wheel % 4)])
                })
                .copied()
                .collect();
            CanFrame::new(m.key, false, &m.encode(*len, &values))
        })
        .collect()
}

/// What the adapter answers to one host command line, and whether its channel is open.
fn answer(line: &[u8], open: &mut bool, normal: &mut bool) -> &'static [u8] {
    match line.first() {
        Some(b'C') => {
            *open = false;
            b"\r"
        }
        Some(b'O') | Some(b'L') => {
            *open = true;
            *normal = line[0] == b'O';
            b"\r"
        }
        Some(b'S') if line.len() == 2 => b"\r",
        Some(b'F') => b"F00\r",
        Some(b'V') => b"V1013\r",
        Some(b't' | b'T' | b'r' | b'R') if *open && *normal => b"z\r",
        _ => b"\x07",
    }
}

/// Opens the adapter's pty and publishes it at `link` (before the `can` source starts, so
/// it finds the device at its first try).
pub fn open(link: &Path) -> std::io::Result<Pty> {
    let pty = Pty::open()?;
    pty.set_nonblocking()?;
    publish_link(link, &pty.path)?;
    Ok(pty)
}

/// Serves the adapter on `pty` (from [`open`], published at `link`) until `stop`; frames
/// of the latest sample go out every `interval` while the host has the channel open, and
/// are counted in the simulator's `produced` as `can`.
pub async fn serve(
    pty: std::io::Result<Pty>,
    link: PathBuf,
    rx: watch::Receiver<Sample>,
    interval: Duration,
    stop: CancellationToken,
    slot: SourceSlot,
) {
    let pty = match pty {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(link = %link.display(), error = %e, "simulated CAN adapter not started");
            return;
        }
    };
    let mut db = Database::default();
    if let Err(e) = db.add(DEMO_DBC_NAME, DEMO_DBC) {
        tracing::warn!(error = %e, "simulated CAN adapter has no DBC");
    }
    tracing::info!(can = %link.display(), "simulated CAN adapter (SLCAN) on a pseudo-terminal");
    if let Err(e) = run_adapter(&pty, &db, rx, interval, &stop, &slot).await {
        tracing::warn!(error = %e, "simulated CAN adapter stopped");
    }
    if std::fs::read_link(&link).is_ok_and(|t| t == pty.path) {
        let _ = std::fs::remove_file(&link);
    }
}

async fn run_adapter(
    pty: &Pty,
    db: &Database,
    rx: watch::Receiver<Sample>,
    interval: Duration,
    stop: &CancellationToken,
    slot: &SourceSlot,
) -> std::io::Result<()> {
    let owned: OwnedFd = pty.master.as_fd().try_clone_to_owned()?;
    // SAFETY: `owned` is a descriptor we own outright; the AsyncFd keeps it until dropped.
    let fd = unsafe { AsyncFd::register(owned) }?;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut open, mut normal, mut wheel) = (false, false, 0u8);
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                if !open {
                    continue;
                }
                let sample = rx.borrow().clone();
                let sent = frames(db, &sample, wheel);
                let bytes: Vec<u8> = sent.iter().flat_map(slcan::encode).collect();
                wheel = (wheel + 1) % 4;
                // An adapter does not wait for a reader: a full pty drops the frames.
                if nix::unistd::write(fd.get_ref(), &bytes).is_ok() {
                    slot.add_produced("can", sent.len() as u64);
                }
            }
            guard = fd.readable() => {
                let mut guard = guard?;
                let n = match guard.try_io(|f| Ok(nix::unistd::read(f.get_ref().as_raw_fd(), &mut buf)?)) {
                    Ok(r) => r?,
                    Err(_would_block) => continue,
                };
                let mut reply = Vec::new();
                for &b in &buf[..n] {
                    if b == b'\r' {
                        reply.extend_from_slice(answer(&line, &mut open, &mut normal));
                        line.clear();
                    } else if line.len() < COMMAND_MAX {
                        line.push(b);
                    }
                }
                let _ = nix::unistd::write(fd.get_ref(), &reply);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::can::dbc::Reading;
    use crate::source::sim::Vehicle;

    #[test]
    fn frames_decode_back_to_the_sample() {
        let mut db = Database::default();
        db.add(DEMO_DBC_NAME, DEMO_DBC).expect("demo DBC parses");
        let s = Vehicle::new(3).step(0.2);
        let mut by_signal = std::collections::BTreeMap::new();
        for wheel in 0..4 {
            for f in frames(&db, &s, wheel) {
                let m = db
                    .messages
                    .iter()
                    .find(|m| m.key == f.key())
                    .expect("known");
                let (mut raws, mut out, mut oor) = (Vec::new(), Vec::new(), Vec::new());
                m.decode(f.data(), &mut raws, &mut out, &mut oor);
                assert!(oor.is_empty(), "{} out of range", m.name);
                for (i, r) in out {
                    by_signal.insert(m.signals[i].name.clone(), r);
                }
            }
        }
        let num = |n: &str| match &by_signal[n] {
            Reading::Num(v) => *v,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(num("EngineSpeed"), s.rpm);
        assert_eq!(num("VehicleSpeed"), s.speed_kmh);
        assert!((num("BatteryVoltage") - s.battery_v).abs() < 0.001);
        assert_eq!(num("CoolantTemp"), s.coolant_c.round());
        assert_eq!(num("PressureRR"), 248.0);
        assert!(matches!(&by_signal["Gear"], Reading::Name(n, _) if &**n == "P" || &**n == "D"));
    }

    #[test]
    fn the_adapter_answers_like_a_canable() {
        let (mut open, mut normal) = (false, false);
        assert_eq!(
            answer(b"t1230", &mut open, &mut normal),
            b"\x07",
            "closed: no transmit"
        );
        assert_eq!(answer(b"S6", &mut open, &mut normal), b"\r");
        assert_eq!(answer(b"L", &mut open, &mut normal), b"\r");
        assert!(open && !normal);
        assert_eq!(
            answer(b"t1230", &mut open, &mut normal),
            b"\x07",
            "listen-only: no transmit"
        );
        assert_eq!(answer(b"O", &mut open, &mut normal), b"\r");
        assert_eq!(answer(b"t1230", &mut open, &mut normal), b"z\r");
        assert_eq!(answer(b"F", &mut open, &mut normal), b"F00\r");
        assert_eq!(answer(b"C", &mut open, &mut normal), b"\r");
        assert!(!open);
        assert_eq!(answer(b"?", &mut open, &mut normal), b"\x07");
    }
}
