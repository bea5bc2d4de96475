//! Why a journal that is not corrupt cannot be opened, and what to do about it.
//!
//! Running as the wrong user, a full disk or a read-only mount are the system's problem,
//! not the journal's: fieldgate refuses to start (systemd shows the message) and moves
//! nothing. Each message names the path, who owns it, who we are, and the fix.

use super::JournalError;
use nix::unistd::{geteuid, Uid, User};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `name (uid N)`, or `uid N` for a uid without a passwd entry.
fn user(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// The bare user name for commands (`sudo -u NAME`), or the numeric uid.
fn user_arg(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("#{uid}"),
    }
}

/// The uid owning `path`, or its nearest existing ancestor.
fn owner(path: &Path) -> Option<u32> {
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.uid())
}

/// The fix for a journal owned by `owner` used by this process.
fn ownership_fix(path: &Path, owner: u32) -> String {
    let me = geteuid().as_raw();
    let p = path.display();
    format!(
        "Run fieldgate as the journal's owner (e.g. `sudo -u {} fieldgate ...`), or, if \
         this user should own it, hand it over with `chown -R {}: {p} {p}.seq {p}.lock`",
        user_arg(owner),
        user_arg(me),
    )
}

/// The journal directory belongs to another user.
pub(super) fn not_owner(path: &Path, uid: u32) -> JournalError {
    JournalError::Refused(format!(
        "the journal at {} belongs to user {} but fieldgate runs as user {}; files written \
         now would be unusable to the journal's owner. {}. Nothing was changed.",
        path.display(),
        user(uid),
        user(geteuid().as_raw()),
        ownership_fix(path, uid)
    ))
}

/// `e` happened on `path` (the journal or a file beside it) and is not corruption.
pub(super) fn io(path: &Path, e: &io::Error) -> JournalError {
    let p = path.display();
    let nothing = "Nothing was moved or changed.";
    let msg = match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            let owner = owner(path).unwrap_or(0);
            format!(
                "cannot open the journal at {p}: permission denied ({e}). It belongs to user \
                 {} and fieldgate runs as user {}. {}. {nothing}",
                user(owner),
                user(geteuid().as_raw()),
                ownership_fix(path, owner)
            )
        }
        Some(libc::ENOSPC | libc::EDQUOT) => format!(
            "cannot open the journal at {p}: the filesystem is full ({e}; {}). Free space \
             there (old quarantined journals `{p}.corrupt-*` may go), or move \
             journal.path to a larger filesystem; journal.max_bytes caps what the journal \
             itself uses. {nothing}",
            free_space(path)
        ),
        Some(libc::EROFS) => format!(
            "cannot open the journal at {p}: the filesystem is read-only ({e}). Remount it \
             read-write or point journal.path at a writable one. {nothing}"
        ),
        _ => format!(
            "cannot open the journal at {p}: {e}. This is not corruption, so the journal was \
             left in place; fix the cause and start again. {nothing}"
        ),
    };
    JournalError::Refused(msg)
}

/// A storage error met while opening the journal at `path`, as a refusal when it is an
/// I/O error (a full disk, ...); anything else unchanged.
pub(super) fn storage(path: &Path, e: JournalError) -> JournalError {
    match e {
        JournalError::Sled(sled::Error::Io(e)) | JournalError::Io(e) => io(path, &e),
        e => e,
    }
}

/// `N bytes free of M` on the filesystem holding `path`.
#[allow(clippy::useless_conversion)] // the statvfs fields are 32-bit on armv7
fn free_space(path: &Path) -> String {
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return "free space unknown".into();
    };
    match nix::sys::statvfs::statvfs(existing) {
        Ok(s) => {
            let unit = u64::from(s.fragment_size());
            format!(
                "{} bytes free of {}",
                u64::from(s.blocks_available()) * unit,
                u64::from(s.blocks()) * unit
            )
        }
        Err(_) => "free space unknown".into(),
    }
}
