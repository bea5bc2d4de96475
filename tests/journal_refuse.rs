//! A journal is quarantined only when it is corrupt (docs/architecture.md, "Invariants").
//! Running as the wrong user, a full disk and a journal in use refuse to start with a
//! message naming the path, the owner and the fix, exit non-zero, and move nothing; a disk
//! that fills while running is reported in `/api/status` and `/metrics`. The binary runs
//! for real: as `nobody` via `setpriv`, on a size-capped tmpfs (both need root, as CI has).

mod common;

use common::{free_port, run_cli, wait_exit, Gateway};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Everything under `dir`: (relative path, mode, uid, size, content of files), sorted.
fn listing(dir: &Path) -> Vec<(PathBuf, u32, u32, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("metadata");
            let content = if m.is_file() {
                std::fs::read(&p).expect("read")
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            let rel = p.strip_prefix(dir).expect("under dir").to_path_buf();
            out.push((rel, m.mode(), m.uid(), m.len(), content));
        }
    }
    out.sort();
    out
}

/// Names only (a refused open may still have let sled touch a file's bytes).
fn names(dir: &Path) -> Vec<PathBuf> {
    listing(dir).into_iter().map(|e| e.0).collect()
}

fn quarantined(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect()
}

/// The journal at `j` opens (as root) and still has the key `name`.
fn assert_key_listed(j: &str, name: &str) {
    let (code, out, err) = run_cli(&["keys", "list", "--data", j]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(name), "key {name} lost: {out}");
}

/// Run the binary as `nobody:nogroup` (from a copy `nobody` can execute).
fn as_nobody(bin_dir: &Path, args: &[&str]) -> (i32, String) {
    let bin = bin_dir.join("fieldgate");
    if !bin.exists() {
        std::fs::copy(common::bin(), &bin).expect("copy binary");
        std::fs::set_permissions(bin_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux) runs the binary as nobody");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_wrong_user_is_refused_and_nothing_moves() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A parent anyone may write to: a quarantine would be free to move the journal.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let journal = dir.path().join("journal");
    let j = journal.to_string_lossy().to_string();
    let (code, _, err) = run_cli(&["keys", "add", "tech", "--data", &j]);
    assert_eq!(code, 0, "keys add as root: {err}");
    let before = listing(dir.path());
    let bins = tempfile::tempdir().expect("tempdir");

    for args in [
        vec!["keys", "add", "intruder", "--data", &j],
        vec!["journal", "stats", "--data", &j],
    ] {
        let (code, err) = as_nobody(bins.path(), &args);
        assert_ne!(code, 0, "{args:?} as nobody must refuse: {err}");
        for want in [
            j.as_str(),
            "belongs to user root (uid 0)",
            "runs as user nobody",
            "sudo -u root fieldgate",
            "chown -R nobody:",
            "Nothing was changed",
        ] {
            assert!(err.contains(want), "{args:?}: {want:?} missing from: {err}");
        }
        assert_eq!(listing(dir.path()), before, "{args:?} touched the journal");
        assert!(quarantined(dir.path()).is_empty());
    }
    assert_key_listed(&j, "tech");
}

/// The service's state directory belongs to its user; root running `keys add` there (before
/// or after the service created its journal) would leave files the service cannot read.
#[test]
fn root_is_refused_in_the_service_users_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let nobody = 65534;
    std::os::unix::fs::chown(&state, Some(nobody), Some(nobody)).expect("chown to nobody");
    let j = state.join("journal").to_string_lossy().to_string();

    // Not created yet: root would create it in nobody's directory.
    let (code, _, err) = run_cli(&["keys", "add", "tech", "--data", &j]);
    assert_ne!(code, 0, "root must not create the service's journal: {err}");
    for want in [
        "would be created in",
        "belongs to user nobody (uid 65534)",
        "sudo -u nobody fieldgate",
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    assert_eq!(
        std::fs::read_dir(&state).expect("ls").count(),
        0,
        "nothing created"
    );

    // The service user creates it; root is refused again, nobody carries on.
    let bins = tempfile::tempdir().expect("tempdir");
    let (code, err) = as_nobody(bins.path(), &["keys", "add", "svc", "--data", &j]);
    assert_eq!(code, 0, "{err}");
    let before = listing(&state);
    let (code, _, err) = run_cli(&["keys", "add", "tech", "--data", &j]);
    assert_ne!(code, 0);
    assert!(err.contains("belongs to user nobody (uid 65534)"), "{err}");
    assert_eq!(listing(&state), before);
    let (code, err) = as_nobody(bins.path(), &["keys", "list", "--data", &j]);
    assert_eq!(code, 0, "{err}");
}

/// A size-capped tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mountpoint");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "THIS TEST NEEDS A SIZE-CAPPED TMPFS: `mount -t tmpfs` failed ({}). Run the \
             tests as root (CI does); not skipping.",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(at.to_path_buf())
    }

    /// Fill it up; returns the filler file.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let out = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", filler.display()))
            .output()
            .expect("dd");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("No space left"),
            "dd filled the tmpfs"
        );
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A config with the journal at `journal`, a simulated vehicle and an API port.
fn config(dir: &Path, journal: &Path, port: u16) -> PathBuf {
    let cfg = dir.join("fieldgate.toml");
    let text = format!(
        "[gateway]\nid = \"gw-full\"\n[journal]\npath = \"{}\"\nflush_ms = 10\n\
         [listen]\naddress = \"127.0.0.1:{port}\"\n\
         [[sources.sim]]\nname = \"sim\"\nvehicle = \"van-1\"\ninterval_ms = 5\n",
        journal.display()
    );
    std::fs::write(&cfg, text).expect("write config");
    cfg
}

