//! The `keys` command: add, list and revoke API keys in a gateway's journal.
//!
//! Keys live in the journal, which belongs to the service user (`fieldgate`) and is locked
//! while the service runs. The journal refuses to open for another user (naming the owner);
//! this command adds the exact command line to run as that user, and never creates a
//! journal it was not pointed at.

use anyhow::bail;
use fieldgate::auth::{KeyInfo, KeyStore, Scope};
use fieldgate::doctor::access;
use fieldgate::frame::iso8601;
use fieldgate::journal::{Journal, JournalConfig, JournalError};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What `keys` was asked to do.
pub enum Action {
    /// Create a key named `name` with `scopes`.
    Add {
        /// Who or what uses the key.
        name: String,
        /// Granted scopes.
        scopes: Vec<Scope>,
    },
    /// List keys.
    List,
    /// Revoke keys by id or name.
    Revoke {
        /// Id or name.
        which: String,
    },
}

/// Run `action` on the journal `jc` names.
pub fn run(jc: JournalConfig, action: Action) -> anyhow::Result<()> {
    let path = jc.path.clone();
    if !matches!(action, Action::Add { .. }) && !path.exists() {
        bail!(
            "no journal at {}: check --config / --data (nothing was created)",
            path.display()
        );
    }
    let journal = Journal::open(jc).map_err(|e| match e {
        JournalError::Locked(_) => anyhow::anyhow!(
            "the running gateway holds the journal {}: stop it first (sudo systemctl stop \
             fieldgate), manage the keys, then start it again; it reads them at every request",
            path.display()
        ),
        JournalError::Refused(why) => match owner(&path).filter(|o| *o != me()) {
            Some(owner) => anyhow::anyhow!(
                "{why}\nThis command, as the journal's owner: sudo -u {owner} {}",
                command_line()
            ),
            None => anyhow::anyhow!(why),
        },
        other => anyhow::Error::new(other).context(format!("cannot open {}", path.display())),
    })?;
    let store = KeyStore::persistent(journal.tree("keys")?);
    match action {
        Action::Add { name, scopes } => {
            let (key, info) = store.add(&name, &scopes)?;
            println!("{key}");
            eprintln!(
                "key {} for {:?} with scopes {}; shown once, store it now",
                info.id,
                info.name,
                scopes_text(&info)
            );
        }
        Action::List => print!("{}", table(&store.list()?)),
        Action::Revoke { which } => {
            let n = store.revoke(&which)?;
            println!("revoked {n} key(s)");
        }
    }
    journal.close()?;
    Ok(())
}

/// The user running this command.
fn me() -> String {
    access::user_name(nix::unistd::geteuid().as_raw())
}

/// The user owning the journal at `path` (or the directory it would be created in).
fn owner(path: &Path) -> Option<String> {
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok())
        .map(|m| access::user_name(m.uid()))
}

fn scopes_text(k: &KeyInfo) -> String {
    let scopes: Vec<String> = k.scopes.iter().map(|s| s.to_string()).collect();
    scopes.join(",")
}

/// `keys list` as an aligned table with a header.
fn table(keys: &[KeyInfo]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "NAME".into(),
        "SCOPES".into(),
        "CREATED (UTC)".into(),
        "LAST USED (UTC)".into(),
    ]];
    for k in keys {
        rows.push([
            k.id.clone(),
            k.name.clone(),
            scopes_text(k),
            iso8601(k.created_ms),
            k.last_used_ms.map_or_else(|| "never".into(), iso8601),
        ]);
    }
    let mut width = [0usize; 5];
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if keys.is_empty() {
        out.push_str("(no keys yet: fieldgate keys add NAME --scopes read)\n");
    }
    out
}

/// This command line, as the user would type it again after `sudo -u OWNER`.
fn command_line() -> String {
    let quote = |a: String| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    std::env::args().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_has_a_header_iso_times_and_last_use() {
        let mut k = KeyInfo {
            name: "tech".into(),
            scopes: [Scope::Read, Scope::Write].into_iter().collect(),
            created_ms: 1_764_538_805_123,
            id: "1a2b3c4d".into(),
            last_used_ms: None,
        };
        let t = table(std::slice::from_ref(&k));
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("ID        NAME  SCOPES      CREATED (UTC)"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("1a2b3c4d  tech  read,write  2025-11-30T21:40:05Z"),
            "{t}"
        );
        assert!(lines[1].ends_with("never"), "{t}");
        k.last_used_ms = Some(1_764_538_900_000);
        assert!(table(&[k]).contains("2025-11-30T21:41:40Z"));
        assert!(table(&[]).contains("no keys yet"));
    }
}
