//! The journal's directory, its disk and its lock.
//!
//! The service can only run if its user can write the journal directory (and every file
//! in it: a `keys add` run as root leaves root-owned files behind), if the disk can hold
//! `journal.max_bytes`, and if no other process holds the journal's lock.

use super::access::{self, Want};
use super::procfs;
use super::{Check, Ctx};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Room sled needs beyond the frames' own bytes (its segments are not packed full).
const SLED_HEADROOM: f64 = 1.1;
/// Most entries looked at inside the journal directory.
const SCAN_MAX: usize = 10_000;

/// `journal`, `journal disk` and `journal lock`.
pub(super) fn checks(ctx: &Ctx) -> Vec<Check> {
    let path = &ctx.cfg.journal.path;
    vec![directory(ctx, path), disk(ctx, path), lock(ctx, path)]
}

/// A byte count in MiB (one decimal), for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Who owns the directory, and may the service user write it and everything in it?
fn directory(ctx: &Ctx, path: &Path) -> Check {
    const PART: &str = "journal";
    let user = ctx.user();
    let chown = format!("sudo chown -R {user}: {}", path.display());
    if !path.exists() {
        if access::state_directories()
            .iter()
            .any(|d| path.starts_with(d))
            && ctx
                .acct
                .as_ref()
                .is_ok_and(|a| a.name == access::service_user())
        {
            return Check::ok(
                PART,
                format!(
                    "{} does not exist yet; systemd creates its state directory for {user} \
                     at the first start",
                    path.display()
                ),
            );
        }
        let parent = access::nearest_existing(path);
        return match &ctx.acct {
            Ok(acct) => match access::check(acct, &parent, Want::WriteDir) {
                Ok(()) => Check::ok(
                    PART,
                    format!(
                        "{} does not exist yet; {user} may create it in {}",
                        path.display(),
                        parent.display()
                    ),
                ),
                Err(d) => Check::fail(
                    PART,
                    format!(
                        "{} does not exist and {user} cannot create it: {} is {} (needs {})",
                        path.display(),
                        d.path.display(),
                        d.perms,
                        d.missing
                    ),
                    format!(
                        "sudo install -d -o {user} -g {} -m 0700 {}",
                        acct.group,
                        path.display()
                    ),
                ),
            },
            Err(_) => Check::warn(
                PART,
                format!("{} does not exist yet", path.display()),
                "create the service user first",
            ),
        };
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            return Check::fail(
                PART,
                format!("{} is not a directory", path.display()),
                "point journal.path at a directory (the gateway creates it)",
            )
        }
        Err(e) => {
            return Check::warn(
                PART,
                format!("cannot look at {}: {e}", path.display()),
                "run doctor with sudo",
            )
        }
    };
    let owner = access::user_name(meta.uid());
    let Ok(acct) = &ctx.acct else {
        return Check::warn(
            PART,
            format!("{} is owned by {owner}", path.display()),
            "create the service user first",
        );
    };
    if let Err(d) = access::check(acct, path, Want::WriteDir) {
        return Check::fail(PART, d.explain(acct, path), chown);
    }
    // Files inside that the user cannot write (e.g. created by a command run as root).
    let mut bad = Vec::new();
    let mut seen = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten().take(SCAN_MAX.saturating_sub(seen)) {
            seen += 1;
            let p = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            let want = if is_dir {
                Want::WriteDir
            } else {
                Want::ReadWrite
            };
            if access::check(acct, &p, want).is_err() {
                bad.push(p.clone());
            }
            if is_dir {
                stack.push(p);
            }
        }
    }
    if let Some(first) = bad.first() {
        let m = std::fs::metadata(first).map(|m| access::describe(&m));
        return Check::fail(
            PART,
            format!(
                "{} of the journal's files cannot be written by {user}, e.g. {} ({})",
                bad.len(),
                first.display(),
                m.unwrap_or_default()
            ),
            chown,
        );
    }
    Check::ok(
        PART,
        format!(
            "{} owned by {owner} ({}), writable by {user}",
            path.display(),
            access::describe(&meta)
        ),
    )
}

/// Bytes under `path` (files only, bounded scan).
fn used_bytes(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten().take(SCAN_MAX.saturating_sub(seen)) {
            seen += 1;
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// Can the disk hold `journal.max_bytes` (what is there plus what is free)?
fn disk(ctx: &Ctx, path: &Path) -> Check {
    const PART: &str = "journal disk";
    let max = ctx.cfg.journal.max_bytes.0;
    let dir = access::nearest_existing(path);
    let st = match nix::sys::statvfs::statvfs(&dir) {
        Ok(st) => st,
        Err(e) => {
            return Check::warn(
                PART,
                format!("cannot read the free space of {}: {e}", dir.display()),
                "check `df -h` by hand",
            )
        }
    };
    // What an unprivileged service may still use (root's reserve excluded).
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let used = if path.exists() { used_bytes(path) } else { 0 };
    let need = (max as f64 * SLED_HEADROOM) as u64;
    let room = free + used;
    let detail = format!(
        "{} free on {}, the journal holds {} and may grow to journal.max_bytes = {}",
        mib(free),
        dir.display(),
        mib(used),
        mib(max)
    );
    if room >= need {
        return Check::ok(PART, detail);
    }
    let fit = (room as f64 / SLED_HEADROOM) as u64 >> 20;
    Check::fail(
        PART,
        format!("{detail}: it does not fit"),
        if fit >= 1 {
            format!("set journal.max_bytes to at most \"{fit}MiB\", or free space on that disk")
        } else {
            "free space on that disk, or move journal.path to a bigger one".to_string()
        },
    )
}

/// Is the journal locked, and by whom?
fn lock(ctx: &Ctx, path: &Path) -> Check {
    const PART: &str = "journal lock";
    let db = path.join("db");
    let file = match std::fs::File::open(&db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::ok(PART, "no journal yet, nothing holds it")
        }
        Err(e) => {
            return Check::warn(
                PART,
                format!("cannot open {} to test its lock: {e}", db.display()),
                "run doctor with sudo",
            )
        }
    };
    // A shared lock conflicts only with the exclusive one a running gateway holds; it is
    // released at once, when `file` closes.
    // SAFETY: flock on a descriptor we own, with no pointers involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    drop(file);
    if rc == 0 {
        return Check::ok(PART, "free: no gateway is running on this journal");
    }
    match procfs::lock_holder(&db) {
        Some(h) if h.is_fieldgate() => {
            let serving = ctx.service.holder.as_ref().is_some_and(|s| s.pid == h.pid);
            Check::ok(
                PART,
                if serving {
                    format!("held by the running gateway, {h}")
                } else {
                    format!("held by {h}, a fieldgate that is not the one on the listen address")
                },
            )
        }
        Some(h) => Check::fail(
            PART,
            format!("held by {h}, not a gateway"),
            format!("stop {} (pid {}) before starting fieldgate", h.name, h.pid),
        ),
        None => Check::ok(
            PART,
            "held by another process (run doctor with sudo to see which)",
        ),
    }
}
