//! The journal's filesystem (a size-capped tmpfs) fills up while the gateway runs under
//! QoS1 ingest: the service stays up, `/api/status` says `journal.write_failing` and the log
//! names the path, the gateway stops acknowledging MQTT messages (seen on the wire), and
//! once space returns it resumes by itself: writes succeed, acks flow, nothing that was
//! acknowledged is missing, and the journal opens cleanly afterwards.

use super::stack::{verify, Stack};
use super::Profile;
use crate::disk::{self, Mount};
use crate::gateway::{num, Gateway};
use crate::report::Outcome;
use crate::rig::{until, Ctx};
use std::time::{Duration, Instant};

/// Ingest rate, messages/s.
const RATE: u64 = 500;

/// Run the scenario.
pub fn run(ctx: &Ctx, p: &Profile, out: &mut Outcome) -> anyhow::Result<()> {
    let stack = Stack::start(ctx, "full", false)?;
    let fs = Mount::tmpfs(ctx, &ctx.path("mnt"), "24m")?;
    let id = "chaos-full";
    let journal = fs.at.join("journal");
    let mut gw = Gateway::create(ctx, "gateway", &stack.spec(id, &journal))?;
    stack.start_subscribed(ctx, &mut gw)?;
    let load = stack.load(RATE)?;
    gw.status_until(Duration::from_secs(30), "frames to become durable", |s| {
        num(s, "journal/durable_seq") > 500
    })?;

    let filler = disk::fill(&fs.at)?;
    let filled = Instant::now();
    let s = gw.status_until(Duration::from_secs(60), "journal.write_failing", |s| {
        s["journal"]["write_failing"] == true
    })?;
    out.secs("detected", filled.elapsed().as_secs_f64());
    let log = gw.log_text();
    out.check(
        log.contains("journal write failed") && log.contains(&journal.display().to_string()),
        || "the log does not report the failing journal writes with the path".into(),
    );
    // Acks already owed for durable frames may still go out; then none.
    std::thread::sleep(Duration::from_secs(1));
    let (acks_before, durable_before) = (stack.acks.count(), num(&s, "journal/durable_seq"));
    let held = Instant::now();
    let (mut down_polls, mut durable_moved) = (0u64, false);
    while held.elapsed() < p.disk_full {
        match gw.status() {
            Ok(s) => {
                durable_moved |= num(&s, "journal/durable_seq") > durable_before;
                if s["journal"]["write_failing"] != true {
                    down_polls += 1;
                }
            }
            Err(_) => down_polls += 1,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let acks_while_full = stack.acks.count() - acks_before;
    out.secs("held_full", held.elapsed().as_secs_f64());
    out.figure("acks_while_full", acks_while_full);
    out.check(gw.alive(), || "the gateway died on the full disk".into());
    out.check(down_polls == 0, || {
        format!("{down_polls} status polls failed or did not report write_failing while full")
    });
    out.check(acks_while_full == 0, || {
        format!("the gateway acknowledged {acks_while_full} MQTT messages while nothing could be written")
    });
    out.check(!durable_moved, || {
        "durable_seq advanced while the disk was full".into()
    });

    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    let resumed = gw.status_until(Duration::from_secs(30), "writes to succeed again", |s| {
        s["journal"]["write_failing"] == false && num(s, "journal/durable_seq") > durable_before
    });
    match resumed {
        Ok(_) => {
            until(Duration::from_secs(60), "MQTT acks to flow again", || {
                Ok((stack.acks.count() > acks_before + acks_while_full).then_some(()))
            })?;
            out.secs("resumed", freed.elapsed().as_secs_f64());
        }
        Err(e) => {
            out.figure("resumed", "never");
            out.fail(format!(
                "the journal did not resume by itself once space returned: {e:#}"
            ));
            // The way out left to an operator: restart the service. What the broker holds
            // for the gateway's session must still arrive, nothing acknowledged lost.
            let exit = gw.stop(ctx)?;
            out.figure("exit_while_failed", exit.code().unwrap_or(-1));
            stack.start_subscribed(ctx, &mut gw)?;
            out.secs("resumed_after_restart", freed.elapsed().as_secs_f64());
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let published = load.stop();
    stack.drain(&gw, &published, Duration::from_secs(120))?;
    let exit = gw.stop(ctx)?;
    out.check(exit.success(), || {
        format!("the gateway did not stop cleanly: {exit}")
    });
    verify(&stack, id, &journal, &published, false, out)?;
    // And it starts again on that journal, nothing quarantined.
    gw.start(ctx)?;
    let s = gw.status()?;
    out.check(s["journal"]["quarantine"].is_null(), || {
        format!(
            "the journal was quarantined at the next start: {}",
            s["journal"]["quarantine"]
        )
    });
    gw.stop(ctx)?;
    out.figure("free_after", disk::free_bytes(&fs.at));
    Ok(())
}
