//! The inputs going away during ingest: the broker restarted (down for a random while,
//! its store kept) and a serial GPS unplugged and plugged back in (a real pseudo-terminal
//! that is closed, then a new one published at the same link, as udev does). The time from
//! each coming back to the first frame from it on the live relay must stay under 5 s, and
//! no message acknowledged by the broker or by the gateway may be missing at the end.

use super::stack::{verify, Stack};
use super::Profile;
use crate::gateway::Gateway;
use crate::report::Outcome;
use crate::rig::{locked, until, Ctx};
use crate::ws;
use fieldgate::source::nmea::with_checksum;
use fieldgate::source::sim_devices::{publish_link, Pty};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// MQTT rate, messages/s.
const RATE: u64 = 200;
/// The resume bound.
const RESUME_MAX: Duration = Duration::from_secs(5);

/// A GPS on a pty published at a link, writing a GGA sentence every 100 ms.
struct Gps {
    link: PathBuf,
    master: Arc<Mutex<Option<std::fs::File>>>,
    slave: Option<std::os::fd::OwnedFd>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gps {
    fn plug(link: &Path) -> anyhow::Result<Gps> {
        let mut g = Gps {
            link: link.to_path_buf(),
            master: Arc::default(),
            slave: None,
            stop: Arc::default(),
            written: Arc::default(),
            thread: None,
        };
        g.replug()?;
        let (master, stop, written) = (
            Arc::clone(&g.master),
            Arc::clone(&g.stop),
            Arc::clone(&g.written),
        );
        g.thread = Some(std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Relaxed) {
                k += 1;
                let secs = k / 10;
                let body = format!(
                    "GPGGA,{:02}{:02}{:02}.{:02},5332.7660,N,00957.9660,E,1,09,0.9,12.0,M,46.9,M,,",
                    secs / 3600 % 24,
                    secs / 60 % 60,
                    secs % 60,
                    k % 10 * 10
                );
                if let Some(m) = locked(&master).as_mut() {
                    // Non-blocking: a GPS never waits for a reader.
                    if m.write_all(with_checksum(&body).as_bytes()).is_ok() {
                        written.fetch_add(1, Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        Ok(g)
    }

    /// Close both ends: the gateway's reads fail with EIO, as when a USB adapter is pulled.
    fn unplug(&mut self) {
        *locked(&self.master) = None;
        self.slave = None;
    }

    /// A new pty at the same link.
    fn replug(&mut self) -> anyhow::Result<()> {
        let pty = Pty::open()?;
        pty.set_nonblocking()?;
        // openpty(3) leaves both ends inheritable: a gateway or broker started later would
        // hold them open, and closing ours would then unplug nothing.
        for fd in [pty.master.as_raw_fd(), pty.slave.as_raw_fd()] {
            // SAFETY: fcntl(2) F_SETFD on descriptors this struct owns.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        publish_link(&self.link, &pty.path)?;
        *locked(&self.master) = Some(std::fs::File::from(pty.master));
        self.slave = Some(pty.slave);
        Ok(())
    }
}

impl Drop for Gps {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wait for the first frame from `prefix` after `back`, returning the delay.
fn resumed(seen: &ws::Seen, back: Instant, prefix: &str) -> anyhow::Result<Duration> {
    until(
        Duration::from_secs(60),
        &format!("a {prefix} frame"),
        || Ok(seen.first_after(back, prefix).map(|a| a.at - back)),
    )
}

/// Run the scenario.
pub fn run(ctx: &Ctx, p: &Profile, out: &mut Outcome) -> anyhow::Result<()> {
    let mut stack = Stack::start(ctx, "ingest", false)?;
    let id = "chaos-ingest";
    let journal = ctx.path("journal");
    let link = ctx.path("dev/gps");
    let mut gps = Gps::plug(&link)?;
    let mut spec = stack.spec(id, &journal);
    spec.serial.push(("gps".into(), link.clone()));
    let mut gw = Gateway::create(ctx, "gateway", &spec)?;
    stack.start_subscribed(ctx, &mut gw)?;
    let seen = ctx.rt.block_on(ws::watch(gw.port, &gw.key))?;
    let load = stack.load(RATE)?;
    let t0 = Instant::now();
    resumed(&seen, t0, "serial:")?;
    resumed(&seen, t0, "mqtt:")?;

    let (mut mqtt, mut serial) = (Vec::new(), Vec::new());
    for k in 0..p.ingest_faults {
        std::thread::sleep(
            ctx.random_between(Duration::from_millis(1_000), Duration::from_millis(3_000)),
        );
        // The first outage is long: past 7.75 s a reconnect backoff doubling from 250 ms
        // without a low cap waits more than 5 s more (with a 10 s cap: 17.75 s).
        let down = if k == 0 {
            Duration::from_secs(8)
        } else {
            ctx.random_between(Duration::from_millis(500), Duration::from_millis(8_000))
        };
        stack.broker.stop();
        std::thread::sleep(down);
        stack.broker.resume()?;
        let back = Instant::now();
        let r = resumed(&seen, back, "mqtt:")?;
        eprintln!(
            "  broker restart {k}: down {:.1} s, MQTT frames again after {:.2} s",
            down.as_secs_f64(),
            r.as_secs_f64()
        );
        mqtt.push(r);

        std::thread::sleep(
            ctx.random_between(Duration::from_millis(1_000), Duration::from_millis(3_000)),
        );
        let out_for = ctx.random_between(Duration::from_millis(500), Duration::from_millis(8_000));
        gps.unplug();
        std::thread::sleep(out_for);
        gps.replug()?;
        let back = Instant::now();
        let r = resumed(&seen, back, "serial:")?;
        eprintln!(
            "  serial unplug {k}: out {:.1} s, GPS frames again after {:.2} s",
            out_for.as_secs_f64(),
            r.as_secs_f64()
        );
        serial.push(r);
    }
    let published = load.stop();
    stack.drain(&gw, &published, Duration::from_secs(120))?;
    let exit = gw.stop(ctx)?;
    out.check(exit.success(), || {
        format!("the gateway did not stop cleanly: {exit}")
    });
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    let mean = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() / v.len().max(1) as f64;
    out.figure("broker_restarts", mqtt.len());
    out.secs("mqtt_resume_mean", mean(&mqtt));
    out.secs("mqtt_resume_max", max(&mqtt).as_secs_f64());
    out.figure("replugs", serial.len());
    out.secs("serial_resume_mean", mean(&serial));
    out.secs("serial_resume_max", max(&serial).as_secs_f64());
    out.check(max(&mqtt) < RESUME_MAX, || {
        format!(
            "MQTT took {:.2} s to resume after a broker restart",
            max(&mqtt).as_secs_f64()
        )
    });
    out.check(max(&serial) < RESUME_MAX, || {
        format!(
            "the GPS took {:.2} s to resume after a replug",
            max(&serial).as_secs_f64()
        )
    });
    let gps_frames = locked(&seen.frames)
        .iter()
        .filter(|a| a.source.starts_with("serial:"))
        .count();
    out.figure("gps_sentences", gps.written.load(Relaxed));
    out.figure("gps_frames", gps_frames);
    verify(&stack, id, &journal, &published, true, out)?;
    Ok(())
}
