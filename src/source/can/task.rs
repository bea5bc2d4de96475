//! The CAN source task: one bus, from open to shutdown.
//!
//! It behaves like a serial source: the DBC files are compiled once, then the bus is
//! opened ([`Link::open`]), read in bursts (everything already buffered, up to a batch)
//! through [`Ingest`] into one `append_many`, and reopened with the serial sources'
//! backoff when it fails (unplugged adapter, dropped TCP connection, missing interface or
//! a kernel without CAN: state `waiting` with the reason, logged once per outage). Bad
//! input is counted per reason and logged at a rate limit; a candump replay that reaches
//! its end leaves the source `stopped`. While a `writable` bus is open, `command`s for its
//! device are transmitted on it.

use super::command;
use super::config::CanConfig;
use super::ingest::Ingest;
use super::transport::{Event, Link};
use crate::frame::{now_ms, Frame};
use crate::source::events::{count_append, InvalidFrame, LogLimit};
use crate::source::port::{Backoff, Outage};
use crate::source::SourceCtx;
use futures_util::FutureExt;
use std::time::Duration;
use tracing::Instrument;

/// Most events handled (and frames journaled) in one batch.
const BATCH_MAX: usize = 4096;
/// A batch smaller than this means the bus trickles: wait `gather_ms` before reading on.
const TRICKLE: usize = 32;
/// Commands queued per bus before `command` reports the queue full.
const COMMAND_QUEUE: usize = 16;
/// DBC warnings logged one by one at start (the rest are counted).
const WARNINGS_LOGGED: usize = 10;

/// Why reading a bus stopped.
enum Ended {
    /// Shutdown fired.
    Shutdown,
    /// The journal refused frames; the source cannot continue.
    Journal(String),
    /// The adapter, connection or interface went away.
    Lost(std::io::Error),
    /// A replay reached the end of its log.
    Finished,
}

/// Run one CAN bus until shutdown.
pub async fn run(cfg: CanConfig, ctx: SourceCtx) {
    let span = tracing::info_span!("can", device = %cfg.device(),
        vehicle = cfg.vehicle.as_deref().unwrap_or(""));
    run_bus(cfg, ctx).instrument(span).await
}

/// The body of [`run`], inside the bus's span.
async fn run_bus(cfg: CanConfig, ctx: SourceCtx) {
    let compile = cfg.clone();
    let db = match tokio::task::spawn_blocking(move || compile.database()).await {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return fail(&cfg, &ctx, e.to_string()),
        Err(e) => return fail(&cfg, &ctx, format!("DBC compile task: {e}")),
    };
    for w in db.warnings.iter().take(WARNINGS_LOGGED) {
        tracing::warn!(source = %cfg.name, warning = %w, "DBC signal skipped");
    }
    if db.warnings.len() > WARNINGS_LOGGED {
        tracing::warn!(source = %cfg.name, more = db.warnings.len() - WARNINGS_LOGGED, "more DBC warnings");
    }
    tracing::info!(source = %cfg.name, interface = cfg.interface.as_str(), messages = db.messages.len(),
        signals = db.signal_count(), j1939 = cfg.j1939, "CAN decoding ready");
    let mut ingest = Ingest::new(&cfg, &ctx.gateway, db);
    let mut backoff = Backoff::default();
    let mut outage = Outage::default();
    let mut limit = LogLimit::new();
    let location = cfg.location();
    while !ctx.shutdown.is_cancelled() {
        let opened = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            opened = Link::open(&cfg) => opened,
        };
        match opened {
            Ok(link) => {
                outage.opened(&cfg.name, &location, &ctx.slot);
                backoff.reset();
                match read_bus(&cfg, &ctx, link, &mut ingest, &mut limit).await {
                    Ended::Shutdown => break,
                    Ended::Journal(e) => return fail(&cfg, &ctx, e),
                    Ended::Finished => {
                        tracing::info!(source = %cfg.name, path = %location.display(), "candump replay finished");
                        ctx.slot.set_detail(ingest.status());
                        ctx.slot.set_state("stopped", None);
                        return;
                    }
                    Ended::Lost(e) => outage.failed(&cfg.name, &location, &ctx.slot, &e),
                }
            }
            Err(e) => outage.failed(&cfg.name, &location, &ctx.slot, &e),
        }
        ctx.slot.set_detail(ingest.status());
        if !backoff.wait(&ctx.shutdown).await {
            break;
        }
    }
    ctx.slot.set_detail(ingest.status());
    ctx.slot.set_state("stopped", None);
}

