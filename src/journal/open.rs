//! Opening the sled database, and quarantining one that is corrupt.
//!
//! A gateway must never crash-loop on a bad disk image: a journal that is corrupt (sled
//! reports corruption, panics while opening, or finds its own metadata undecodable) is
//! moved aside to `<dir>.corrupt-<unix time>` and a fresh one started. Anything else is not
//! the journal's fault and moves nothing: a journal held by another process is reported,
//! and permission problems, a full disk and other I/O errors refuse to start with a message
//! that names the path, the owner and the fix (see `refuse`).
//!
//! The whole open runs under `<journal>.lock`, a lock file beside the directory: a second
//! process stops there, so it can never mistake a journal that is merely in use for a
//! corrupt one, nor quarantine one that another process has just opened.

use super::floor::beside;
use super::refuse;
use super::{JournalConfig, JournalError};
use serde::Serialize;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// What happened when the journal found at start could not be opened.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantine {
    /// Where the unreadable journal was moved.
    pub moved_to: PathBuf,
    /// Why it could not be opened.
    pub error: String,
    /// When, unix ms.
    pub at_ms: i64,
}

/// An open sled database with what it took to get there.
pub(super) struct Opened {
    pub db: sled::Db,
    pub quarantine: Option<Quarantine>,
    /// Held (flock) for as long as the journal is open.
    pub lock: File,
}

/// Why sled would not open.
enum Failure {
    /// The data is damaged: quarantine.
    Corrupt(String),
    /// Another process holds sled's own lock.
    Locked,
    /// Not the data's fault: refuse, move nothing.
    Io(io::Error),
}

fn try_open(cfg: &JournalConfig) -> Result<sled::Db, Failure> {
    let conf = sled::Config::new()
        .path(&cfg.path)
        .cache_capacity(cfg.cache_bytes.0)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput);
    match catch_unwind(AssertUnwindSafe(|| conf.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(classify(e, &cfg.path)),
        Err(panic) => Err(Failure::Corrupt(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "sled panicked while opening".into()),
        )),
    }
}

/// Sort a sled open error into corruption, a lock held elsewhere, or an I/O problem.
fn classify(e: sled::Error, path: &Path) -> Failure {
    match e {
        sled::Error::Io(io) => {
            // sled 0.34 reports its own lock as `Other("could not acquire lock on ...")`.
            if io.to_string().contains("could not acquire lock") || sled_lock_held(path) {
                Failure::Locked
            } else if matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ) {
                // A truncated or garbled file: the data, not the system.
                Failure::Corrupt(io.to_string())
            } else {
                Failure::Io(io)
            }
        }
        // Corruption, a bug sled found in its own state, or stored metadata this sled
        // cannot read: all about the data on disk.
        other => Failure::Corrupt(other.to_string()),
    }
}

/// Whether another process holds sled's lock on `<path>/db`.
fn sled_lock_held(path: &Path) -> bool {
    let Ok(file) = File::open(path.join("db")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `file` drops.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc != 0
}

/// Take `<journal>.lock`; `Locked` if another process holds it.
fn lock_beside(path: &Path) -> Result<File, JournalError> {
    let lock_path = beside(path, ".lock").map_err(|e| refuse::io(path, path, &e))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| refuse::io(path, &lock_path, &e))?;
    // SAFETY: flock on a descriptor we own; held until `file` drops.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(JournalError::Locked(path.to_path_buf()));
        }
        return Err(refuse::io(path, &lock_path, &e));
    }
    Ok(file)
}

/// Refuse a journal directory that belongs to another user, or one this process would
/// create in another user's directory: whatever it wrote (keys, segments, the seq floor)
/// the journal's owner could not use afterwards. World-writable parents (`/tmp`) are fine.
fn check_owner(path: &Path) -> Result<(), JournalError> {
    let me = nix::unistd::geteuid().as_raw();
    match std::fs::metadata(path) {
        Ok(m) if m.uid() != me => Err(refuse::not_owner(path, None, m.uid())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            match parent.map(std::fs::metadata) {
                Some(Ok(m)) if m.uid() != me && m.mode() & 0o002 == 0 => {
                    Err(refuse::not_owner(path, parent, m.uid()))
                }
                _ => Ok(()),
            }
        }
        Err(e) => Err(refuse::io(path, path, &e)),
    }
}

/// A free `<path>.corrupt-<unix time>[-n]` to move a corrupt journal to.
fn quarantine_path(path: &Path, at_ms: i64) -> io::Result<PathBuf> {
    let base = beside(path, &format!(".corrupt-{}", at_ms / 1000))?;
    let mut to = base.clone();
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = beside(path, &format!(".corrupt-{}-{n}", at_ms / 1000))?;
    }
    Ok(to)
}

/// Open the journal at `cfg.path`, quarantining it if (and only if) it is corrupt.
pub(super) fn open_or_quarantine(cfg: &JournalConfig) -> Result<Opened, JournalError> {
    let path = &cfg.path;
    check_owner(path)?;
    std::fs::create_dir_all(path).map_err(|e| refuse::io(path, path, &e))?;
    let lock = lock_beside(path)?;
    let error = match try_open(cfg) {
        Ok(db) => {
            return Ok(Opened {
                db,
                quarantine: None,
                lock,
            })
        }
        Err(Failure::Locked) => return Err(JournalError::Locked(path.clone())),
        Err(Failure::Io(e)) => return Err(refuse::io(path, path, &e)),
        Err(Failure::Corrupt(e)) => e,
    };
    let at_ms = crate::frame::now_ms();
    let moved_to = quarantine_path(path, at_ms)?;
    std::fs::rename(path, &moved_to)?;
    tracing::error!(
        path = %path.display(),
        moved_to = %moved_to.display(),
        error = %error,
        "journal is corrupt; quarantined it and started a fresh one"
    );
    std::fs::create_dir_all(path)?;
    let db = try_open(cfg).map_err(|f| match f {
        Failure::Io(e) => refuse::io(path, path, &e),
        Failure::Locked => JournalError::Locked(path.clone()),
        Failure::Corrupt(e) => JournalError::Io(io::Error::other(format!(
            "fresh journal failed to open: {e}"
        ))),
    })?;
    Ok(Opened {
        db,
        quarantine: Some(Quarantine {
            moved_to,
            error,
            at_ms,
        }),
        lock,
    })
}
