//! Who the service runs as, and what that user may do with a path.
//!
//! `doctor` usually runs as root (or as the installer), but the question is whether the
//! *service* user can use a journal directory or a serial port. Root passes every
//! permission check, so asking the kernel (`access(2)`) would answer the wrong question:
//! the answer is worked out from the owner, group and mode bits of the path and of every
//! directory above it, against the account's uid and groups. The service's account comes
//! from the systemd unit shipped in this repository (`User=`, `SupplementaryGroups=`,
//! `StateDirectory=`), so the unit stays the one place that decides it. ACLs are not read.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The systemd unit the package installs.
const UNIT: &str = include_str!("../../systemd/fieldgate.service");

/// The values of `key=` lines in the unit's `[Service]` section (space-separated lists
/// split), in order.
fn unit_values(key: &str) -> Vec<String> {
    UNIT.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// The user the unit runs the service as (`User=`).
pub fn service_user() -> String {
    unit_values("User")
        .into_iter()
        .next()
        .unwrap_or_else(|| "fieldgate".into())
}

/// Directories systemd creates for the service, owned by it (`StateDirectory=` under
/// `/var/lib`).
pub fn state_directories() -> Vec<PathBuf> {
    unit_values("StateDirectory")
        .iter()
        .map(|d| Path::new("/var/lib").join(d))
        .collect()
}

/// Whether the unit keeps every capability from the service (`CapabilityBoundingSet=`
/// empty), e.g. binding ports below 1024.
pub fn service_has_no_capabilities() -> bool {
    UNIT.lines().any(|l| l.trim() == "CapabilityBoundingSet=")
}

/// An account and the groups it acts with.
#[derive(Debug, Clone)]
pub struct Account {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary and supplementary group ids.
    pub gids: Vec<u32>,
    /// Group names, for messages.
    pub group_names: Vec<String>,
    /// The primary group's name.
    pub group: String,
}

/// The account could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("no user {0:?} on this system")]
pub struct NoSuchUser(pub String);

impl Account {
    /// The account `name` with its groups from the system's user and group databases,
    /// plus `extra_groups` (the unit's `SupplementaryGroups=`) when they exist.
    pub fn by_name(name: &str, extra_groups: &[String]) -> Result<Account, NoSuchUser> {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| NoSuchUser(name.into()))?;
        let mut gids: Vec<u32> = std::ffi::CString::new(name)
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, user.gid).ok())
            .unwrap_or_else(|| vec![user.gid])
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        for g in extra_groups {
            if let Ok(Some(group)) = nix::unistd::Group::from_name(g) {
                gids.push(group.gid.as_raw());
            }
        }
        gids.sort_unstable();
        gids.dedup();
        let group_names = gids.iter().map(|g| group_name(*g)).collect();
        Ok(Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gids,
            group_names,
            group: group_name(user.gid.as_raw()),
        })
    }

    /// The service's account: the unit's `User=` with its `SupplementaryGroups=`.
    pub fn service() -> Result<Account, NoSuchUser> {
        Account::by_name(&service_user(), &unit_values("SupplementaryGroups"))
    }

    /// The account running this process.
    pub fn current() -> Result<Account, NoSuchUser> {
        let uid = nix::unistd::geteuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        Account::by_name(&name, &[])
    }

    /// Whether this is root (which passes every permission check).
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// A user's name, or its number when it has none.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// A group's name, or its number when it has none.
pub fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

/// The path itself if it exists, else its nearest existing ancestor (`/` at worst).
pub fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return PathBuf::from("/"),
        }
    }
}

/// What an account wants to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Read a file.
    Read,
    /// Read and write a file (a serial port, a journal file).
    ReadWrite,
    /// List, create and delete entries in a directory.
    WriteDir,
}

/// `owner:group mode` of a path, for messages, e.g. `root:dialout 0660`.
pub fn describe(meta: &std::fs::Metadata) -> String {
    format!(
        "{}:{} {:04o}",
        user_name(meta.uid()),
        group_name(meta.gid()),
        meta.mode() & 0o7777
    )
}

