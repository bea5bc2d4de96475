//! The seq floor: a small file beside the journal directory that outlives it.
//!
//! Seqs must never repeat for a gateway id (docs/architecture.md, "Invariants"), yet the
//! journal directory can go: a corrupt one is quarantined, an operator may `rm -rf` it. The
//! floor file (`<journal>.seq`, e.g. `/var/lib/fieldgate/journal.seq`) holds a seq at or
//! above every seq the journal has made durable; it is raised before the lease that covers
//! a new seq is used, and written atomically (temp file, fsync, rename, fsync of the
//! directory), so a fresh journal continues above it. Its content is the seq in decimal and
//! a newline.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The path of a file kept beside the journal directory: `<journal><suffix>`, in the
/// journal's parent directory (so it survives the directory being moved or deleted).
pub(super) fn beside(journal: &Path, suffix: &str) -> io::Result<PathBuf> {
    let dir = match journal.file_name() {
        Some(_) => journal.to_path_buf(),
        // `.`, `..` or `/`: name it by where it really is.
        None => fs::canonicalize(journal)?,
    };
    let name = dir.file_name().unwrap_or(dir.as_os_str());
    let mut file = name.to_os_string();
    file.push(suffix);
    Ok(dir.with_file_name(file))
}

/// The floor file and the value last written to it.
pub(super) struct SeqFloor {
    path: PathBuf,
    value: u64,
    /// The last write failed (logged once per streak).
    failing: bool,
}

impl SeqFloor {
    /// Read the floor beside `journal` (0 when there is none yet). An unreadable content is
    /// logged and ignored: the journal's own lease and the Mongo sink's check still hold.
    pub(super) fn read(journal: &Path) -> io::Result<SeqFloor> {
        let path = beside(journal, ".seq")?;
        let value = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                tracing::error!(
                    path = %path.display(),
                    content = %text.chars().take(40).collect::<String>().escape_debug(),
                    "seq floor file unreadable; ignoring it"
                );
                0
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(SeqFloor {
            path,
            value,
            failing: false,
        })
    }

    /// The file's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The floor as last read or written.
    pub(super) fn value(&self) -> u64 {
        self.value
    }

    /// Raise the floor to `seq` durably; nothing is written if it is there already.
    pub(super) fn raise(&mut self, seq: u64) -> io::Result<()> {
        if seq > self.value {
            self.set(seq)?;
        }
        Ok(())
    }

    /// [`SeqFloor::raise`] (or with `exact`, [`SeqFloor::set`]) for a journal that is
    /// running: a failure is logged once per streak, not returned. Frames must keep being
    /// written; the journal's own lease still keeps its seqs apart, and the Mongo sink's
    /// check still catches reuse should the journal be lost before the file is writable.
    pub(super) fn update(&mut self, seq: u64, exact: bool) {
        let r = if exact {
            self.set(seq)
        } else {
            self.raise(seq)
        };
        match r {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    tracing::error!(path = %self.path.display(), error = %e,
                        "cannot update the seq floor file; seqs stay unique within this \
                         journal, but a journal deleted now could reissue some");
                }
                self.failing = true;
            }
        }
    }

    /// Write `seq` durably, lower or higher (a clean close records the exact last seq).
    pub(super) fn set(&mut self, seq: u64) -> io::Result<()> {
        let mut tmp = self.path.as_os_str().to_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = File::create(&tmp)?;
        f.write_all(format!("{seq}\n").as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        // The rename is durable only once the directory entry is.
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        self.value = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_is_a_sibling_whatever_the_spelling() {
        let d = tempfile::tempdir().expect("tempdir");
        let j = d.path().join("journal");
        fs::create_dir_all(&j).expect("mkdir");
        let want = d.path().join("journal.seq");
        assert_eq!(beside(&j, ".seq").expect("plain"), want);
        let slash = PathBuf::from(format!("{}/", j.display()));
        assert_eq!(beside(&slash, ".seq").expect("trailing slash"), want);
        let dot = j.join(".");
        assert_eq!(
            beside(&dot, ".seq").expect("dot"),
            fs::canonicalize(d.path())
                .expect("canon")
                .join("journal.seq")
        );
    }

    #[test]
    fn raise_persists_and_only_goes_up_set_goes_anywhere() {
        let d = tempfile::tempdir().expect("tempdir");
        let j = d.path().join("journal");
        let mut f = SeqFloor::read(&j).expect("read");
        assert_eq!(f.value(), 0);
        f.raise(500).expect("raise");
        f.raise(200).expect("no-op");
        assert_eq!(SeqFloor::read(&j).expect("reread").value(), 500);
        f.set(300).expect("set");
        assert_eq!(SeqFloor::read(&j).expect("reread").value(), 300);
        assert_eq!(
            fs::read_to_string(d.path().join("journal.seq")).expect("file"),
            "300\n"
        );
        assert!(!d.path().join("journal.seq.tmp").exists());
        fs::write(d.path().join("journal.seq"), "garbage").expect("write");
        assert_eq!(SeqFloor::read(&j).expect("garbage is not fatal").value(), 0);
    }
}
