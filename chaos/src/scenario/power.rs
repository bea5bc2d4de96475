//! A power cut, approximated without a VM or device-mapper: the journal lives on ext4 on a
//! loop device; at the cut the gateway is SIGKILLed and the loop device's backing image is
//! copied at once — what the block device holds at that instant (everything fsynced, plus
//! whatever writeback happened to run), not the page cache, which a kill -9 alone would
//! keep. Writeback is held off for the run (`vm.dirty_expire_centisecs`,
//! `vm.dirty_writeback_centisecs`, ext4 `commit=300`; restored afterwards) so little reaches
//! the device on its own. The copy is then mounted (ext4 replays its journal, as after a
//! real cut) and becomes the next run's disk: every frame reported durable (`durable_seq` in
//! `/api/status`) and every message the gateway acknowledged must be on it, and the next run
//! must never issue a seq that was issued (seen live) before the cut.

use super::stack::{verify, Stack};
use super::Profile;
use crate::check;
use crate::disk::{self, Mount};
use crate::gateway::{num, Gateway};
use crate::report::Outcome;
use crate::rig::{run as sh, Ctx};
use crate::ws;
use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

/// Ingest rate, messages/s.
const RATE: u64 = 500;

/// Run the scenario.
pub fn run(ctx: &Ctx, p: &Profile, out: &mut Outcome) -> anyhow::Result<()> {
    disk::sysctl(ctx, "vm.dirty_expire_centisecs", "360000")?;
    disk::sysctl(ctx, "vm.dirty_writeback_centisecs", "0")?;
    let stack = Stack::start(ctx, "power", false)?;
    let id = "chaos-power";
    let at = ctx.path("mnt");
    let image = |k: u32| ctx.path(&format!("disk-{k}.img"));
    disk::make_ext4(&image(0), 128)?;
    let mut mount = Some(Mount::image(ctx, &image(0), &at, 300)?);
    let journal = at.join("journal");
    let mut gw = Gateway::create(ctx, "gateway", &stack.spec(id, &journal))?;
    // `keys add` closed the journal with an fsync; make the key's file system state durable.
    sh(Command::new("sync").arg("-f").arg(&journal))?;
    stack.start_subscribed(ctx, &mut gw)?;
    let load = stack.load(RATE)?;
    let (mut lost_durable, mut reused, mut unsynced_lost) = (0u64, 0u64, 0u64);
    // Acknowledged messages missing from a disk after a cut (each counted once).
    let mut lost_acked: HashSet<u64> = HashSet::new();
    let (mut issued_before, mut canaries_kept) = (0u64, 0u32);
    for cut in 0..p.power_cuts {
        let seen = ctx.rt.block_on(ws::watch(gw.port, &gw.key))?;
        let life = ctx.random_between(Duration::from_millis(1_000), Duration::from_millis(4_000));
        let t0 = Instant::now();
        let mut durable = 0u64;
        while t0.elapsed() < life {
            if let Ok(s) = gw.status() {
                durable = durable.max(num(&s, "journal/durable_seq"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A canary written without fsync: in the page cache only, so it must not survive.
        std::fs::write(at.join("canary"), vec![0x42u8; 64 << 10])?;
        // The cut: the process dies and the disk keeps only what reached it.
        gw.kill9(ctx);
        let next = image(cut + 1);
        sh(Command::new("cp")
            .arg("--sparse=always")
            .arg(image(cut))
            .arg(&next))?;
        // PUBACKs the gateway wrote just before dying may still be in the proxy's pipe.
        std::thread::sleep(Duration::from_millis(300));
        let acked = stack.acks.acked();
        let live: Vec<u64> = crate::rig::locked(&seen.frames)
            .iter()
            .map(|a| a.seq)
            .collect();
        drop(mount.take());
        std::fs::remove_file(image(cut))?;
        mount = Some(Mount::image(ctx, &next, &at, 300)?);

        let canary = std::fs::read(at.join("canary")).unwrap_or_default();
        if canary.iter().all(|b| *b == 0x42) && !canary.is_empty() {
            canaries_kept += 1;
        }
        let _ = std::fs::remove_file(at.join("canary"));
        let (frames, _) = check::read_journal(&journal, 1)?;
        let stored: HashSet<u64> = frames.iter().map(|f| f.seq).collect();
        let copies = check::copies(&frames);
        let new_low = live.iter().copied().min().unwrap_or(u64::MAX);
        if new_low <= issued_before {
            reused += 1;
            out.fail(format!("cut {cut}: seq {new_low} issued again (up to {issued_before} was issued before the last cut)"));
        }
        let gone_durable = live
            .iter()
            .filter(|s| **s <= durable && !stored.contains(s))
            .count() as u64;
        let (gone_acked, first) = check::missing(acked.iter().copied(), &copies);
        let gone_unsynced = live
            .iter()
            .filter(|s| **s > durable && !stored.contains(s))
            .count() as u64;
        if gone_durable + gone_acked > 0 {
            out.fail(format!(
                "cut {cut}: {gone_durable} frames reported durable and {gone_acked} acknowledged messages (e.g. {first:?}) are not on the disk"
            ));
        }
        lost_durable += gone_durable;
        lost_acked.extend(acked.iter().filter(|n| !copies.contains_key(n)));
        unsynced_lost += gone_unsynced;
        issued_before = issued_before.max(live.iter().copied().max().unwrap_or(0));
        eprintln!(
            "  cut {cut} after {:.1} s: durable_seq {durable}, issued up to {issued_before}, on disk {} frames; {gone_unsynced} frames not yet durable were lost",
            life.as_secs_f64(),
            frames.len()
        );
        gw.start(ctx)?;
    }
    let published = load.stop();
    stack.drain(&gw, &published, Duration::from_secs(120))?;
    let exit = gw.stop(ctx)?;
    out.check(exit.success(), || {
        format!("the gateway did not stop cleanly: {exit}")
    });
    out.figure("cuts", p.power_cuts);
    out.figure("lost_durable", lost_durable);
    out.figure("lost_acked", lost_acked.len());
    out.figure("seq_reused", reused);
    out.figure("not_durable_lost", unsynced_lost);
    out.figure(
        "page_cache_canaries_kept",
        format!("{canaries_kept}/{}", p.power_cuts),
    );
    // The canary proves the copy is the device, not the page cache.
    out.check(canaries_kept == 0, || {
        format!("{canaries_kept} unsynced canary files survived a cut: the copy saw the page cache")
    });
    verify(&stack, id, &journal, &published, false, out)?;
    drop(mount);
    Ok(())
}