/// Why an account may not use a path: the path at fault and its `owner:group mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The path whose permissions refuse (the target or a directory above it).
    pub path: PathBuf,
    /// Its `owner:group mode`.
    pub perms: String,
    /// What is missing, e.g. `write` or `search (x)`.
    pub missing: &'static str,
    /// What was asked, e.g. `read and write`.
    pub want: &'static str,
}

impl Denied {
    /// "`USER` cannot `WHAT` `target`: `PATH` is `PERMS` (needs `WHAT`)".
    pub fn explain(&self, acct: &Account, target: &Path) -> String {
        format!(
            "{} cannot {} {}: {} is {} (needs {})",
            acct.name,
            self.want,
            target.display(),
            self.path.display(),
            self.perms,
            self.missing
        )
    }
}

/// The fix for a file `acct` must read: give it the account's group, mode 0640.
pub fn group_read_fix(acct: &Account, path: &Path) -> String {
    format!(
        "sudo chgrp {} {p} && sudo chmod 0640 {p}",
        acct.group,
        p = path.display()
    )
}

/// The permission bits (rwx, 3 bits) that apply to `acct` on `meta`.
fn bits_for(acct: &Account, meta: &std::fs::Metadata) -> u32 {
    let mode = meta.mode();
    if meta.uid() == acct.uid {
        (mode >> 6) & 7
    } else if acct.gids.contains(&meta.gid()) {
        (mode >> 3) & 7
    } else {
        mode & 7
    }
}

/// Whether `acct` can `want` the path (following symlinks), judged from the mode bits of
/// the path and every directory above it.
pub fn check(acct: &Account, path: &Path, want: Want) -> Result<(), Denied> {
    if acct.is_root() {
        return Ok(());
    }
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let (need, verb) = match want {
        Want::Read => (4, "read"),
        Want::ReadWrite => (6, "read and write"),
        Want::WriteDir => (7, "write in"),
    };
    let denied = |p: &Path, meta: &std::fs::Metadata, missing| Denied {
        path: p.to_path_buf(),
        perms: describe(meta),
        missing,
        want: verb,
    };
    // The directories above the link (if it is one) and above what it points at.
    for dir in path.ancestors().skip(1).chain(target.ancestors().skip(1)) {
        if let Ok(meta) = std::fs::metadata(dir) {
            if bits_for(acct, &meta) & 1 == 0 {
                return Err(denied(dir, &meta, "search (x)"));
            }
        }
    }
    let Ok(meta) = std::fs::metadata(&target) else {
        return Ok(());
    };
    if bits_for(acct, &meta) & need != need {
        return Err(denied(&target, &meta, verb));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_unit_names_the_service_account() {
        assert_eq!(service_user(), "fieldgate");
        assert_eq!(unit_values("SupplementaryGroups"), ["dialout"]);
        assert_eq!(state_directories(), [PathBuf::from("/var/lib/fieldgate")]);
        assert!(service_has_no_capabilities());
    }

    #[test]
    fn mode_bits_decide_for_a_non_root_account() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        let meta = std::fs::metadata(&file).expect("meta");
        let other = Account {
            name: "other".into(),
            uid: meta.uid() + 4242,
            gids: vec![meta.gid() + 4242],
            group_names: vec![],
            group: "other".into(),
        };
        let set = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        set(&file, 0o644);
        assert_eq!(check(&other, &file, Want::Read), Ok(()));
        let e = check(&other, &file, Want::ReadWrite).expect_err("not writable by others");
        assert_eq!(
            (e.path.clone(), e.missing),
            (file.clone(), "read and write")
        );
        assert_eq!(
            e.explain(&other, &file),
            format!(
                "other cannot read and write {p}: {p} is {} (needs read and write)",
                e.perms,
                p = file.display()
            )
        );
        let in_group = Account {
            gids: vec![meta.gid()],
            ..other.clone()
        };
        set(&file, 0o660);
        assert_eq!(check(&in_group, &file, Want::ReadWrite), Ok(()));
        set(dir.path(), 0o700);
        let e = check(&in_group, &file, Want::Read).expect_err("directory closed");
        assert_eq!(e.missing, "search (x)");
        let root = Account { uid: 0, ..other };
        assert_eq!(check(&root, &file, Want::ReadWrite), Ok(()));
    }

    #[test]
    fn nearest_existing_walks_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(nearest_existing(&dir.path().join("a/b/c")), dir.path());
    }
}
