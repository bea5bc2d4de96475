//! `fieldgate-bench serial`: CPU cost of one serial source reading NMEA at line rate.
//!
//! A writer thread plays a GPS receiver on a pty master, paced to the baud rate (10 bits a
//! byte on an 8N1 wire) with realistic RMC/GGA/VTG sentences from the simulated vehicle;
//! the real serial source reads the slave into a real journal on the gateway's runtime.
//! The gateway's CPU is the process's CPU time (getrusage) minus the writer thread's own,
//! over a measured window after a warm-up.

use anyhow::Context;
use clap::Args;
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::source::sim::Vehicle;
use fieldgate::source::sim_devices::{nmea_sentences, Pty};
use fieldgate::source::{serial, SourceCtx, SourceStates};
use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Arguments of `bench serial`.
#[derive(Args)]
pub struct SerialArgs {
    /// Line rate to pace the writer at.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Measured window, seconds (after a 2 s warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The source's `gather_ms` (0: read as soon as bytes arrive).
    #[arg(long, default_value_t = 20)]
    gather_ms: u64,
}

/// CPU time (user + system) of `who` (`RUSAGE_SELF` or `RUSAGE_THREAD`).
pub fn cpu(who: libc::c_int) -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of each thread of this process by name (`/proc/self/task/*/stat`, in ticks).
fn thread_cpu() -> std::collections::BTreeMap<String, Duration> {
    let tick = Duration::from_secs(1) / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u32);
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, fields after it are plain.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after `state`.
        *out.entry(name).or_insert(Duration::ZERO) += tick * (ticks(11) + ticks(12));
    }
    out
}

/// What the writer thread did in the measured window.
struct Written {
    bytes: u64,
    sentences: u64,
    cpu: Duration,
}

/// Writes NMEA to `master` at `baud` for `warmup`, signals, measures `window`, signals.
fn writer(
    mut master: std::fs::File,
    baud: u32,
    warmup: Duration,
    window: Duration,
    marks: mpsc::Sender<()>,
) -> std::io::Result<Written> {
    let per_s = f64::from(baud) / 10.0;
    let mut vehicle = Vehicle::new(7);
    let mut pending: Vec<u8> = Vec::new();
    let (mut written, mut sentences) = (0u64, 0u64);
    let t0 = Instant::now();
    let mut sim_ms = fieldgate::frame::now_ms();
    let mut window_start: Option<(Instant, u64, u64, Duration)> = None;
    loop {
        let now = Instant::now();
        if window_start.is_none() && now - t0 >= warmup {
            window_start = Some((now, written, sentences, cpu(libc::RUSAGE_THREAD)));
            let _ = marks.send(());
        }
        if let Some((start, w0, s0, c0)) = window_start {
            if now - start >= window {
                let c1 = cpu(libc::RUSAGE_THREAD);
                let _ = marks.send(());
                return Ok(Written {
                    bytes: written - w0,
                    sentences: sentences - s0,
                    cpu: c1 - c0,
                });
            }
        }
        let budget = ((now - t0).as_secs_f64() * per_s) as u64;
        while written < budget {
            if pending.is_empty() {
                // A 10 Hz receiver: three sentences per 100 ms of simulated driving.
                sim_ms += 100;
                pending = nmea_sentences(&vehicle.step(0.1), sim_ms).into_bytes();
                sentences += 3;
            }
            let n = pending.len().min((budget - written) as usize);
            master.write_all(&pending[..n])?;
            pending.drain(..n);
            written += n as u64;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Run `bench serial`.
pub fn run(args: SerialArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fieldgate-bench-serial-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let journal = Journal::open(JournalConfig {
        path: dir.join("journal"),
        ..JournalConfig::default()
    })?;
    let pty = Pty::open().context("openpty")?;
    let cfg: serial::SerialConfig = toml::from_str(&format!(
        "name = \"gps\"\npath = {:?}\nbaud = {}\nframing = \"nmea\"\ndevice = \"gps0\"\n\
         gather_ms = {}\n",
        pty.path, args.baud, args.gather_ms
    ))?;
    let states = SourceStates::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ctx = SourceCtx {
        gateway: "bench".into(),
        journal: journal.clone(),
        slot: states.register("gps", "serial"),
        shutdown: shutdown.clone(),
        commands: Default::default(),
    };
    let task = rt.spawn(serial::run(cfg, ctx));
    let frames = || {
        let st = states.snapshot();
        st.get("gps").map_or((0, 0), |s| (s.frames, s.invalid))
    };
    let t0 = Instant::now();
    while states
        .snapshot()
        .get("gps")
        .is_none_or(|s| s.state != "running")
    {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "serial source never opened the pty"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (tx, rx) = mpsc::channel();
    let master = std::fs::File::from(pty.master);
    let window = Duration::from_secs(args.seconds.max(1));
    let baud = args.baud;
    let w = std::thread::Builder::new()
        .name("nmea-writer".into())
        .spawn(move || writer(master, baud, Duration::from_secs(2), window, tx))?;
    rx.recv().context("writer ended early")?;
    let (p0, f0, t_start) = (cpu(libc::RUSAGE_SELF), frames(), Instant::now());
    let threads0 = thread_cpu();
    rx.recv().context("writer ended early")?;
    let (p1, f1, wall) = (cpu(libc::RUSAGE_SELF), frames(), t_start.elapsed());
    let threads1 = thread_cpu();
    let written = w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    shutdown.cancel();
    rt.block_on(task)?;
    journal.close()?;
    drop(pty.slave);
    let _ = std::fs::remove_dir_all(&dir);

    let secs = wall.as_secs_f64();
    let gateway = (p1 - p0).saturating_sub(written.cpu);
    let pct = gateway.as_secs_f64() / secs * 100.0;
    println!(
        "serial bench: NMEA at {baud} baud over a pty, gather_ms {}, {secs:.1} s measured",
        args.gather_ms
    );
    println!(
        "  written:              {:.0} B/s, {:.0} sentences/s",
        written.bytes as f64 / secs,
        written.sentences as f64 / secs
    );
    println!(
        "  journaled:            {:.0} frames/s",
        (f1.0 - f0.0) as f64 / secs
    );
    println!("  invalid:              {}", f1.1 - f0.1);
    println!(
        "  gateway CPU:          {:.0} ms = {pct:.2}% of one core (target < 3%)",
        gateway.as_secs_f64() * 1000.0
    );
    println!(
        "  writer thread CPU:    {:.0} ms (excluded)",
        written.cpu.as_secs_f64() * 1000.0
    );
    for (name, t1) in &threads1 {
        let t0 = threads0.get(name).copied().unwrap_or(Duration::ZERO);
        let ms = t1.saturating_sub(t0).as_secs_f64() * 1000.0;
        println!("    thread {name:<20} {ms:>6.0} ms");
    }
    Ok(())
}
