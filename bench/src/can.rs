//! `fieldgate-bench can`: CAN decode + journal throughput, CPU at a bus rate, DBC memory.
//!
//! - throughput: frames of a generated 60-message DBC (multiplexed, Motorola, signed and
//!   enum signals included) through the source's [`Ingest`] pipeline into a real journal
//!   with one `append_many` per 4,096 frames (as the source task does per read burst),
//!   per-signal rules off and on;
//! - CPU at 4,000 frames/s (a busy 500 kbit/s bus): a writer thread plays a CANable on a
//!   pty, the real CAN source reads it into a real journal; CPU is the process's time
//!   minus the writer's own, over a measured window after a warm-up, rules off and on;
//! - memory: RSS added by compiling a 500-message DBC into a source's pipeline.

use crate::serial::cpu;
use anyhow::Context;
use clap::{Args, ValueEnum};
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::source::can::dbc::Database;
use fieldgate::source::can::ingest::Ingest;
use fieldgate::source::can::{self, slcan, CanConfig, CanFrame};
use fieldgate::source::sim_devices::Pty;
use fieldgate::source::{SourceCtx, SourceStates};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Arguments of `bench can`.
#[derive(Args)]
pub struct CanArgs {
    /// Frames pushed through the pipeline per throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    frames: usize,
    /// Bus rate of the CPU runs, frames/s.
    #[arg(long, default_value_t = 4000)]
    rate: usize,
    /// Measured window of each CPU run, seconds (after a 2 s warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Run only these parts (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

/// A part of the CAN bench.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// RSS of a 500-message DBC.
    Memory,
    /// Decode + journal throughput, rules off and on.
    Throughput,
    /// CPU at `--rate` over a pty, rules off and on.
    Cpu,
}

/// A DBC of `n` messages: Intel and Motorola, signed, enums, every 8th multiplexed, every
/// 10th with a 29-bit id.
fn dbc(n: usize) -> String {
    let mut s = String::from("VERSION \"bench\"\n\nNS_ :\n\tVAL_\n\nBS_:\n\nBU_: ECU GW\n\n");
    let mut vals = String::new();
    for i in 0..n {
        let id = if i % 10 == 9 {
            0x8000_0000u32 | 0x18FF_0000 | i as u32
        } else {
            0x100 + i as u32
        };
        let _ = writeln!(s, "BO_ {id} MSG_{i}: 8 ECU");
        if i % 8 == 7 {
            let _ = writeln!(s, " SG_ Sel M : 0|8@1+ (1,0) [0|3] \"\" GW");
            for m in 0..4 {
                let _ = writeln!(s, " SG_ M{m}_A m{m} : 8|16@1+ (0.1,0) [0|6553.5] \"V\" GW");
                let _ = writeln!(
                    s,
                    " SG_ M{m}_B m{m} : 24|16@1- (0.01,0) [-327.68|327.67] \"A\" GW"
                );
            }
            let _ = writeln!(s, " SG_ Common : 40|8@1+ (1,-40) [-40|215] \"degC\" GW");
        } else if i % 3 == 1 {
            let _ = writeln!(
                s,
                " SG_ Pressure_{i} : 7|16@0+ (0.1,0) [0|6553.5] \"kPa\" GW"
            );
            let _ = writeln!(
                s,
                " SG_ Offset_{i} : 23|16@0- (0.25,-100) [-8292|8091.75] \"mm\" GW"
            );
            let _ = writeln!(s, " SG_ Count_{i} : 39|8@0+ (1,0) [0|255] \"\" GW");
            let _ = writeln!(
                s,
                " SG_ Angle_{i} : 47|16@0- (0.05,0) [-1638.4|1638.35] \"deg\" GW"
            );
        } else {
            let _ = writeln!(
                s,
                " SG_ Speed_{i} : 0|16@1+ (0.01,0) [0|655.35] \"km/h\" GW"
            );
            let _ = writeln!(
                s,
                " SG_ Torque_{i} : 16|12@1- (0.5,0) [-1024|1023.5] \"Nm\" GW"
            );
            let _ = writeln!(s, " SG_ Mode_{i} : 28|4@1+ (1,0) [0|15] \"\" GW");
            let _ = writeln!(s, " SG_ Temp_{i} : 32|8@1+ (1,-40) [-40|215] \"degC\" GW");
            let _ = writeln!(s, " SG_ Level_{i} : 40|8@1+ (0.4,0) [0|100] \"%\" GW");
            let _ = writeln!(
                s,
                " SG_ Rpm_{i} : 48|16@1+ (0.25,0) [0|16383.75] \"rpm\" GW"
            );
            let _ = writeln!(
                vals,
                "VAL_ {id} Mode_{i} 0 \"Off\" 1 \"Idle\" 2 \"Run\" 3 \"Fault\" ;"
            );
        }
        s.push('\n');
    }
    s + &vals
}