/// The source cannot go on: log it and report `stopped` with the reason.
fn fail(cfg: &CanConfig, ctx: &SourceCtx, e: String) {
    tracing::error!(source = %cfg.name, error = %e, "CAN source stops");
    ctx.slot.set_state("stopped", Some(e));
}

/// Reads one open link until it fails, ends or shutdown fires.
async fn read_bus(
    cfg: &CanConfig,
    ctx: &SourceCtx,
    mut link: Link,
    ingest: &mut Ingest,
    limit: &mut LogLimit,
) -> Ended {
    // Commands for this device reach the bus while it is open (and only if writable).
    let (cmd_tx, mut commands) = tokio::sync::mpsc::channel(COMMAND_QUEUE);
    if cfg.writable {
        if let Err(e) = ctx.commands.register(&cfg.name, cfg.device(), cmd_tx) {
            tracing::error!(error = %e, "the bus's device takes no commands");
        }
    } else {
        drop(cmd_tx);
    }
    let replay = link.is_replay();
    let mut beat = crate::source::beat_interval();
    let mut batch: Vec<Frame> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Ended::Shutdown,
            _ = beat.tick() => {
                ctx.slot.beat();
                ingest.tick(now_ms());
                report(cfg, ctx, ingest, limit);
                ctx.slot.set_detail(ingest.status());
                continue;
            }
            Some(cmd) = commands.recv() => {
                if let Err(e) = transmit(cfg, &mut link, &cmd.payload).await {
                    return Ended::Lost(e);
                }
                continue;
            }
            ev = link.next() => ev,
        };
        let now = now_ms();
        let mut ev = first;
        let mut items = 0usize;
        let end = loop {
            items += 1;
            match ev {
                None => break Some(None),
                Some(Err(e)) => break Some(Some(e)),
                Some(Ok(Event::Frame(f, device_ts))) => ingest.push(&f, device_ts, now, &mut batch),
                Some(Ok(Event::Invalid(reason, detail))) => InvalidFrame {
                    source: &cfg.name,
                    reason,
                    detail: &detail,
                }
                .emit(&ctx.slot, limit),
            }
            if items >= BATCH_MAX || batch.len() >= BATCH_MAX {
                break None;
            }
            match link.next().now_or_never() {
                Some(next) => ev = next,
                None => break None,
            }
        };
        report(cfg, ctx, ingest, limit);
        if !batch.is_empty() {
            let n = batch.len() as u64;
            // A bus cannot be paused: what the stalled disk cannot take is counted.
            let appended = ctx.journal.append_many(std::mem::take(&mut batch));
            if let Err(e) = count_append(appended, n, &cfg.name, &ctx.slot, limit) {
                return Ended::Journal(e.to_string());
            }
        }
        match end {
            Some(None) if replay => return Ended::Finished,
            Some(None) => {
                return Ended::Lost(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "adapter closed the stream",
                ))
            }
            Some(Some(e)) => return Ended::Lost(e),
            None => {}
        }
        // Like the serial source: one wake-up per `gather_ms` instead of one per frame.
        if items < TRICKLE && cfg.gather_ms > 0 && !replay {
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return Ended::Shutdown,
                _ = tokio::time::sleep(Duration::from_millis(cfg.gather_ms)) => {}
            }
        }
    }
}

/// Counts and logs (rate-limited) what the pipeline found wrong.
fn report(cfg: &CanConfig, ctx: &SourceCtx, ingest: &mut Ingest, limit: &mut LogLimit) {
    for (reason, detail) in ingest.issues.drain(..) {
        InvalidFrame {
            source: &cfg.name,
            reason,
            detail: &detail,
        }
        .emit(&ctx.slot, limit);
    }
}

/// Transmits a routed command; an error is returned only if the link itself failed.
async fn transmit(
    cfg: &CanConfig,
    link: &mut Link,
    cmd: &serde_json::Value,
) -> std::io::Result<()> {
    let frame = match command::parse(cmd) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(source = %cfg.name, error = %e, "CAN command not sent");
            return Ok(());
        }
    };
    match link.send(&frame).await {
        Ok(()) => {
            tracing::info!(source = %cfg.name, frame = ?frame, "CAN frame transmitted");
            Ok(())
        }
        // A socket refuses one frame (queue full, FD on a classic socket) and stays usable.
        Err(e)
            if matches!(link, Link::Socket(_)) || e.kind() == std::io::ErrorKind::InvalidInput =>
        {
            tracing::warn!(source = %cfg.name, frame = ?frame, error = %e, "CAN frame not transmitted");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
