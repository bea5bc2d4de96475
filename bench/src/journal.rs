//! `fieldgate-bench journal`: durable append throughput and disk bytes per frame.

use crate::synthetic::synthetic_frame;
use anyhow::Context;
use clap::Args;
use fieldgate::frame::{key_seq, seq_key, Frame};
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::units::{ByteSize, Positive};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `bench journal`.
#[derive(Args)]
pub struct JournalArgs {
    /// Frames to append (0 with --report: until killed).
    #[arg(long, default_value_t = 200_000)]
    frames: u64,
    /// Approximate JSON payload size, bytes.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Journal directory (default: a fresh temporary one).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Group-commit window, ms.
    #[arg(long, default_value_t = 20)]
    flush_ms: u64,
    /// Journal byte cap.
    #[arg(long, default_value = "4GiB")]
    max_bytes: String,
    /// sled page cache (default: the journal's default).
    #[arg(long)]
    cache_bytes: Option<String>,
    /// Print `issued N` / `durable N` every --batch frames (the crash test uses this).
    #[arg(long)]
    report: bool,
    /// Frames between durability waits in --report mode.
    #[arg(long, default_value_t = 200)]
    batch: u64,
    /// Reads timed after the appends: `range(seq, 100)` and `get(seq)` at spread seqs.
    #[arg(long, default_value_t = 20_000)]
    reads: u64,
}

/// Bytes this process has caused to be written to storage (`/proc/self/io` write_bytes).
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Run `bench journal`.
pub fn run(args: JournalArgs) -> anyhow::Result<()> {
    let JournalArgs {
        frames,
        payload_bytes,
        data,
        flush_ms,
        max_bytes,
        cache_bytes,
        report,
        batch,
        reads,
    } = args;
    {
        {
            let tmp;
            let path = match data {
                Some(p) => p,
                None => {
                    tmp = tempdir()?;
                    tmp.join("journal")
                }
            };
            let mut cfg = JournalConfig {
                path: path.clone(),
                flush_ms: Positive(flush_ms.max(1)),
                max_bytes: ByteSize(
                    fieldgate::units::parse_bytes(&max_bytes).context("--max-bytes")?,
                ),
                ..JournalConfig::default()
            };
            if let Some(c) = cache_bytes {
                cfg.cache_bytes =
                    ByteSize(fieldgate::units::parse_bytes(&c).context("--cache-bytes")?);
            }
            let journal = Journal::open(cfg)?;
            if report {
                return report_loop(&journal, frames, payload_bytes, batch.max(1), reads);
            }
            let encoded = synthetic_frame(0, payload_bytes).encode().len() as u64 + 8;
            // Frames are built before the clock starts: we time the journal, not serde_json.
            let input: Vec<Frame> = (0..frames)
                .map(|n| synthetic_frame(n, payload_bytes))
                .collect();
            let io0 = write_bytes();
            let t0 = Instant::now();
            let mut last = 0;
            for f in input {
                last = journal.append(f)?;
            }
            let append_s = t0.elapsed().as_secs_f64();
            journal.wait_durable_blocking(last)?;
            let total_s = t0.elapsed().as_secs_f64();
            let written = write_bytes() - io0;
            let stats = journal.stats();
            let timed = Reads::time(&journal, last, reads)?;
            journal.close()?;
            let per_frame = written as f64 / frames.max(1) as f64;
            println!(
                "journal bench: {frames} frames, payload ~{payload_bytes} B, flush_ms {flush_ms}"
            );
            println!("  encoded frame (key+value):  {encoded} B");
            println!(
                "  append (not yet durable):   {:.0} frames/s",
                frames as f64 / append_s
            );
            println!(
                "  durable throughput:         {:.0} frames/s ({total_s:.2} s)",
                frames as f64 / total_s
            );
            println!(
                "  group commits:              {} ({:.0} frames/commit)",
                stats.flushes,
                frames as f64 / stats.flushes.max(1) as f64
            );
            println!(
                "  disk write_bytes/frame:     {per_frame:.0} B ({:.2} x encoded)",
                per_frame / encoded as f64
            );
            println!("  sled size on disk:          {} B", stats.disk_bytes);
            timed.print(reads);
            if path.starts_with(std::env::temp_dir()) {
                let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
            }
            Ok(())
        }
    }
}

