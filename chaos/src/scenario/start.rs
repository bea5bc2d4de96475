//! Bad journals at start. A corrupt one (damaged in two ways: its sled config garbled, its
//! log file's head overwritten) is quarantined, the service comes up, and the new seqs
//! continue above the old ones (the seq floor file beside the journal). A healthy journal
//! owned by another user (root's, with fieldgate run as `nobody` via `setpriv`) is refused:
//! the process exits non-zero naming the path, and not one byte under the journal's parent
//! changes.
//!
//! The API keys live in the journal, so a quarantine takes them along: the fresh journal is
//! watched through `/readyz` (no key) and the files, and a new key is added afterwards.

use super::Profile;
use crate::check;
use crate::gateway::{Gateway, Spec};
use crate::report::Outcome;
use crate::rig::{listing, until, Ctx};
use anyhow::Context;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Run the simulator until `n` more frames are durable and stop cleanly; returns the
/// highest seq issued (the journal, opened after the clean stop, continues right after it).
fn fill(ctx: &Ctx, gw: &mut Gateway, journal: &Path, n: u64) -> anyhow::Result<u64> {
    gw.start(ctx)?;
    let from = gw.durable_seq()?;
    until(Duration::from_secs(60), "frames to become durable", || {
        Ok((gw.durable_seq()? >= from + n).then_some(()))
    })?;
    let exit = gw.stop(ctx)?;
    anyhow::ensure!(exit.success(), "the gateway did not stop cleanly: {exit}");
    let (_, next) = check::read_journal(journal, u64::MAX)?;
    Ok(next - 1)
}

/// The quarantined copies of `journal` beside it (`journal.corrupt-*`).
fn quarantines(journal: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let prefix = format!(
        "{}.corrupt-",
        journal
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let parent = journal.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for e in std::fs::read_dir(parent)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// The damage done to a journal before a start.
type Damage = fn(&Path) -> anyhow::Result<()>;

fn garble_conf(journal: &Path) -> anyhow::Result<()> {
    std::fs::write(journal.join("conf"), b"segment_size: \xff\xfe\x00banana\n")?;
    Ok(())
}

fn overwrite_log_head(journal: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(journal.join("db"))?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&[0xA5; 4096])?;
    f.sync_all()?;
    Ok(())
}

/// Run the scenario.
pub fn run(ctx: &Ctx, _p: &Profile, out: &mut Outcome) -> anyhow::Result<()> {
    let journal = ctx.path("journal");
    let mut spec = Spec::new("chaos-start", &journal);
    spec.sim_ms = Some(5);
    let mut gw = Gateway::create(ctx, "gateway", &spec)?;
    let mut issued = fill(ctx, &mut gw, &journal, 1_000)?;
    let damages: [(&str, Damage); 2] = [("conf", garble_conf), ("log_head", overwrite_log_head)];
    let mut quarantined = 0;
    for (name, damage) in damages {
        damage(&journal)?;
        let before = quarantines(&journal)?;
        gw.start(ctx)?;
        until(Duration::from_secs(30), "new durable frames", || {
            Ok((gw.durable_seq()? > issued + 50).then_some(()))
        })
        .with_context(|| format!("damage {name}: log {}", gw.log.display()))?;
        let exit = gw.stop(ctx)?;
        out.check(exit.success(), || {
            format!("damage {name}: no clean stop: {exit}")
        });
        let moved: Vec<_> = quarantines(&journal)?
            .into_iter()
            .filter(|q| !before.contains(q))
            .collect();
        let logged = gw
            .log_text()
            .contains("quarantined it and started a fresh one");
        if out.check(
            moved.len() == 1 && moved[0].join("db").exists() && logged,
            || format!("damage {name}: the journal was not quarantined (moved: {moved:?}, logged: {logged})"),
        ) {
            quarantined += 1;
        }
        let (frames, _) = check::read_journal(&journal, 1)?;
        let first = frames.iter().map(|f| f.seq).min().unwrap_or(0);
        out.check(first > issued, || {
            format!("damage {name}: the fresh journal started at seq {first}, not above the {issued} issued before")
        });
        out.figure(&format!("{name}_first_seq"), first);
        issued = fill(ctx, &mut gw, &journal, 200)?.max(issued);
    }
    out.figure("quarantined", format!("{quarantined}/2"));
    out.figure("issued_before", issued);
    refused_as_nobody(ctx, out)
}

/// A journal of root's, run as `nobody`: refused, untouched.
fn refused_as_nobody(ctx: &Ctx, out: &mut Outcome) -> anyhow::Result<()> {
    // Everything nobody must reach is world-readable; the journal's parent is world-writable
    // (as /tmp is), so a quarantine would be free to move the journal.
    let base = ctx.path("nobody");
    let parent = base.join("state");
    std::fs::create_dir_all(&parent)?;
    for d in [ctx.dir.as_path(), base.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777))?;
    let journal = parent.join("journal");
    let mut spec = Spec::new("chaos-nobody", &journal);
    spec.sim_ms = Some(5);
    let mut gw = Gateway::create(ctx, "root-gateway", &spec)?;
    fill(ctx, &mut gw, &journal, 200)?;
    let bin = base.join("fieldgate");
    std::fs::copy(&ctx.env.fieldgate, &bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&gw.config, std::fs::Permissions::from_mode(0o644))?;
    let before = listing(&parent)?;
    let mut child = ctx.spawn(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&bin)
            .args(["run", "--config"])
            .arg(&gw.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let status = until(
        Duration::from_secs(30),
        "the refused gateway to exit",
        || Ok(child.try_wait()?),
    );
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    ctx.reaped(child.id());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let j = journal.display().to_string();
    out.figure(
        "nobody_exit",
        status.code().map_or("signal".into(), |c| c.to_string()),
    );
    out.check(!status.success(), || {
        "fieldgate as nobody started on root's journal".into()
    });
    out.check(err.contains(&j) && err.contains("root"), || {
        format!(
            "the refusal does not name the journal and its owner: {}",
            err.trim()
        )
    });
    out.check(listing(&parent)? == before, || {
        "the refused start changed files under the journal's parent".into()
    });
    out.figure("untouched", listing(&parent)? == before);
    Ok(())
}
