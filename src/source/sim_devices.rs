//! The simulated vehicle's serial devices: an NMEA GPS and an ELM327 adapter on real
//! pseudo-terminals (`[[sources.sim]] mode = "pty"`, what `fieldgate demo` runs).
//!
//! Feeding the demo through ptys means a newcomer's first run exercises the same path as
//! a van: the serial source frames NMEA from one pty, the OBD poller talks ELM327 to the
//! other. Each pty's slave is published as a symlink (`gps_link`, `obd_link`), as udev
//! would publish `/dev/fieldgate/gps`, so the sources' configs hold stable paths; the
//! links exist before those sources start ([`SimDevices::open`]). The GPS writes like a
//! receiver: it never waits for a reader, sentences nobody reads are dropped. The adapter
//! answers the init and mode 01/03 commands from the vehicle's current sample, encoded
//! with the PID table of [`super::elm327`].

use crate::config::ConfigError;
use crate::source::elm327;
use crate::source::nmea;
use crate::source::obd::ObdConfig;
use crate::source::serial::SerialConfig;
use crate::source::sim::{Sample, SimConfig, SimMode, Vehicle};
use crate::source::{SourceCtx, SourceSlot, SourcesConfig};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// A pseudo-terminal pair; the slave is in raw mode (no echo, no line editing).
pub struct Pty {
    /// The device side a simulator or test drives.
    pub master: OwnedFd,
    /// Held open so the slave path stays valid while no source has it open.
    pub slave: OwnedFd,
    /// The slave's path, e.g. `/dev/pts/3`.
    pub path: PathBuf,
}

impl Pty {
    /// Opens a pty pair with a raw slave.
    pub fn open() -> std::io::Result<Pty> {
        let pair = nix::pty::openpty(None, None)?;
        let mut t = termios::tcgetattr(pair.slave.as_fd())?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(pair.slave.as_fd(), termios::SetArg::TCSANOW, &t)?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd()))?;
        Ok(Pty {
            master: pair.master,
            slave: pair.slave,
            path,
        })
    }

    /// Makes the master non-blocking (for the simulator's async IO).
    pub fn set_nonblocking(&self) -> std::io::Result<()> {
        let fd = self.master.as_raw_fd();
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(())
    }
}

/// Points `link` at `target`, replacing an existing link atomically.
pub fn publish_link(link: &Path, target: &Path) -> std::io::Result<()> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = link.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// Removes `link` if it still points at `target`.
fn unpublish_link(link: &Path, target: &Path) {
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        let _ = std::fs::remove_file(link);
    }
}

/// Configures `sources` for the demo: the first simulator in pty mode with its links in
/// `dir`, a `gps` serial source (NMEA) and an `obd` source on those links.
pub fn wire_demo(sources: &mut SourcesConfig, dir: &Path) -> Result<(), ConfigError> {
    let Some(sim) = sources.sim.first_mut() else {
        return Ok(());
    };
    let (gps, obd) = (dir.join("gps"), dir.join("obd"));
    sim.mode = SimMode::Pty;
    sim.gps_link = Some(gps.clone());
    sim.obd_link = Some(obd.clone());
    let (name, vehicle) = (sim.name.clone(), sim.vehicle.clone());
    let serial = format!(
        "name = \"gps\"\npath = {gps:?}\nbaud = 9600\nframing = \"nmea\"\n\
         device = \"{name}-gps\"\nvehicle = \"{vehicle}\"\n"
    );
    let obd = format!(
        "name = \"obd\"\npath = {obd:?}\nbaud = 38400\ninterval_ms = 500\n\
         dtc_interval_ms = 30000\ndevice = \"{name}-obd\"\nvehicle = \"{vehicle}\"\n"
    );
    let bad = |e: toml::de::Error| ConfigError::invalid("demo sources", e.to_string());
    sources
        .serial
        .push(toml::from_str::<SerialConfig>(&serial).map_err(bad)?);
    sources
        .obd
        .push(toml::from_str::<ObdConfig>(&obd).map_err(bad)?);
    crate::source::can::sim::wire_demo(sources, dir)?;
    Ok(())
}

/// The simulator's devices: their ptys, published at their links.
pub struct SimDevices {
    gps: Pty,
    obd: Pty,
    gps_link: PathBuf,
    obd_link: PathBuf,
    /// The CAN adapter's link and pty, when `can_link` is set (its own task serves it).
    can: Option<(PathBuf, std::io::Result<Pty>)>,
    /// Directories made for the links, removed again at the end.
    made: Vec<PathBuf>,
}

