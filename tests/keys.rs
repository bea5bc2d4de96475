//! `fieldgate keys`: which journal it uses when given no option (never a new one by
//! default), duplicate names refused, the listing (header, ISO 8601 times, scopes, last
//! use), and permission problems that name the owner and the command to run as them.
//!
//! The default-config cases run in a private mount namespace with `/etc` and `/var/lib`
//! overlaid (tests run as root), so the machine's own `/etc/fieldgate` is never seen or
//! touched, and anything written under `/var/lib` shows up in the overlay's upper dir.

mod common;

use common::{chown, free_port, run_cli, run_cli_as_nobody, Gateway};
use std::path::Path;
use std::process::Command;

/// Runs `script` under `sh` in a private mount namespace where `/etc` and `/var/lib` are
/// overlays whose changes land in `dir/etc` and `dir/var-lib`; `$FG` is the binary.
fn in_private_namespace(dir: &Path, script: &str) -> (i32, String, String) {
    let mut mounts = String::new();
    for (lower, name) in [("/etc", "etc"), ("/var/lib", "var-lib")] {
        let (upper, work) = (dir.join(name), dir.join(format!("{name}-work")));
        std::fs::create_dir_all(&upper).expect("upper dir");
        std::fs::create_dir_all(&work).expect("work dir");
        mounts.push_str(&format!(
            "mount -t overlay overlay -o lowerdir={lower},upperdir={},workdir={} {lower} || exit 99\n",
            upper.display(),
            work.display()
        ));
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{mounts}{script}"))
        .env("FG", common::bin())
        .current_dir(dir)
        .output()
        .expect("unshare (util-linux; the tests run as root)");
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(
        code,
        99,
        "overlay mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every path under `dir`.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn without_a_config_no_journal_is_created_and_both_options_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("cwd");
    std::fs::create_dir(&work).expect("cwd");
    for cmd in [
        "keys add tech --scopes read",
        "keys list",
        "keys revoke tech",
    ] {
        let (code, out, err) = in_private_namespace(
            dir.path(),
            &format!(
                "rm -rf /etc/fieldgate\ncd {}\nexec \"$FG\" {cmd}",
                work.display()
            ),
        );
        assert_ne!(code, 0, "{cmd}: {out}");
        assert!(
            err.contains("/etc/fieldgate/fieldgate.toml does not exist")
                && err.contains("--config FILE")
                && err.contains("--data DIR"),
            "{cmd}: {err}"
        );
        assert!(tree(&work).is_empty(), "{cmd} created {:?}", tree(&work));
        assert!(
            tree(&dir.path().join("var-lib")).is_empty(),
            "{cmd} wrote under /var/lib: {:?}",
            tree(&dir.path().join("var-lib"))
        );
    }
}

#[test]
fn the_installed_config_is_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let cfg = format!(
        "[gateway]\nid = \"van-07\"\n[journal]\npath = \"{}\"\n",
        journal.display()
    );
    let (code, out, err) = in_private_namespace(
        dir.path(),
        &format!(
            "rm -rf /etc/fieldgate && mkdir /etc/fieldgate && cat > /etc/fieldgate/fieldgate.toml <<'EOF'\n{cfg}EOF\n\
             \"$FG\" keys add tech --scopes read,write || exit 1\nexec \"$FG\" keys list"
        ),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.lines().next().is_some_and(|l| l.starts_with("fg_")),
        "{out}"
    );
    assert!(out.contains("tech  read,write"), "{out}");
    assert!(
        journal.join("db").exists(),
        "the journal of /etc/fieldgate/fieldgate.toml"
    );
    // A journal named on the command line that does not exist is not created by list.
    let missing = dir.path().join("nowhere");
    let (code, _, err) = run_cli(&["keys", "list", "--data", &missing.to_string_lossy()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no journal at") && err.contains("nothing was created"),
        "{err}"
    );
    assert!(!missing.exists());
}

#[test]
fn duplicate_names_are_refused_and_the_list_shows_times_scopes_and_last_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"van-07\"\n[journal]\npath = \"{}\"\n[listen]\naddress = \"127.0.0.1:{port}\"\n",
            dir.path().join("journal").display()
        ),
    )
    .expect("config");
    let c = cfg.to_string_lossy().to_string();
    let (code, key, err) = run_cli(&["keys", "add", "tech", "--scopes", "read", "--config", &c]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_string();
    let (code, out, err) = run_cli(&["keys", "add", "tech", "--scopes", "admin", "--config", &c]);
    assert_ne!(code, 0, "a second key named tech: {out}");
    assert!(err.contains("a key named \"tech\" exists already"), "{err}");
    assert!(out.is_empty(), "no key printed: {out}");

    let (code, list, _) = run_cli(&["keys", "list", "--config", &c]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "header and one key: {list}");
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("LAST USED"),
        "{list}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[1..3], ["tech", "read"], "{list}");
    let iso = |s: &str| {
        s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.starts_with("20")
    };
    assert!(iso(cols[3]), "created {:?}", cols[3]);
    assert_eq!(cols[4], "never");

    // The gateway records the key's use; the list shows when.
    let gw = Gateway::run(&cfg, port, &key, dir.path());
    assert_eq!(gw.get("/api/user").0, 200);
    assert!(gw.stop().success());
    let (_, list, _) = run_cli(&["keys", "list", "--config", &c]);
    let used = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(4));
    assert!(used.is_some_and(iso), "last used after a request: {list}");
}

#[test]
fn permission_problems_name_the_owner_and_the_command_to_run() {
    assert!(nix::unistd::geteuid().is_root(), "run the tests as root");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let journal = dir.path().join("journal");
    let j = journal.to_string_lossy().to_string();
    let (code, _, err) = run_cli(&["keys", "add", "tech", "--data", &j]);
    assert_eq!(code, 0, "{err}");
    std::fs::set_permissions(
        &journal,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");

    // Another user against root's journal (run as nobody).
    let (code, _, err) = run_cli_as_nobody(&["keys", "list", "--data", &j]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "the journal at {j} belongs to user root (uid 0) but fieldgate runs as user nobody"
        )) && err.contains(&format!(
            "sudo -u root {} keys list --data {j}",
            common::bin()
        )),
        "{err}"
    );

    // Root against a journal the service user owns: refused before root-owned files appear.
    // The service owns its state directory: the journal and the seq floor and lock files
    // beside it.
    chown(dir.path(), "nobody");
    let (code, _, err) = run_cli(&["keys", "add", "ops", "--data", &j]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("the journal at {j} belongs to user nobody"))
            && err.contains(&format!(
                "sudo -u nobody {} keys add ops --data {j}",
                common::bin()
            )),
        "{err}"
    );
    let root_owned: Vec<String> = tree(&journal)
        .into_iter()
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        })
        .collect();
    assert!(root_owned.is_empty(), "root-owned files: {root_owned:?}");

    // As its owner it works.
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(common::bin())
        .args(["keys", "list", "--data", &j])
        .output()
        .expect("setpriv");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tech"));
}
