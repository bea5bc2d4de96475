//! MongoDB failing under a steady 1,000 frames/s: one long outage, and repeated SIGKILLs
//! that land while an `insert` is in flight (seen on the wire by the proxy). Afterwards
//! every journaled seq is in `frames` exactly once with its own content, each device's
//! messages are in the order sent, and the time until the sync lag is back under 1 s is
//! reported.

use super::stack::{no_collisions, verify, Stack};
use super::Profile;
use crate::gateway::{float, num, Gateway};
use crate::report::Outcome;
use crate::rig::{until, Ctx};
use std::time::{Duration, Instant};

/// Ingest rate, frames/s.
const RATE: u64 = 1_000;

/// Sync lag under which MongoDB counts as caught up (s).
const CAUGHT_UP: f64 = 1.0;

/// Whether the sink is caught up: lag under a second.
fn caught_up(s: &serde_json::Value) -> bool {
    float(s, "sinks/mongo/lag_seconds") < CAUGHT_UP && s["sinks"]["mongo"]["state"] == "online"
}

/// Start the stack and a gateway publishing at [`RATE`], in sync with MongoDB.
fn setup(ctx: &Ctx, tag: &str, id: &str) -> anyhow::Result<(Stack, Gateway)> {
    let stack = Stack::start(ctx, tag, true)?;
    let mut gw = Gateway::create(ctx, "gateway", &stack.spec(id, &ctx.path("journal")))?;
    stack.start_subscribed(ctx, &mut gw)?;
    Ok((stack, gw))
}

/// Wait for the catch-up after MongoDB came back at `up`; returns its duration.
fn catch_up(gw: &Gateway, up: Instant, limit: Duration, out: &mut Outcome) -> anyhow::Result<f64> {
    gw.status_until(limit, "the sync lag to fall under 1 s", |s| {
        caught_up(s) && num(s, "sinks/mongo/delivered") > 0
    })?;
    let s = up.elapsed().as_secs_f64();
    out.secs("catchup", s);
    Ok(s)
}

/// The long outage.
pub fn outage(ctx: &Ctx, p: &Profile, out: &mut Outcome) -> anyhow::Result<()> {
    let id = "chaos-outage";
    let (mut stack, gw) = setup(ctx, "outage", id)?;
    let load = stack.load(RATE)?;
    gw.status_until(
        Duration::from_secs(60),
        "MongoDB in sync before the outage",
        |s| caught_up(s) && num(s, "sinks/mongo/delivered") > 0,
    )?;
    let Some(mongo) = stack.mongo.as_mut() else {
        anyhow::bail!("no MongoDB");
    };
    mongo.kill();
    let down = Instant::now();
    let (mut offline_seen, mut status_errors, mut backlog) = (false, 0u64, 0u64);
    while down.elapsed() < p.outage {
        match gw.status() {
            Ok(s) => {
                offline_seen |= s["sinks"]["mongo"]["state"] == "offline";
                backlog = num(&s, "sinks/mongo/lag");
            }
            Err(_) => status_errors += 1,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    mongo.restart()?;
    let up = Instant::now();
    out.secs("outage", p.outage.as_secs_f64());
    out.figure("rate", RATE);
    out.figure("backlog", backlog);
    let limit = Duration::from_secs(120) + p.outage * 3;
    let catchup = catch_up(&gw, up, limit, out)?;
    out.figure(
        "drain_rate",
        format!("{:.0}/s", backlog as f64 / catchup.max(0.001) + RATE as f64),
    );
    finish(ctx, &stack, gw, load, id, out)?;
    out.check(offline_seen, || {
        "the sink never reported offline during the outage".into()
    });
    out.figure("status_errors", status_errors);
    out.check(status_errors == 0, || {
        format!("/api/status failed {status_errors} times during the outage")
    });
    Ok(())
}

/// Repeated SIGKILLs mid-batch.
pub fn kills(ctx: &Ctx, p: &Profile, out: &mut Outcome) -> anyhow::Result<()> {
    let id = "chaos-mkill";
    let (mut stack, gw) = setup(ctx, "mkill", id)?;
    let load = stack.load(RATE)?;
    gw.status_until(Duration::from_secs(60), "MongoDB in sync", caught_up)?;
    let Some(mongo) = stack.mongo.as_mut() else {
        anyhow::bail!("no MongoDB");
    };
    let mut mid_batch = 0;
    let mut up = Instant::now();
    for k in 0..p.mongo_kills {
        // Let the sink reconnect and deliver for a while, then catch an insert in flight.
        let wait = ctx.random_between(Duration::from_millis(500), Duration::from_millis(3_000));
        std::thread::sleep(wait);
        let inserts = &mongo.inserts;
        let caught = until(Duration::from_secs(60), "an insert in flight", || {
            Ok((inserts.in_flight() > 0).then_some(()))
        })
        .is_ok();
        mongo.kill();
        if caught {
            mid_batch += 1;
        }
        eprintln!(
            "  kill {k}: {}",
            if caught {
                "mid-batch"
            } else {
                "no insert in flight"
            }
        );
        mongo.restart()?;
        up = Instant::now();
    }
    out.figure("kills", p.mongo_kills);
    out.figure("mid_batch", mid_batch);
    out.figure(
        "kind",
        if mongo.killable() {
            "sigkill"
        } else {
            "severed (external server)"
        },
    );
    out.check(mid_batch == p.mongo_kills, || {
        format!(
            "only {mid_batch} of {} kills landed mid-batch",
            p.mongo_kills
        )
    });
    catch_up(&gw, up, Duration::from_secs(300), out)?;
    let s = gw.status()?;
    out.figure("resent", num(&s, "sinks/mongo/resent"));
    finish(ctx, &stack, gw, load, id, out)
}

/// Stop the load, let everything drain, stop the gateway and check the result.
fn finish(
    ctx: &Ctx,
    stack: &Stack,
    mut gw: Gateway,
    load: crate::load::Load,
    id: &str,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let published = load.stop();
    stack.drain(&gw, &published, Duration::from_secs(600))?;
    let collisions = num(&gw.status()?, "sinks/mongo/collisions");
    let exit = gw.stop(ctx)?;
    out.check(exit.success(), || {
        format!("the gateway did not stop cleanly: {exit}")
    });
    verify(stack, id, &ctx.path("journal"), &published, true, out)?;
    no_collisions(stack, collisions, out);
    Ok(())
}
