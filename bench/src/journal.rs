//! `fieldgate-bench journal`: durable append throughput and disk bytes per frame.

use crate::synthetic::synthetic_frame;
use anyhow::Context;
use clap::Args;
use fieldgate::frame::Frame;
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
                return report_loop(&journal, frames, payload_bytes, batch.max(1));
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
            if path.starts_with(std::env::temp_dir()) {
                let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
            }
            Ok(())
        }
    }
}

/// Append forever (or `frames`), printing what was issued and what is durable.
fn report_loop(
    journal: &Journal,
    frames: u64,
    payload_bytes: usize,
    batch: u64,
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