/// Frames of the DBC's messages with varying data (a slowly moving vehicle: most bytes
/// change a little from frame to frame, as on a real bus).
fn frames(db: &Database, count: usize) -> Vec<CanFrame> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .filter_map(|n| {
            let m = &db.messages[n % db.messages.len()];
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = (n / db.messages.len()) as u64;
            let mut data = [0u8; 8];
            for (i, b) in data.iter_mut().enumerate() {
                *b = ((t >> (i % 4)) as u8).wrapping_add((x >> (8 * i)) as u8 & 0x03);
            }
            if m.signals.first().is_some_and(|s| s.name == "Sel") {
                data[0] &= 0x03;
            }
            CanFrame::new(m.key & can::EFF_MAX, m.key & (1 << 31) != 0, &data)
        })
        .collect()
}

const RULES: &str = "rules = [{ signal = \"Mode_*\", on_change = true, max_period_ms = 10000 }, \
                     { signal = \"*\", min_period_ms = 100, deadband = 0.5, max_period_ms = 5000 }]\n";

fn config(text: &str) -> anyhow::Result<CanConfig> {
    toml::from_str(text).context("bench CAN config")
}

fn compiled(text: &str) -> anyhow::Result<Database> {
    let mut db = Database::default();
    db.add("bench.dbc", text)?;
    Ok(db)
}

fn rules_label(rules: bool) -> &'static str {
    if rules {
        "on "
    } else {
        "off"
    }
}

fn throughput(dir: &Path, text: &str, rules: bool, count: usize) -> anyhow::Result<()> {
    let db = compiled(text)?;
    let input = frames(&db, count);
    let journal = Journal::open(JournalConfig {
        path: dir.join(format!("tp-{rules}")),
        ..JournalConfig::default()
    })?;
    let cfg = config(&format!(
        "name = \"bench\"\ninterface = \"candump\"\npath = \"/dev/null\"\n{}",
        if rules { RULES } else { "" }
    ))?;
    let mut ingest = Ingest::new(&cfg, "bench", db);
    let (t0, cpu0) = (Instant::now(), cpu(libc::RUSAGE_SELF));
    let mut journaled = 0usize;
    let mut out = Vec::with_capacity(4096);
    let mut decoding = Duration::ZERO;
    let mut decoding_cpu = Duration::ZERO;
    for chunk in input.chunks(4096) {
        let now = fieldgate::frame::now_ms();
        let (d0, c0) = (Instant::now(), cpu(libc::RUSAGE_THREAD));
        for f in chunk {
            ingest.push(f, None, now, &mut out);
        }
        decoding += d0.elapsed();
        decoding_cpu += cpu(libc::RUSAGE_THREAD).saturating_sub(c0);
        journaled += out.len();
        journal.append_many(std::mem::take(&mut out))?;
    }
    journal.wait_durable_blocking(journal.last_seq())?;
    let (secs, cpu_secs) = (
        t0.elapsed().as_secs_f64(),
        (cpu(libc::RUSAGE_SELF) - cpu0).as_secs_f64(),
    );
    let stats = journal.stats();
    println!(
        "decode+journal, rules {}: {count} frames in {secs:.2} s = {:.0} frames/s wall, {:.0} per CPU-second ({journaled} journaled, {} bytes); decoding alone {:.0} frames/s wall, {:.0} per CPU-second",
        rules_label(rules),
        count as f64 / secs,
        count as f64 / cpu_secs,
        stats.bytes,
        count as f64 / decoding.as_secs_f64(),
        count as f64 / decoding_cpu.as_secs_f64().max(1e-9),
    );
    journal.close()?;
    Ok(())
}

