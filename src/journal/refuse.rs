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

/// The fix for a journal (or, when it does not exist yet, the directory it would be
/// created in) owned by `owner` and used by this process.
fn ownership_fix(path: &Path, parent: Option<&Path>, owner: u32) -> String {
    let me = user_arg(geteuid().as_raw());
    let hand_over = match parent {
        None => {
            let p = path.display();
            format!("chown -R {me}: {p} {p}.seq {p}.lock")
        }
        Some(dir) => format!("chown {me}: {}", dir.display()),
    };
    format!(
        "Run fieldgate as the journal's owner (e.g. `sudo -u {} fieldgate ...`), or, if \
         this user should own it, hand it over with `{hand_over}`",
        user_arg(owner),
    )
}

/// The journal directory (or, when it does not exist yet, `parent`, where it would be
/// created) belongs to another user.
pub(super) fn not_owner(path: &Path, parent: Option<&Path>, uid: u32) -> JournalError {
    let whose = match parent {
        None => format!("the journal at {} belongs to", path.display()),
        Some(p) => format!(
            "the journal at {} would be created in {}, which belongs to",
            path.display(),
            p.display()
        ),
    };
    JournalError::Refused(format!(
        "{whose} user {} but fieldgate runs as user {}; files written now would be \
         unusable to the journal's owner. {}. Nothing was changed.",
        user(uid),
        user(geteuid().as_raw()),
        ownership_fix(path, parent, uid)
    ))
}

/// `e` happened on `file` (the journal at `path` or a file beside it) and is not
/// corruption.
pub(super) fn io(path: &Path, file: &Path, e: &io::Error) -> JournalError {
    let p = path.display();
    let nothing = "Nothing was moved or changed.";
    let code = e.raw_os_error();
    let e = if file == path {
        e.to_string()
    } else {
        format!("{}: {e}", file.display())
    };
    let msg = match code {
        Some(libc::EACCES | libc::EPERM) => {
            let owner = owner(file).unwrap_or(0);
            format!(
                "cannot open the journal at {p}: permission denied ({e}). It belongs to user \
                 {} and fieldgate runs as user {}. {}. {nothing}",
                user(owner),
                user(geteuid().as_raw()),
                ownership_fix(path, None, owner)
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
        JournalError::Sled(sled::Error::Io(e)) | JournalError::Io(e) => io(path, path, &e),
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