impl SimDevices {
    /// Opens the ptys and publishes their links (default `$TMPDIR/fieldgate-<name>/`), so
    /// a source started after this finds its device at the first try.
    pub fn open(cfg: &SimConfig) -> std::io::Result<SimDevices> {
        let dir = std::env::temp_dir().join(format!("fieldgate-{}", cfg.name));
        let gps_link = cfg.gps_link.clone().unwrap_or_else(|| dir.join("gps"));
        let obd_link = cfg.obd_link.clone().unwrap_or_else(|| dir.join("obd"));
        let made: Vec<PathBuf> = [&gps_link, &obd_link]
            .iter()
            .filter_map(|l| l.parent().filter(|d| !d.exists()).map(Path::to_path_buf))
            .collect();
        let (gps, obd) = (Pty::open()?, Pty::open()?);
        gps.set_nonblocking()?;
        obd.set_nonblocking()?;
        publish_link(&gps_link, &gps.path)?;
        publish_link(&obd_link, &obd.path)?;
        let can = cfg
            .can_link
            .clone()
            .map(|link| (link.clone(), crate::source::can::sim::open(&link)));
        Ok(SimDevices {
            gps,
            obd,
            gps_link,
            obd_link,
            can,
            made,
        })
    }

    /// Removes the links (if still ours) and the directories made for them.
    fn close(self) {
        unpublish_link(&self.gps_link, &self.gps.path);
        unpublish_link(&self.obd_link, &self.obd.path);
        for dir in self.made {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The simulator in pty mode: drive the vehicle, write NMEA, answer ELM327, until shutdown.
/// `devices` comes from [`SimDevices::open`], called before the reading sources start.
pub async fn run(devices: std::io::Result<SimDevices>, cfg: SimConfig, ctx: SourceCtx) {
    let devices = match devices {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(source = %cfg.name, error = %e, "simulator cannot create its ptys");
            ctx.slot.set_state("stopped", Some(e.to_string()));
            return;
        }
    };
    tracing::info!(source = %cfg.name, gps = %devices.gps_link.display(),
        obd = %devices.obd_link.display(), "simulated GPS and OBD adapter on pseudo-terminals");
    ctx.slot.set_state("running", None);
    let mut devices = devices;
    let can_stop = ctx.shutdown.child_token();
    let can_adapter;
    // The adapter task borrows the devices; it ends with this block, before they close.
    {
        let interval = Duration::from_millis(cfg.interval_ms.0);
        let mut vehicle = Vehicle::new(cfg.seed);
        let (tx, rx) = watch::channel(vehicle.step(0.0));
        can_adapter = devices.can.take().map(|(link, pty)| {
            tokio::spawn(crate::source::can::sim::serve(
                pty,
                link,
                tx.subscribe(),
                interval,
                can_stop.clone(),
                ctx.slot.clone(),
            ))
        });
        let adapter = answer_elm327(&devices.obd, rx, &ctx.slot);
        tokio::pin!(adapter);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                r = &mut adapter => {
                    if let Err(e) = r {
                        tracing::warn!(source = %cfg.name, error = %e, "simulated OBD adapter stopped");
                    }
                    break;
                }
                _ = tick.tick() => {
                    let sample = vehicle.step(interval.as_secs_f64());
                    let sentences = nmea_sentences(&sample, crate::frame::now_ms());
                    // A receiver does not wait: with nobody reading, sentences are dropped.
                    if nix::unistd::write(devices.gps.master.as_fd(), sentences.as_bytes()).is_ok() {
                        ctx.slot.add_produced("nmea", NMEA_PER_SAMPLE);
                    }
                    tx.send_replace(sample);
                }
            }
        }
    }
    can_stop.cancel();
    if let Some(task) = can_adapter {
        let _ = task.await;
    }
    devices.close();
    ctx.slot.set_state("stopped", None);
}

/// Sentences [`nmea_sentences`] writes per sample (RMC, GGA, VTG).
const NMEA_PER_SAMPLE: u64 = 3;

/// `ddmm.mmmm` (or `dddmm.mmmm`) and hemisphere.
fn nmea_coord(v: f64, deg_digits: usize, pos: char, neg: char) -> (String, char) {
    let a = v.abs();
    let deg = a.trunc();
    let min = (a - deg) * 60.0;
    let text = format!("{:0w$}{:07.4}", deg as u32, min, w = deg_digits);
    (text, if v < 0.0 { neg } else { pos })
}