/// Writes `lines` round-robin to `master` at `rate` frames/s in 10 ms ticks for `warmup`,
/// signals, then for `window`, signals; returns its own CPU in the window and frames sent.
fn writer(
    mut master: std::fs::File,
    lines: Vec<Vec<u8>>,
    rate: usize,
    warmup: Duration,
    window: Duration,
    marks: std::sync::mpsc::Sender<()>,
) -> std::io::Result<(Duration, usize)> {
    let t0 = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let (mut sent, mut n) = (0usize, 0u32);
    let mut marks_cpu = Vec::new();
    loop {
        let elapsed = t0.elapsed();
        if marks_cpu.is_empty() && elapsed >= warmup {
            marks_cpu.push(cpu(libc::RUSAGE_THREAD));
            let _ = marks.send(());
        }
        if elapsed >= warmup + window {
            let c1 = cpu(libc::RUSAGE_THREAD);
            let _ = marks.send(());
            return Ok((c1.saturating_sub(marks_cpu[0]), sent));
        }
        let mut chunk = Vec::with_capacity(per_tick * 32);
        for _ in 0..per_tick {
            chunk.extend_from_slice(&lines[sent % lines.len()]);
            sent += 1;
        }
        master.write_all(&chunk)?;
        n += 1;
        if let Some(wait) = (tick * n).checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn cpu_at_rate(
    dir: &Path,
    text: &str,
    rules: bool,
    rate: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let pty = Pty::open().context("openpty")?;
    let db = compiled(text)?;
    let lines: Vec<Vec<u8>> = frames(&db, rate * 4).iter().map(slcan::encode).collect();
    let dbc_path = dir.join(format!("bench-{rules}.dbc"));
    std::fs::write(&dbc_path, text)?;
    let cfg = config(&format!(
        "name = \"bench\"\ninterface = \"slcan\"\npath = {:?}\ndbc = [{dbc_path:?}]\n{}",
        pty.path,
        if rules { RULES } else { "" }
    ))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let journal = Journal::open(JournalConfig {
        path: dir.join(format!("cpu-{rules}")),
        ..JournalConfig::default()
    })?;
    let states = SourceStates::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let ctx = SourceCtx {
        gateway: "bench".into(),
        journal: journal.clone(),
        slot: states.register("bench", "can"),
        shutdown: stop.clone(),
        commands: Default::default(),
    };
    let task = rt.spawn(can::run(cfg, ctx));
    let t0 = Instant::now();
    while states
        .snapshot()
        .get("bench")
        .is_none_or(|s| s.state != "running")
    {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "CAN source never opened the pty"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let master = std::fs::File::from(pty.master);
    // Drain what the source writes (open commands, status polls).
    let mut reader = master.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while std::io::Read::read(&mut reader, &mut buf).is_ok_and(|n| n > 0) {}
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let window = Duration::from_secs(seconds.max(1));
    let w = std::thread::Builder::new()
        .name("slcan-writer".into())
        .spawn(move || writer(master, lines, rate, Duration::from_secs(2), window, tx))?;
    let frames_now = || states.snapshot().get("bench").map_or(0, |s| s.frames);
    rx.recv().context("writer ended early")?;
    let (self0, frames0, t_start) = (cpu(libc::RUSAGE_SELF), frames_now(), Instant::now());
    rx.recv().context("writer ended early")?;
    let (self1, frames1, wall) = (cpu(libc::RUSAGE_SELF), frames_now(), t_start.elapsed());
    let (writer_cpu, sent) = w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    stop.cancel();
    rt.block_on(task)?;
    let (invalid, state) = states
        .snapshot()
        .get("bench")
        .map_or((0, String::new()), |s| (s.invalid, s.state.clone()));
    let gateway = (self1 - self0).saturating_sub(writer_cpu);
    println!(
        "CPU at {rate} frames/s over a pty, rules {}: {:.2} % of one core ({sent} frames sent, {} journaled in the {:.1} s window, {invalid} invalid, state {state})",
        rules_label(rules),
        100.0 * gateway.as_secs_f64() / wall.as_secs_f64(),
        frames1 - frames0,
        wall.as_secs_f64(),
    );
    journal.close()?;
    drop(pty.slave);
    Ok(())
}

/// Resident set size, kB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn memory(text: &str) -> anyhow::Result<()> {
    let cfg = config("name = \"bench\"\ninterface = \"candump\"\npath = \"/dev/null\"\n")?;
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    let trim = || unsafe { libc::malloc_trim(0) };
    trim();
    let before = rss_kb();
    let db = compiled(text)?;
    let (messages, signals) = (db.messages.len(), db.signal_count());
    let ingest = Ingest::new(&cfg, "bench", db);
    trim();
    let after = rss_kb();
    println!(
        "memory: a {messages}-message DBC ({signals} signals, {} KB of text) adds {} kB RSS to a source",
        text.len() / 1024,
        after.saturating_sub(before)
    );
    drop(ingest);
    Ok(())
}

/// Run `bench can`.
pub fn run(args: CanArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fieldgate-bench-can-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let want = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let realistic = dbc(60);
    let result = (|| {
        if want(Part::Memory) {
            memory(&dbc(500))?;
        }
        if want(Part::Throughput) {
            throughput(&dir, &realistic, false, args.frames)?;
            throughput(&dir, &realistic, true, args.frames)?;
        }
        if want(Part::Cpu) {
            cpu_at_rate(&dir, &realistic, false, args.rate, args.seconds)?;
            cpu_at_rate(&dir, &realistic, true, args.rate, args.seconds)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
