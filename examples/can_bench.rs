//! CAN benchmark (`cargo run --release --example can_bench`): prints numbers, asserts nothing.
//!
//! - decode + journal throughput: frames of a generated 60-message DBC (multiplexed,
//!   Motorola, signed and enum signals included) through the source's [`Ingest`] pipeline
//!   into a real journal with `append_many`, per-signal rules off and on;
//! - CPU at 4,000 frames/s (a busy 500 kbit/s bus): a writer thread plays a CANable on a
//!   pty, the real CAN source reads it into a real journal; CPU is the process's time
//!   minus the writer's own, over a measured window, rules off and on;
//! - memory: RSS added by compiling a 500-message DBC into a source's pipeline.
//!
//! It lives outside the product binary (an example of the library, sharing the release
//! build); `CAN_BENCH_FRAMES` and `CAN_BENCH_SECONDS` size it.

use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::source::can::dbc::Database;
use fieldgate::source::can::ingest::Ingest;
use fieldgate::source::can::{self, slcan, CanConfig, CanFrame};
use fieldgate::source::sim_devices::Pty;
use fieldgate::source::{SourceCtx, SourceStates};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

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
        .map(|n| {
            let m = &db.messages[n % db.messages.len()];
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = (n / db.messages.len()) as u64;
            let mut data = [0u8; 8];
            for (i, b) in data.iter_mut().enumerate() {
                *b = ((t >> (i % 4)) as u8).wrapping_add((x >> (8 * i)) as u8 & 0x03);
            }
            data[0] &= if m.signals.first().is_some_and(|s| s.name == "Sel") {
                0x03
            } else {
                0xFF
            };
            CanFrame::new(m.key & can::EFF_MAX, m.key & (1 << 31) != 0, &data).expect("frame")
        })
        .collect()
}

fn config(text: &str) -> CanConfig {
    toml::from_str(text).expect("config")
}

const RULES: &str = "rules = [{ signal = \"Mode_*\", on_change = true, max_period_ms = 10000 }, \
                     { signal = \"*\", min_period_ms = 100, deadband = 0.5, max_period_ms = 5000 }]\n";

fn throughput(dir: &std::path::Path, text: &str, rules: bool, count: usize) {
    let mut db = Database::default();
    db.add("bench.dbc", text).expect("dbc");
    let input = frames(&db, count);
    let journal = Journal::open(JournalConfig {
        path: dir.join(format!("tp-{rules}")),
        ..JournalConfig::default()
    })
    .expect("journal");
    let cfg = config(&format!(
        "name = \"bench\"\ninterface = \"candump\"\npath = \"/dev/null\"\n{}",
        if rules { RULES } else { "" }
    ));
    let mut ingest = Ingest::new(&cfg, "bench", db);
    let (t0, cpu0) = (Instant::now(), cpu(libc::RUSAGE_SELF));
    let mut journaled = 0usize;
    let mut out = Vec::with_capacity(4096);
    let mut decoding = Duration::ZERO;
    for chunk in input.chunks(4096) {
        let now = fieldgate::frame::now_ms();
        let d0 = Instant::now();
        for f in chunk {
            ingest.push(f, None, now, &mut out);
        }
        decoding += d0.elapsed();
        journaled += out.len();
        journal
            .append_many(std::mem::take(&mut out))
            .expect("append");
    }
    let last = journal.last_seq();
    journal.wait_durable_blocking(last).expect("durable");
    let (secs, cpu_secs) = (
        t0.elapsed().as_secs_f64(),
        (cpu(libc::RUSAGE_SELF) - cpu0).as_secs_f64(),
    );
    println!(
        "decode+journal, rules {}: {count} frames in {secs:.2} s = {:.0} frames/s, {:.0} per CPU-second ({journaled} journaled, {} bytes); decoding alone {:.0} frames/s",
        if rules { "on " } else { "off" },
        count as f64 / secs,
        count as f64 / cpu_secs,
        journal.stats().bytes,
        count as f64 / decoding.as_secs_f64()
    );
    journal.close().expect("close");
}

