//! Slow consumers: 180 WebSocket clients reading, with and without 20 more that connect
//! with a 4 KiB socket receive buffer (set before connecting) and never read, so their
//! sockets really fill. With them, the ingest rate and the readers' publish → receive p99
//! must stay within 10 % of the phases without them (which run before and after, so a
//! change in the shared box's load shows in both); the stalled clients are told `lagged`
//! and closed with 1008 by the gateway (its log), and find their connection closed.

use super::Profile;
use crate::broker::Broker;
use crate::gateway::{num, Gateway, Spec};
use crate::load::Load;
use crate::report::Outcome;
use crate::rig::{locked, until, Ctx};
use crate::ws::{self, Latencies};
use futures_util::future::join_all;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Publish rate, messages/s.
const RATE: u64 = 500;
const READERS: usize = 180;
const STALLED: usize = 20;
/// Padding per message, bytes: the kernel's send buffer towards a stalled client grows to
/// 4 MiB (`tcp_wmem`'s default maximum) before the gateway's own per-client queue starts
/// to fill; at ~1.2 KiB a frame a stalled client goes through both and the three lag
/// events that close it within about 12 s of load.
const PAD: usize = 1_000;
/// SO_RCVBUF of the stalled clients.
const RCVBUF: u32 = 4096;
/// Allowed degradation.
const TOLERANCE: f64 = 0.10;

/// One phase's figures.
#[derive(Debug, Default)]
struct Phase {
    p50_ms: f64,
    p99_ms: f64,
    ingest: f64,
    readers_lagged: u64,
    stalled_ended: usize,
    stalled_lagged: u64,
    stalled_1008: usize,
    log_lagged: usize,
    log_1008: usize,
}