#[test]
fn a_full_disk_refuses_to_start_and_moves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = Tmpfs::mount(&dir.path().join("mnt"), "2m");
    let journal = fs.0.join("journal");
    let j = journal.to_string_lossy().to_string();
    let (code, _, err) = run_cli(&["keys", "add", "tech", "--data", &j]);
    assert_eq!(code, 0, "{err}");
    let filler = fs.fill();
    let before = names(&fs.0);
    let cfg = config(dir.path(), &journal, free_port());
    let mut run = Command::new(common::bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_exit(&mut run, Duration::from_secs(20));
    if status.is_none() {
        let _ = run.kill();
    }
    let mut err = String::new();
    if let Some(mut e) = run.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let status = status.unwrap_or_else(|| panic!("run on a full disk kept running: {err}"));
    assert!(!status.success(), "must exit non-zero: {err}");
    for want in [
        j.as_str(),
        "the filesystem is full",
        "Free space there",
        "Nothing was moved",
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    assert_eq!(names(&fs.0), before, "nothing moved or created");
    assert!(quarantined(&fs.0).is_empty());
    // Space back: the same journal opens, key included.
    std::fs::remove_file(filler).expect("rm filler");
    assert_key_listed(&j, "tech");
}

#[test]
fn a_disk_that_fills_while_running_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = Tmpfs::mount(&dir.path().join("mnt"), "8m");
    let journal = fs.0.join("journal");
    let port = free_port();
    let cfg = config(dir.path(), &journal, port);
    let (code, key, err) = run_cli(&[
        "keys",
        "add",
        "t",
        "--scopes",
        "admin",
        "--config",
        &cfg.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{err}");
    let gw = Gateway::run(&cfg, port, key.trim(), dir.path());
    gw.status_until(Duration::from_secs(20), |s| {
        s["journal"]["durable_seq"].as_u64().unwrap_or(0) > 0
    });
    let _filler = fs.fill();
    let st = gw.status_until(Duration::from_secs(30), |s| {
        s["journal"]["write_failing"] == true
    });
    assert!(st["journal"]["last_seq"].as_u64() > st["journal"]["durable_seq"].as_u64());
    let (code, text) = common::http_text(&gw.url("/metrics"), &gw.key);
    assert_eq!(code, 200);
    assert!(
        text.contains("\nfieldgate_journal_write_failing 1\n"),
        "{text}"
    );
    assert!(gw.log().contains(&format!("path={}", journal.display())));
}

#[test]
fn a_journal_in_use_is_reported_not_moved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let j = journal.to_string_lossy().to_string();
    let gw = Gateway::demo(&journal, &["--direct"]);
    let (code, _, err) = run_cli(&["journal", "stats", "--data", &j]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another process"), "{err}");
    assert!(err.contains(&j), "{err}");
    assert!(quarantined(dir.path()).is_empty());
    assert_eq!(gw.get("/api/status").0, 200, "the holder is unharmed");
    assert!(gw.stop().success());

    // The decision is taken under the lock: while another process holds it, even a journal
    // that looks corrupt is left alone (it may be the holder's, mid-repair).
    std::fs::write(journal.join("conf"), b"\xff\x00not a sled config").expect("corrupt");
    let lock = dir.path().join("journal.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) from util-linux");
    wait_locked(&lock);
    let (code, _, err) = run_cli(&["journal", "stats", "--data", &j]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_ne!(code, 0);
    assert!(err.contains("in use by another process"), "{err}");
    assert!(quarantined(dir.path()).is_empty(), "moved a journal in use");
}

/// Wait (bounded) until another process holds the flock on `path`.
fn wait_locked(path: &Path) {
    use std::os::fd::AsRawFd;
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(f) = std::fs::File::open(path) {
            // SAFETY: flock on a descriptor we own; released when `f` drops.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                return;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "flock(1) never took {path:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