/// Read timings over `reads` seqs spread over 1..=`last` (a multiplicative hash, so
/// successive reads land in different chunks).
struct Reads {
    /// Mean µs per `Journal::range(seq, 100)`.
    range_us: f64,
    /// Mean µs per `Journal::get(seq)`.
    get_us: f64,
    /// Mean µs to find the chunk holding a seq by forward scans of the keys below it
    /// (`Journal::chunk_start`, where `Journal::range` starts since 2026-12-01).
    forward_us: f64,
    /// Mean µs to find it by one reverse step (`range(..=key).next_back()`: what
    /// `Journal::range` did before, until its 1 MiB of binary size was measured).
    reverse_us: f64,
}

impl Reads {
    fn time(journal: &Journal, last: u64, reads: u64) -> anyhow::Result<Self> {
        let seqs: Vec<u64> = (0..reads)
            .map(|i| 1 + i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % last.max(1))
            .collect();
        let per_call = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / reads.max(1) as f64;
        let frames = journal.tree("frames")?;
        let t = Instant::now();
        let forward: u64 = seqs.iter().map(|&s| journal.chunk_start(s)).sum();
        let forward_us = per_call(t);
        let t = Instant::now();
        #[allow(
            clippy::disallowed_methods,
            reason = "the old lookup, timed for comparison"
        )]
        let reverse: u64 = seqs
            .iter()
            .map(|&s| {
                frames
                    .range(..=seq_key(s))
                    .next_back()
                    .and_then(|item| key_seq(&item.ok()?.0))
                    .unwrap_or(s)
            })
            .sum();
        let reverse_us = per_call(t);
        anyhow::ensure!(forward == reverse, "the two lookups disagree");
        let t = Instant::now();
        let read: usize = seqs.iter().map(|&s| journal.range(s, 100).len()).sum();
        let range_us = per_call(t);
        let t = Instant::now();
        let found = seqs.iter().filter(|&&s| journal.get(s).is_some()).count();
        let get_us = per_call(t);
        std::hint::black_box((read, found));
        Ok(Self {
            range_us,
            get_us,
            forward_us,
            reverse_us,
        })
    }

    fn print(&self, reads: u64) {
        let Self {
            range_us,
            get_us,
            forward_us,
            reverse_us,
        } = self;
        println!("  range(seq, 100) read:       {range_us:.1} µs/call ({reads} calls)");
        println!("  get(seq) read:              {get_us:.1} µs/call");
        println!("  chunk lookup, forward:      {forward_us:.2} µs/call");
        println!("  chunk lookup, reverse:      {reverse_us:.2} µs/call");
    }
}

/// Append forever (or `frames`), printing what was issued and what is durable; then, for
/// a finite run, the read timings.
fn report_loop(
    journal: &Journal,
    frames: u64,
    payload_bytes: usize,
    batch: u64,
    reads: u64,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "start {}", journal.last_seq() + 1)?;
    let mut n = 0u64;
    while frames == 0 || n < frames {
        let mut last = 0;
        for _ in 0..batch {
            last = journal.append(synthetic_frame(n, payload_bytes))?;
            n += 1;
        }
        writeln!(out, "issued {last}")?;
        out.flush()?;
        journal.wait_durable_blocking(last)?;
        writeln!(out, "durable {last}")?;
        out.flush()?;
    }
    drop(out);
    if reads > 0 {
        // A finite run with small --batch leaves small chunks: reads at their worst.
        Reads::time(journal, journal.last_seq(), reads)?.print(reads);
    }
    journal.close()?;
    Ok(())
}

/// A fresh directory under the system temp dir.
fn tempdir() -> anyhow::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!(
        "fieldgate-bench-{}-{}",
        std::process::id(),
        fieldgate::frame::now_ms()
    ));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