fn phase(
    ctx: &Ctx,
    gw: &Gateway,
    broker: &Broker,
    secs: Duration,
    stalled: bool,
) -> anyhow::Result<Phase> {
    let lats: Vec<Arc<Latencies>> = (0..READERS).map(|_| Arc::default()).collect();
    let readers: Vec<_> = lats
        .iter()
        .map(|l| {
            ctx.rt
                .spawn(ws::read_into(gw.port, gw.key.clone(), Arc::clone(l)))
        })
        .collect();
    until(Duration::from_secs(60), "the readers to connect", || {
        Ok(lats.iter().all(|l| l.connected.load(Relaxed)).then_some(()))
    })?;
    let stuck = if stalled {
        ctx.rt
            .block_on(join_all(
                (0..STALLED).map(|_| ws::stalled(gw.port, &gw.key, RCVBUF)),
            ))
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let log_from = gw.log_text().len();
    let load = Load::start(broker.port, RATE, PAD)?;
    std::thread::sleep(Duration::from_secs(1));
    let (f0, t0) = (num(&gw.status()?, "sources/broker/frames"), Instant::now());
    std::thread::sleep(secs);
    let (f1, dt) = (num(&gw.status()?, "sources/broker/frames"), t0.elapsed());
    let published = load.stop();
    anyhow::ensure!(published.in_order, "broker acks out of order");
    std::thread::sleep(Duration::from_secs(1));
    let mut samples: Vec<u32> = lats.iter().flat_map(|l| locked(&l.us).clone()).collect();
    let mut p = Phase {
        p50_ms: ws::quantile_ms(&mut samples, 0.50),
        p99_ms: ws::quantile_ms(&mut samples, 0.99),
        ingest: (f1 - f0) as f64 / dt.as_secs_f64(),
        readers_lagged: lats.iter().map(|l| l.lagged.load(Relaxed)).sum(),
        ..Phase::default()
    };
    for r in readers {
        r.abort();
    }
    let backlogs = ctx.rt.block_on(join_all(
        stuck.into_iter().map(|s| s.drain(Duration::from_secs(10))),
    ));
    p.stalled_ended = backlogs.iter().filter(|b| b.ended).count();
    p.stalled_lagged = backlogs.iter().map(|b| b.lagged).sum();
    p.stalled_1008 = backlogs
        .iter()
        .filter(|b| b.close_code == Some(1008))
        .count();
    let log = gw.log_text();
    let new = log.get(log_from..).unwrap_or("");
    p.log_lagged = new.matches("client lagged").count();
    p.log_1008 = new
        .lines()
        .filter(|l| l.contains("client closed by gateway") && l.contains("code=1008"))
        .count();
    eprintln!(
        "  {} stalled clients: {p:?}",
        if stalled { "with" } else { "without" }
    );
    Ok(p)
}

/// Run the scenario.
pub fn run(ctx: &Ctx, p: &Profile, out: &mut Outcome) -> anyhow::Result<()> {
    let broker = Broker::start(ctx)?;
    let mut spec = Spec::new("chaos-slow", &ctx.path("journal"));
    spec.mqtt = Some((format!("mqtt://{}", broker.address()), "chaos-slow".into()));
    let mut gw = Gateway::create(ctx, "gateway", &spec)?;
    gw.start(ctx)?;
    gw.status_until(Duration::from_secs(30), "the MQTT source", |s| {
        s["sources"]["broker"]["state"] == "running"
    })?;
    let mut base = vec![phase(ctx, &gw, &broker, p.slow_phase, false)?];
    let mut with = Vec::new();
    for _ in 0..p.slow_rounds {
        with.push(phase(ctx, &gw, &broker, p.slow_phase, true)?);
        base.push(phase(ctx, &gw, &broker, p.slow_phase, false)?);
    }
    // Each phase with stalled clients against the mean of the phases around it.
    let (mut worst_p99, mut worst_ingest) = (0.0f64, f64::INFINITY);
    for (i, w) in with.iter().enumerate() {
        let b99 = (base[i].p99_ms + base[i + 1].p99_ms) / 2.0;
        let bin = (base[i].ingest + base[i + 1].ingest) / 2.0;
        worst_p99 = worst_p99.max(w.p99_ms / b99);
        worst_ingest = worst_ingest.min(w.ingest / bin);
    }
    let mean =
        |v: &[Phase], f: fn(&Phase) -> f64| v.iter().map(f).sum::<f64>() / v.len().max(1) as f64;
    out.figure("rate", RATE);
    out.figure("readers", READERS);
    out.figure("stalled", STALLED);
    out.figure(
        "p50_without_ms",
        format!("{:.2}", mean(&base, |p| p.p50_ms)),
    );
    out.figure("p50_with_ms", format!("{:.2}", mean(&with, |p| p.p50_ms)));
    out.figure(
        "p99_without_ms",
        format!("{:.2}", mean(&base, |p| p.p99_ms)),
    );
    out.figure("p99_with_ms", format!("{:.2}", mean(&with, |p| p.p99_ms)));
    out.figure("p99_ratio", format!("{worst_p99:.3}"));
    out.figure(
        "ingest_without",
        format!("{:.0}/s", mean(&base, |p| p.ingest)),
    );
    out.figure("ingest_with", format!("{:.0}/s", mean(&with, |p| p.ingest)));
    out.figure("ingest_ratio", format!("{worst_ingest:.3}"));
    out.check(worst_p99 <= 1.0 + TOLERANCE, || {
        format!(
            "the readers' p99 rose {:.1} % with stalled clients",
            (worst_p99 - 1.0) * 100.0
        )
    });
    out.check(worst_ingest >= 1.0 - TOLERANCE, || {
        format!(
            "ingest fell {:.1} % with stalled clients",
            (1.0 - worst_ingest) * 100.0
        )
    });
    let readers_lagged: u64 = base.iter().chain(&with).map(|p| p.readers_lagged).sum();
    out.figure("readers_lagged", readers_lagged);
    out.check(readers_lagged == 0, || {
        format!("reading clients got {readers_lagged} lagged notices")
    });
    for w in &with {
        out.figure("stalled_closed", format!("{}/{STALLED}", w.stalled_ended));
        out.figure("lagged_logged", w.log_lagged);
        out.figure("closed_1008_logged", format!("{}/{STALLED}", w.log_1008));
        out.figure("close_frames_seen", w.stalled_1008);
        out.check(w.stalled_ended == STALLED, || {
            format!(
                "only {} of {STALLED} stalled clients were disconnected",
                w.stalled_ended
            )
        });
        out.check(w.log_1008 == STALLED && w.log_lagged >= STALLED, || {
            format!(
                "the gateway logged {} lag events and {} closes with 1008 for {STALLED} stalled clients",
                w.log_lagged, w.log_1008
            )
        });
    }
    let exit = gw.stop(ctx)?;
    out.check(exit.success(), || {
        format!("the gateway did not stop cleanly: {exit}")
    });
    Ok(())
}
