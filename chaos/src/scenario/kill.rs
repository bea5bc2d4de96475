//! kill -9 of the gateway at random moments (start-up included) during QoS1 ingest and
//! MongoDB sync. After every kill, before the next start, the journal must hold every
//! message the gateway had acknowledged to the broker, and the seqs of each run must lie
//! above everything stored before. At the end (one more clean run drains the broker's
//! queue and MongoDB catches up) nothing the broker acknowledged to the publisher is
//! missing, redelivered duplicates are counted, and MongoDB holds exactly the journal —
//! a reused seq would show as a document with another frame's content hash.

use super::stack::{no_collisions, verify, Stack};
use super::Profile;
use crate::check;
use crate::gateway::{num, Gateway};
use crate::report::Outcome;
use crate::rig::Ctx;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Publish rate during the trials, messages/s.
const RATE: u64 = 500;

/// Run the scenario.
pub fn run(ctx: &Ctx, p: &Profile, out: &mut Outcome) -> anyhow::Result<()> {
    let stack = Stack::start(ctx, "kill", true)?;
    let id = "chaos-kill";
    let journal = ctx.path("journal");
    let mut gw = Gateway::create(ctx, "gateway", &stack.spec(id, &journal))?;
    stack.start_subscribed(ctx, &mut gw)?;
    let load = stack.load(RATE)?;

    let mut copies: HashMap<u64, u32> = HashMap::new();
    let (mut next_from, mut stored_max) = (1u64, 0u64);
    let (mut collisions, mut reused, mut uptime) = (0u64, 0u64, Duration::ZERO);
    // Acknowledged messages missing from the journal after some kill (each counted once).
    let mut lost: std::collections::HashSet<u64> = std::collections::HashSet::new();
    for trial in 0..p.kill_trials {
        if trial > 0 {
            // Not waiting for it to be ready: the kill may land in the middle of start-up.
            gw.spawn(ctx)?;
        }
        let life = ctx.random_between(Duration::from_millis(100), Duration::from_millis(3_000));
        let t0 = Instant::now();
        while t0.elapsed() < life {
            // Collisions are counted per run: read them while it lives.
            if let Ok(s) = gw.status() {
                collisions = collisions.max(num(&s, "sinks/mongo/collisions"));
            }
            std::thread::sleep(Duration::from_millis(50).min(life.saturating_sub(t0.elapsed())));
        }
        gw.kill9(ctx);
        uptime += t0.elapsed();
        // PUBACKs the gateway wrote just before dying may still be in the proxy's pipe.
        std::thread::sleep(Duration::from_millis(200));
        let acked = stack.acks.acked();
        let (frames, _) = check::read_journal(&journal, next_from)?;
        if let Some(low) = frames.iter().map(|f| f.seq).min() {
            if low <= stored_max {
                reused += 1;
                out.fail(format!(
                    "trial {trial}: the run stored seq {low}, not above the {stored_max} stored before"
                ));
            }
        }
        if let Some(high) = frames.iter().map(|f| f.seq).max() {
            stored_max = high;
            next_from = high + 1;
        }
        for (n, c) in check::copies(&frames) {
            *copies.entry(n).or_default() += c;
        }
        let (missing, first) = check::missing(acked.iter().copied(), &copies);
        if missing > 0 {
            lost.extend(acked.iter().filter(|n| !copies.contains_key(n)));
            out.fail(format!(
                "trial {trial} (killed after {life:?}): {missing} messages the gateway had acknowledged are not in the journal, e.g. {first:?}"
            ));
        }
        eprintln!(
            "  trial {trial}: killed after {:.2} s; journal holds {} frames up to seq {stored_max}",
            life.as_secs_f64(),
            copies.values().map(|c| u64::from(*c)).sum::<u64>()
        );
    }

    // A last run drains the broker's queue and lets MongoDB catch up, then stops cleanly.
    stack.start_subscribed(ctx, &mut gw)?;
    let published = load.stop();
    stack.drain(&gw, &published, Duration::from_secs(180))?;
    let s = gw.status()?;
    collisions = collisions.max(num(&s, "sinks/mongo/collisions"));
    let exit = gw.stop(ctx)?;
    out.check(exit.success(), || {
        format!("the last run did not stop cleanly: {exit}")
    });

    out.figure("trials", p.kill_trials);
    out.secs("uptime", uptime.as_secs_f64());
    let frames = verify(&stack, id, &journal, &published, false, out)?;
    let dups = check::duplicates(&check::copies(&frames));
    let distinct = frames.len() as u64 - dups;
    out.figure(
        "duplicate_rate",
        format!("{:.3}%", 100.0 * dups as f64 / distinct.max(1) as f64),
    );
    out.figure("lost_at_kill", lost.len());
    out.figure("seq_reused", reused);
    no_collisions(&stack, collisions, out);
    Ok(())
}