/// Civil date (y, m, d) of a day count since 1970-01-01 (Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RMC, GGA and VTG sentences (with checksums and `\r\n`) for one sample at `now_ms`.
pub fn nmea_sentences(s: &Sample, now_ms: i64) -> String {
    let (days, ms) = (now_ms.div_euclid(86_400_000), now_ms.rem_euclid(86_400_000));
    let (y, mo, d) = civil(days);
    let secs = ms / 1000;
    let time = format!(
        "{:02}{:02}{:02}.{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms % 1000 / 10
    );
    let date = format!("{d:02}{mo:02}{:02}", y % 100);
    let (lat, ns) = nmea_coord(s.lat, 2, 'N', 'S');
    let (lon, ew) = nmea_coord(s.lon, 3, 'E', 'W');
    let knots = s.speed_kmh / 1.852;
    let course = s.course_deg;
    [
        format!("GPRMC,{time},A,{lat},{ns},{lon},{ew},{knots:.2},{course:.1},{date},,,A"),
        format!("GPGGA,{time},{lat},{ns},{lon},{ew},1,09,0.9,12.0,M,46.9,M,,"),
        format!("GPVTG,{course:.1},T,,M,{knots:.2},N,{:.1},K,A", s.speed_kmh),
    ]
    .iter()
    .map(|body| nmea::with_checksum(body))
    .collect()
}

/// The adapter's settings that change its output.
struct ElmState {
    echo: bool,
    spaces: bool,
    linefeeds: bool,
    last: String,
    started: Instant,
}

/// The simulated vehicle's value for a PID, if it "has" that sensor.
fn pid_value(pid: u8, s: &Sample, run_s: f64) -> Option<f64> {
    Some(match pid {
        0x04 => (s.throttle_pct * 0.8 + 10.0).min(100.0),
        0x05 => s.coolant_c,
        0x0B => 30.0 + s.throttle_pct * 0.6,
        0x0C => s.rpm,
        0x0D => s.speed_kmh,
        0x0F => 22.0 + s.speed_kmh * 0.02,
        0x10 => s.rpm * 0.004 + s.throttle_pct * 0.05,
        0x11 => s.throttle_pct,
        0x1F => run_s,
        0x2F => 62.0,
        0x33 => 101.0,
        0x42 => s.battery_v,
        0x46 => 18.0,
        _ => return None,
    })
}

/// Answer bytes for one command, or the adapter's words.
fn elm_answer(cmd: &str, st: &mut ElmState, s: &Sample) -> Result<Vec<u8>, &'static str> {
    if let Some(at) = cmd.strip_prefix("AT") {
        match at {
            "Z" | "WS" => {
                (st.echo, st.spaces, st.linefeeds) = (true, true, false);
                return Err("\r\rELM327 v1.5");
            }
            "I" => return Err("ELM327 v1.5"),
            "E0" | "E1" => st.echo = at == "E1",
            "S0" | "S1" => st.spaces = at == "S1",
            "L0" | "L1" => st.linefeeds = at == "L1",
            "RV" => return Err("RV"),
            _ => {}
        }
        return Err("OK");
    }
    let bytes = (0..cmd.len())
        .step_by(2)
        .map(|i| {
            cmd.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>();
    match bytes.as_deref() {
        Some([0x01, pid]) if pid % 0x20 == 0 => {
            // Supported-PID bitmap for pid+1 ..= pid+0x20.
            let base = u32::from(*pid);
            let has = |p: u32| u8::try_from(p).is_ok_and(|p| pid_value(p, s, 0.0).is_some());
            let mut map = 0u32;
            for i in 1..=32u32 {
                let more = i == 32 && (base + 33..base + 64).any(has);
                if has(base + i) || more {
                    map |= 1 << (32 - i);
                }
            }
            (map != 0 || base == 0)
                .then(|| [&[0x41, *pid][..], &map.to_be_bytes()].concat())
                .ok_or("NO DATA")
        }
        Some([0x01, pid]) => {
            let run_s = st.started.elapsed().as_secs_f64();
            let info = elm327::pid_info(*pid).ok_or("NO DATA")?;
            let v = pid_value(*pid, s, run_s).ok_or("NO DATA")?;
            Ok([&[0x41, *pid][..], &(info.encode)(v)].concat())
        }
        // One stored code: P0420 (catalyst efficiency), CAN style with a count byte.
        Some([0x03]) => Ok(vec![0x43, 0x01, 0x04, 0x20]),
        _ => Err("?"),
    }
}

/// Serves ELM327 commands on `pty`'s master until the pty fails; counts the answers.
async fn answer_elm327(
    pty: &Pty,
    rx: watch::Receiver<Sample>,
    slot: &SourceSlot,
) -> std::io::Result<()> {
    let owned = pty.master.as_fd().try_clone_to_owned()?;
    // SAFETY: `owned` is a descriptor we own outright; the AsyncFd holds it (and so keeps it
    // open and unchanged) until it is dropped.
    let fd = unsafe { AsyncFd::register(owned) }?;
    let mut st = ElmState {
        echo: true,
        spaces: true,
        linefeeds: false,
        last: String::new(),
        started: Instant::now(),
    };
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = {
            let mut guard = fd.readable().await?;
            match guard.try_io(|f| Ok(nix::unistd::read(f.get_ref().as_raw_fd(), &mut buf)?)) {
                Ok(r) => r?,
                Err(_would_block) => continue,
            }
        };
        for &b in &buf[..n] {
            if b != b'\r' {
                if b != b'\n' && b != b' ' && line.len() < 64 {
                    line.push(b.to_ascii_uppercase());
                }
                continue;
            }
            let mut cmd = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            if cmd.is_empty() {
                cmd = st.last.clone();
            }
            let eol = if st.linefeeds { "\r\n" } else { "\r" };
            let mut out = String::new();
            if st.echo {
                out.push_str(&cmd);
                out.push_str(eol);
            }
            let sample = rx.borrow().clone();
            match elm_answer(&cmd, &mut st, &sample) {
                Ok(bytes) => {
                    let sep = if st.spaces { " " } else { "" };
                    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
                    out.push_str(&hex.join(sep));
                }
                Err("RV") => out.push_str(&format!("{:.1}V", sample.battery_v)),
                Err(words) => out.push_str(words),
            }
            out.push_str(eol);
            out.push_str(eol);
            out.push('>');
            st.last = cmd;
            write_all(&fd, out.as_bytes()).await?;
            slot.add_produced("elm327", 1);
        }
    }
}

