//! The journal's byte cap reached during a long MongoDB outage (the configured server never
//! answers): the oldest frames are evicted and counted (exactly: everything below the first
//! stored seq), `/api/status` keeps answering healthy, writes never fail, and a WebSocket
//! client sees live frames throughout with no gap over 1 s.

use super::stack::Stack;
use super::Profile;
use crate::check;
use crate::gateway::{num, Gateway};
use crate::report::Outcome;
use crate::rig::Ctx;
use crate::ws;
use std::time::{Duration, Instant};

/// Ingest rate, frames/s.
const RATE: u64 = 1_000;
/// The cap.
const CAP: &str = "256KiB";
const CAP_BYTES: u64 = 256 << 10;
/// The longest a live client may go without a frame.
const STALL_MAX: Duration = Duration::from_secs(1);

/// Run the scenario.
pub fn run(ctx: &Ctx, p: &Profile, out: &mut Outcome) -> anyhow::Result<()> {
    let stack = Stack::start(ctx, "cap", false)?;
    let id = "chaos-cap";
    let journal = ctx.path("journal");
    let mut spec = stack.spec(id, &journal);
    spec.max_bytes = Some(CAP.into());
    // A MongoDB that is never there: nothing is synced, so the cap evicts unsynced frames.
    let nowhere = fieldgate_bench::broker::free_port()?;
    spec.mongo = Some((
        format!("mongodb://127.0.0.1:{nowhere}/?directConnection=true"),
        stack.db.clone(),
    ));
    let mut gw = Gateway::create(ctx, "gateway", &spec)?;
    stack.start_subscribed(ctx, &mut gw)?;
    let seen = ctx.rt.block_on(ws::watch(gw.port, &gw.key))?;
    let load = stack.load(RATE)?;
    let t0 = Instant::now();
    let (mut worst_status, mut failures, mut write_failing, mut max_bytes) =
        (Duration::ZERO, 0u64, false, 0u64);
    let mut last = serde_json::Value::Null;
    while t0.elapsed() < p.cap_run {
        let asked = Instant::now();
        let ready = gw.get("/readyz").map(|(c, _)| c == 200).unwrap_or(false);
        match gw.status() {
            Ok(s) if ready => {
                worst_status = worst_status.max(asked.elapsed());
                write_failing |= s["journal"]["write_failing"] == true;
                max_bytes = max_bytes.max(num(&s, "journal/bytes"));
                if s["sources"]["broker"]["state"] != "running" {
                    failures += 1;
                }
                last = s;
            }
            _ => failures += 1,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let end = Instant::now();
    let published = load.stop();
    let gap = seen.longest_gap(t0 + Duration::from_millis(500), end);
    // Once ingest stopped the counters settle: everything below the oldest stored seq (seqs
    // start at 1; nothing was synced or pruned) must have been evicted, and counted.
    let settled = gw.status_until(Duration::from_secs(10), "the eviction counters", |s| {
        let first = num(s, "journal/first_seq");
        first > 1 && num(s, "journal/evicted") == first - 1
    });
    let last = settled.unwrap_or(last);
    let evicted = num(&last, "journal/evicted");
    let first = num(&last, "journal/first_seq");
    out.figure("rate", RATE);
    out.secs("run", p.cap_run.as_secs_f64());
    out.figure("cap", CAP_BYTES);
    out.figure("max_bytes", max_bytes);
    out.figure("evicted", evicted);
    out.figure("first_seq", first);
    out.secs("longest_live_gap", gap.as_secs_f64());
    out.secs("slowest_status", worst_status.as_secs_f64());
    out.figure("unhealthy_polls", failures);
    out.check(evicted > 0, || {
        "nothing was evicted: the cap was never reached".into()
    });
    // Eviction runs at every commit: one commit's worth over the cap at most.
    out.check(max_bytes <= CAP_BYTES + CAP_BYTES / 8, || {
        format!("the journal grew to {max_bytes} bytes over its {CAP_BYTES}-byte cap")
    });
    out.check(first > 0 && evicted == first - 1, || {
        format!("evicted {evicted} but the oldest stored seq is {first}")
    });
    out.check(gap <= STALL_MAX, || {
        format!(
            "the live client went {:.2} s without a frame",
            gap.as_secs_f64()
        )
    });
    out.check(!write_failing, || {
        "journal writes failed while evicting".into()
    });
    out.check(failures == 0, || {
        format!("{failures} status polls were unhealthy")
    });
    out.check(worst_status < Duration::from_secs(1), || {
        format!("/api/status took {:.2} s", worst_status.as_secs_f64())
    });
    out.check(
        seen.lagged.load(std::sync::atomic::Ordering::Relaxed) == 0,
        || "the live client was told it lagged".into(),
    );
    out.check(published.in_order, || "broker acks out of order".into());
    let exit = gw.stop(ctx)?;
    out.check(exit.success(), || {
        format!("the gateway did not stop cleanly: {exit}")
    });
    // What is left is one unbroken run of seqs.
    let (frames, _) = check::read_journal(&journal, 1)?;
    let contiguous = frames.windows(2).all(|w| w[1].seq == w[0].seq + 1);
    out.figure("stored", frames.len());
    out.check(
        contiguous && frames.first().is_some_and(|f| f.seq >= first),
        || "the journal's frames are not one run of seqs from the oldest kept".into(),
    );
    Ok(())
}
