//! Filesystems for the journal that can fail: a size-capped tmpfs to fill up, and ext4 on a
//! loop device whose backing image can be copied at any instant (what the block device
//! holds, without the page cache: a power cut). Both need root; every mount and loop device
//! is registered with the scenario's undo list, so a scenario put down for time leaves
//! nothing mounted. Kernel writeback settings are set and restored the same way.

use crate::rig::{run, Ctx};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted filesystem; unmounted (and its loop device detached) on drop.
pub struct Mount {
    /// Where it is mounted.
    pub at: PathBuf,
    /// The loop device, for an image.
    pub device: Option<String>,
    undo: u64,
    ctx_undo: Box<dyn Fn(u64) + Send>,
}

impl Mount {
    /// A tmpfs of `size` (e.g. `16m`) at `at`.
    pub fn tmpfs(ctx: &Ctx, at: &Path, size: &str) -> anyhow::Result<Mount> {
        std::fs::create_dir_all(at)?;
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at))
        .map_err(|e| {
            anyhow::anyhow!("{e} (the disk-full scenario needs root for a size-capped tmpfs)")
        })?;
        Ok(Mount::registered(ctx, at, None))
    }

    /// Attach `image` to a free loop device and mount it (ext4) at `at`. `commit` is ext4's
    /// journal commit interval (s): long, so only fsync puts data on the device.
    pub fn image(ctx: &Ctx, image: &Path, at: &Path, commit: u32) -> anyhow::Result<Mount> {
        std::fs::create_dir_all(at)?;
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image))?
        .trim()
        .to_string();
        let mounted = run(Command::new("mount")
            .args(["-t", "ext4", "-o", &format!("commit={commit}")])
            .arg(&device)
            .arg(at));
        if let Err(e) = mounted {
            let _ = run(Command::new("losetup").args(["-d", &device]));
            return Err(e);
        }
        Ok(Mount::registered(ctx, at, Some(device)))
    }

    fn registered(ctx: &Ctx, at: &Path, device: Option<String>) -> Mount {
        let (path, dev) = (at.to_path_buf(), device.clone());
        let undo = ctx.on_exit(move || unmount(&path, dev.as_deref()));
        let guard = ctx.undo_handle();
        Mount {
            at: at.to_path_buf(),
            device,
            undo,
            ctx_undo: Box::new(guard),
        }
    }

    /// Bytes free on it.
    pub fn free_bytes(&self) -> u64 {
        free_bytes(&self.at)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        (self.ctx_undo)(self.undo);
    }
}

/// Unmount `at` and detach `device` (best effort, lazily if busy).
fn unmount(at: &Path, device: Option<&str>) {
    let ok = Command::new("umount")
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(at).status();
    }
    if let Some(d) = device {
        let _ = Command::new("losetup").args(["-d", d]).status();
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs(3) into a zeroed struct, with a NUL-terminated path.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return 0;
        }
        #[allow(clippy::useless_conversion)]
        let free = u64::from(s.f_bavail) * u64::from(s.f_frsize);
        free
    }
}

/// Fill the filesystem holding `dir` with a file of zeros until it is full; returns it.
pub fn fill(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path)?;
    // Big blocks first, then smaller ones for the last partial space.
    for size in [64 << 10, 4 << 10, 512] {
        let block = vec![0u8; size];
        loop {
            match f.write(&block) {
                Ok(n) if n > 0 => continue,
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let _ = f.sync_all();
    Ok(path)
}

/// A new sparse image of `mib` MiB with an empty ext4 on it.
pub fn make_ext4(image: &Path, mib: u64) -> anyhow::Result<()> {
    let f = std::fs::File::create(image)?;
    f.set_len(mib << 20)?;
    drop(f);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(image))?;
    Ok(())
}

/// Set `/proc/sys/<key>` to `value` until the scenario ends (the old value is restored).
pub fn sysctl(ctx: &Ctx, key: &str, value: &str) -> anyhow::Result<()> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let old = std::fs::read_to_string(&path)?;
    std::fs::write(&path, value)?;
    ctx.on_exit(move || {
        let _ = std::fs::write(&path, old.trim());
    });
    Ok(())
}