/// Writes all of `data` to a non-blocking fd.
async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| Ok(nix::unistd::write(f.get_ref(), data)?)) {
            Ok(r) => data = &data[r?..],
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::elm327::{parse_reply, Reply};
    use crate::source::framing::{Decoded, FrameDecoder, Framing};
    use tokio_util::bytes::BytesMut;
    use tokio_util::codec::Decoder;

    #[test]
    fn nmea_sentences_decode_back_to_the_sample() {
        let s = Vehicle::new(3).step(0.2);
        let text = nmea_sentences(&s, 1_764_115_200_123); // 2025-11-26 00:00:00.123
        let mut d = FrameDecoder::new(Framing::Nmea, 82);
        let mut buf = BytesMut::from(text.as_bytes());
        let mut out = Vec::new();
        while let Some(item) = d.decode(&mut buf).expect("decode") {
            let Ok(Decoded::Nmea(sentence)) = item else {
                panic!("bad sentence in {text:?}");
            };
            out.push(nmea::decode(&sentence).expect("decodable"));
        }
        assert_eq!(out.len(), 3);
        assert!((out[0]["lat"].as_f64().expect("lat") - s.lat).abs() < 1e-6);
        assert!((out[1]["lon"].as_f64().expect("lon") - s.lon).abs() < 1e-6);
        assert_eq!(out[0]["device_ts_ms"], 1_764_115_200_120i64);
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_418), (2025, 11, 26));
    }

    #[test]
    fn adapter_answers_decode_to_the_sample() {
        let s = Vehicle::new(5).step(0.2);
        let mut st = ElmState {
            echo: false,
            spaces: false,
            linefeeds: false,
            last: String::new(),
            started: Instant::now(),
        };
        let ans = elm_answer("010C", &mut st, &s).expect("rpm");
        let hex: String = ans.iter().map(|b| format!("{b:02X}")).collect();
        let Reply::Data(m) = parse_reply(&format!("{hex}\r\r>"), "010C") else {
            panic!("no data");
        };
        let data = elm327::mode01_data(&m, 0x0C).expect("pid");
        let (_, v, _) = elm327::decode_pid(0x0C, data).expect("decode");
        assert_eq!(v.as_f64(), Some(s.rpm));
        assert_eq!(elm_answer("01A6", &mut st, &s), Err("NO DATA"));
        assert_eq!(elm_answer("XYZ", &mut st, &s), Err("?"));
        let map = elm_answer("0100", &mut st, &s).expect("bitmap");
        assert_eq!(map[..2], [0x41, 0x00]);
        assert_ne!(
            map[2 + (0x0C - 1) / 8] & (0x80 >> ((0x0C - 1) % 8)),
            0,
            "0C supported"
        );
        assert_eq!(
            elm327::dtcs(&[elm_answer("03", &mut st, &s).expect("dtc")]),
            ["P0420"]
        );
    }
}