/// CPU time (user + system) of `who` (`RUSAGE_SELF` or `RUSAGE_THREAD`).
fn cpu(who: libc::c_int) -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cpu_at_rate(dir: &std::path::Path, text: &str, rules: bool, rate: usize, seconds: u64) {
    let pty = Pty::open().expect("pty");
    let mut db = Database::default();
    db.add("bench.dbc", text).expect("dbc");
    let lines: Vec<Vec<u8>> = frames(&db, rate * 4).iter().map(slcan::encode).collect();
    let dbc_path = dir.join(format!("bench-{rules}.dbc"));
    std::fs::write(&dbc_path, text).expect("dbc file");
    let cfg = config(&format!(
        "name = \"bench\"\ninterface = \"slcan\"\npath = {:?}\ndbc = [{dbc_path:?}]\n{}",
        pty.path,
        if rules { RULES } else { "" }
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let journal = Journal::open(JournalConfig {
        path: dir.join(format!("cpu-{rules}")),
        ..JournalConfig::default()
    })
    .expect("journal");
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
    let mut master = std::fs::File::from(pty.master);
    // Drain what the source writes (open commands, status polls).
    let mut reader = master.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while std::io::Read::read(&mut reader, &mut buf).is_ok_and(|n| n > 0) {}
    });
    let warmup = Duration::from_secs(2);
    let window = Duration::from_secs(seconds);
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let t0 = Instant::now();
        let tick = Duration::from_millis(10);
        let per_tick = rate / 100;
        let mut sent = 0usize;
        let mut marks = Vec::new();
        let mut n = 0u32;
        loop {
            let elapsed = t0.elapsed();
            if marks.is_empty() && elapsed >= warmup {
                marks.push(cpu(libc::RUSAGE_THREAD));
                let _ = tx.send(());
            }
            if elapsed >= warmup + window {
                marks.push(cpu(libc::RUSAGE_THREAD));
                let _ = tx.send(());
                break;
            }
            let mut chunk = Vec::with_capacity(per_tick * 32);
            for _ in 0..per_tick {
                chunk.extend_from_slice(&lines[sent % lines.len()]);
                sent += 1;
            }
            master.write_all(&chunk).expect("write pty");
            n += 1;
            if let Some(wait) = (tick * n).checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        (marks[1] - marks[0], sent)
    });
    rx.recv().expect("warm-up over");
    let (self0, frames0, t0) = (
        cpu(libc::RUSAGE_SELF),
        states.snapshot()["bench"].frames,
        Instant::now(),
    );
    rx.recv().expect("window over");
    let (self1, frames1, wall) = (
        cpu(libc::RUSAGE_SELF),
        states.snapshot()["bench"].frames,
        t0.elapsed(),
    );
    let (writer_cpu, sent) = writer.join().expect("writer");
    stop.cancel();
    let _ = rt.block_on(task);
    let st = &states.snapshot()["bench"];
    let gateway = (self1 - self0).saturating_sub(writer_cpu);
    println!(
        "CPU at {rate} frames/s over a pty, rules {}: {:.2} % of one core ({} frames sent, {} journaled in the window, {} invalid, state {})",
        if rules { "on " } else { "off" },
        100.0 * gateway.as_secs_f64() / wall.as_secs_f64(),
        sent,
        frames1 - frames0,
        st.invalid,
        st.state
    );
    journal.close().expect("close");
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

fn memory(text: &str) {
    let cfg = config("name = \"bench\"\ninterface = \"candump\"\npath = \"/dev/null\"\n");
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    let trim = || unsafe { libc::malloc_trim(0) };
    trim();
    let before = rss_kb();
    let mut db = Database::default();
    db.add("big.dbc", text).expect("dbc");
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
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let realistic = dbc(60);
    let count: usize = std::env::var("CAN_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seconds: u64 = std::env::var("CAN_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    memory(&dbc(500));
    throughput(dir.path(), &realistic, false, count);
    throughput(dir.path(), &realistic, true, count);
    cpu_at_rate(dir.path(), &realistic, false, 4000, seconds);
    cpu_at_rate(dir.path(), &realistic, true, 4000, seconds);
}
