//! Which process holds a serial port, a journal's lock or a listening socket, from `/proc`.
//!
//! `doctor` must not disturb a running service, so before it opens anything it asks who
//! else has it: "in use by fieldgate (pid 812)" is fine, "in use by ModemManager" is the
//! installer's problem to fix. Without root, other users' descriptors are invisible; the
//! answers are then empty and the callers say so.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// A process, as shown in messages: `fieldgate (pid 812)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub name: String,
}

impl Holder {
    fn of(pid: u32) -> Holder {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| super::printable(s.trim(), 32))
            .unwrap_or_else(|_| "?".into());
        Holder { pid, name }
    }

    /// Whether this is a fieldgate process (the running service, or a demo).
    pub fn is_fieldgate(&self) -> bool {
        self.name == "fieldgate"
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.name, self.pid)
    }
}

/// Every other process with a descriptor for which `matches(fd link target, fd path)`.
fn scan(matches: impl Fn(&Path, &Path) -> bool) -> Vec<Holder> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let hit = fds.flatten().any(|fd| {
            let path = fd.path();
            std::fs::read_link(&path).is_ok_and(|target| matches(&target, &path))
        });
        if hit {
            out.push(Holder::of(pid));
        }
    }
    out
}

/// Processes that have the device or file at `path` open (a link is followed).
pub fn holders_of(path: &Path) -> Vec<Holder> {
    let Ok(want) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let device = want.file_type().is_char_device();
    scan(|_, fd| {
        std::fs::metadata(fd).is_ok_and(|m| {
            if device {
                m.file_type().is_char_device() && m.rdev() == want.rdev()
            } else {
                m.dev() == want.dev() && m.ino() == want.ino()
            }
        })
    })
}

/// Processes holding a TCP socket listening on `port` (any address, IPv4 or IPv6).
pub fn listeners(port: u16) -> Vec<Holder> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    scan(|target, _| {
        target
            .to_str()
            .is_some_and(|t| inodes.iter().any(|i| i == t))
    })
}

/// The process holding a `flock` on the file at `path`, from `/proc/locks`. That names
/// the process that took the lock; when it is gone (the lock passed to a process that
/// inherited the descriptor), a process that has the file open.
pub fn lock_holder(path: &Path) -> Option<Holder> {
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let pid: u32 = text.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 812 08:01:393219 0 EOF"
        let (pid, id) = (cols.get(4)?, cols.get(5)?);
        (*id == want).then(|| pid.parse().ok())?
    })?;
    if Path::new(&format!("/proc/{pid}")).exists() {
        return Some(Holder::of(pid));
    }
    holders_of(path).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_of_a_file_its_lock_and_a_listener() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        std::fs::write(&path, "x").expect("write");
        // A child process holds the file open and locked, and listens on a port.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let script = format!(
            "exec 3<{p}; flock -x 3; exec python3 -c 'import socket,time; s=socket.socket(); \
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\",{port})); \
             s.listen(); time.sleep(30)'",
            p = path.display()
        );
        let mut child = std::process::Command::new("bash")
            .args(["-c", &script])
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let t0 = std::time::Instant::now();
        while listeners(port).is_empty() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let l = listeners(port);
        let held = holders_of(&path);
        let locked = lock_holder(&path);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(l.iter().map(|h| h.pid).collect::<Vec<_>>(), [pid], "{l:?}");
        assert_eq!(l[0].name, "python3");
        assert!(!l[0].is_fieldgate());
        assert_eq!(
            held.iter().map(|h| h.pid).collect::<Vec<_>>(),
            [pid],
            "{held:?}"
        );
        assert_eq!(locked.map(|h| h.pid), Some(pid));
        assert!(listeners(port).is_empty(), "gone with the process");
        assert!(holders_of(&path).is_empty());
        assert_eq!(lock_holder(&path), None);
        // Our own descriptors are never "another holder".
        let _f = std::fs::File::open(&path).expect("open");
        assert!(holders_of(&path).is_empty());
    }
}
