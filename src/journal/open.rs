//! Opening the sled database, and quarantining one that cannot be opened.
//!
//! A gateway must never crash-loop on a bad disk image: a journal that fails to open is
//! moved aside to `<dir>.corrupt-<unix time>` and a fresh one started. A journal held by
//! another live process is a different matter and is reported, never moved.

use super::{JournalConfig, JournalError};
use serde::Serialize;
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

fn try_open(cfg: &JournalConfig) -> Result<sled::Db, String> {
    let conf = sled::Config::new()
        .path(&cfg.path)
        .cache_capacity(cfg.cache_bytes.0)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput);
    match catch_unwind(AssertUnwindSafe(|| conf.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "sled panicked while opening".into())),
    }
}

/// Whether another process holds the journal's lock file.
fn is_locked(path: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(path.join("db")) else {
        return false;
    };
    // SAFETY-free: flock on a file we just opened; released when `file` drops.
    use std::os::fd::AsRawFd;
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc != 0
}

/// Open the journal at `cfg.path`, quarantining it if it is unreadable.
pub(super) fn open_or_quarantine(
    cfg: &JournalConfig,
) -> Result<(sled::Db, Option<Quarantine>), JournalError> {
    std::fs::create_dir_all(&cfg.path)?;
    let error = match try_open(cfg) {
        Ok(db) => return Ok((db, None)),
        Err(e) => e,
    };
    if is_locked(&cfg.path) {
        return Err(JournalError::Locked(cfg.path.clone()));
    }
    let at_ms = crate::frame::now_ms();
    let mut moved_to = cfg.path.as_os_str().to_owned();
    moved_to.push(format!(".corrupt-{}", at_ms / 1000));
    let moved_to = PathBuf::from(moved_to);
    std::fs::rename(&cfg.path, &moved_to)?;
    tracing::error!(
        path = %cfg.path.display(),
        moved_to = %moved_to.display(),
        error = %error,
        "journal could not be opened; quarantined it and started a fresh one"
    );
    std::fs::create_dir_all(&cfg.path)?;
    let db = try_open(cfg).map_err(|e| {
        JournalError::Io(std::io::Error::other(format!(
            "fresh journal failed to open: {e}"
        )))
    })?;
    Ok((
        db,
        Some(Quarantine {
            moved_to,
            error,
            at_ms,
        }),
    ))
}
