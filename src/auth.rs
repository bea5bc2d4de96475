//! API keys: stored hashed (SHA-256) in the journal's `keys` tree, checked in constant time.
//!
//! A key is shown once, when created (`fg_` + 32 random bytes, hex). Only its hash and its
//! metadata (name, scopes, creation time) are stored; nothing here ever logs a key.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read status, frames, registries; watch live frames.
    Read,
    /// Create, change and delete devices and vehicles.
    Write,
    /// Broadcast messages to every WebSocket client.
    Publish,
    /// Send commands to devices.
    Control,
    /// Everything, including key management.
    Admin,
}

impl Scope {
    /// All scopes, in order.
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Write,
        Scope::Publish,
        Scope::Control,
        Scope::Admin,
    ];
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let s = match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Publish => "publish",
            Scope::Control => "control",
            Scope::Admin => "admin",
        };
        f.write_str(s)
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|sc| sc.to_string() == s.trim())
            .ok_or_else(|| format!("unknown scope {s:?} (read, write, publish, control, admin)"))
    }
}

/// Stored metadata of one key (never the key itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Human name, e.g. the technician or tool using it.
    pub name: String,
    /// Granted scopes.
    pub scopes: BTreeSet<Scope>,
    /// Creation time, unix ms.
    pub created_ms: i64,
    /// First 8 hex chars of the hash: an id for listing and revoking.
    pub id: String,
    /// When the key was last accepted, unix ms (stored at most once a minute per key,
    /// and at a clean shutdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<i64>,
}

impl KeyInfo {
    /// Whether this key grants `scope` (admin grants everything).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// Errors managing keys.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Storage failed.
    #[error("key store: {0}")]
    Store(#[from] sled::Error),
    /// A stored record is unreadable.
    #[error("key store record: {0}")]
    Record(#[from] serde_json::Error),
    /// No key matches the given id or name.
    #[error("no key named or with id {0:?}")]
    NotFound(String),
    /// A stored key already has this name.
    #[error(
        "a key named {name:?} exists already (id {id}); revoke it first or choose another name"
    )]
    Duplicate {
        /// The name asked for.
        name: String,
        /// The existing key's id.
        id: String,
    },
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random key: `fg_` + 64 hex chars.
pub fn generate_key() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    format!("fg_{}", hex(&raw))
}

/// Keys held in memory only: (SHA-256 of the key, its info).
type EphemeralKeys = Arc<RwLock<Vec<([u8; 32], KeyInfo)>>>;

/// Least time between two writes of one key's `last_used_ms`.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// Per stored key (by hash): when it was last accepted and when that was last written.
type LastUsed = Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], (i64, i64)>>>;

/// The key store: persistent keys in sled plus ephemeral ones (e.g. demo's printed key).
#[derive(Clone)]
pub struct KeyStore {
    tree: Option<sled::Tree>,
    ephemeral: EphemeralKeys,
    last_used: LastUsed,
}

impl KeyStore {
    /// A store over the journal's `keys` tree.
    pub fn persistent(tree: sled::Tree) -> Self {
        KeyStore {
            tree: Some(tree),
            ephemeral: Arc::default(),
            last_used: Arc::default(),
        }
    }

    /// Add a key that lives only in memory for this run.
    pub fn add_ephemeral(&self, key: &str, name: &str, scopes: &[Scope]) {
        let h = hash(key);
        let info = KeyInfo {
            name: name.into(),
            scopes: scopes.iter().copied().collect(),
            created_ms: crate::frame::now_ms(),
            id: hex(&h[..4]),
            last_used_ms: None,
        };
        crate::sync::write(&self.ephemeral).push((h, info));
    }

    /// Create and store a key; returns the key (shown once) and its info. A name already
    /// in use is refused: `revoke NAME` must never take more than the key meant.
    pub fn add(&self, name: &str, scopes: &[Scope]) -> Result<(String, KeyInfo), AuthError> {
        if let Some(existing) = self.list()?.into_iter().find(|k| k.name == name) {
            return Err(AuthError::Duplicate {
                name: name.into(),
                id: existing.id,
            });
        }
        let key = generate_key();
        let h = hash(&key);
        let info = KeyInfo {
            name: name.into(),
            scopes: scopes.iter().copied().collect(),
            created_ms: crate::frame::now_ms(),
            id: hex(&h[..4]),
            last_used_ms: None,
        };
        if let Some(tree) = &self.tree {
            tree.insert(h, serde_json::to_vec(&info)?)?;
            tree.flush()?;
        }
        Ok((key, info))
    }

    /// Every stored key's info.
    pub fn list(&self) -> Result<Vec<KeyInfo>, AuthError> {
        let mut out = Vec::new();
        if let Some(tree) = &self.tree {
            for item in tree.iter() {
                let (_, v) = item?;
                out.push(serde_json::from_slice(&v)?);
            }
        }
        Ok(out)
    }

    /// Remove stored keys whose id or name is `which`; returns how many.
    pub fn revoke(&self, which: &str) -> Result<usize, AuthError> {
        let Some(tree) = &self.tree else {
            return Err(AuthError::NotFound(which.into()));
        };
        let mut n = 0;
        for item in tree.iter() {
            let (k, v) = item?;
            let info: KeyInfo = serde_json::from_slice(&v)?;
            if info.id == which || info.name == which {
                tree.remove(k)?;
                n += 1;
            }
        }
        tree.flush()?;
        if n == 0 {
            return Err(AuthError::NotFound(which.into()));
        }
        Ok(n)
    }

    /// Look a presented key up; `None` if unknown. Comparison is constant-time.
    pub fn verify(&self, key: &str) -> Option<KeyInfo> {
        let h = hash(key);
        let eph = crate::sync::read(&self.ephemeral);
        let mut found = None;
        for (stored, info) in eph.iter() {
            if bool::from(stored.ct_eq(&h)) {
                found = Some(info.clone());
            }
        }
        drop(eph);
        if found.is_some() {
            return found;
        }
        // sled's lookup is by the hash itself, so the key never meets a variable-time compare.
        let v = self.tree.as_ref()?.get(h).ok()??;
        let info = serde_json::from_slice(&v).ok()?;
        self.used(h);
        Some(info)
    }

    /// Notes that the stored key `h` was accepted now; writes it at most once a minute.
    fn used(&self, h: [u8; 32]) {
        let now = crate::frame::now_ms();
        let due = {
            let mut map = crate::sync::lock(&self.last_used);
            let entry = map.entry(h).or_insert((now, i64::MIN));
            entry.0 = now;
            let due = now.saturating_sub(entry.1) >= LAST_USED_EVERY_MS;
            if due {
                entry.1 = now;
            }
            due
        };
        if due {
            self.store_last_used(&h, now);
        }
    }

    /// Writes every last-use time not yet stored (at a clean shutdown).
    pub fn persist_last_used(&self) {
        let pending: Vec<([u8; 32], i64)> = crate::sync::lock(&self.last_used)
            .iter_mut()
            .filter(|(_, (used, stored))| used > stored)
            .map(|(h, (used, stored))| {
                *stored = *used;
                (*h, *used)
            })
            .collect();
        for (h, used) in pending {
            self.store_last_used(&h, used);
        }
    }

    /// Sets a stored key's `last_used_ms` (a revoked key stays gone). The journal's next
    /// group commit makes it durable.
    fn store_last_used(&self, h: &[u8; 32], at_ms: i64) {
        let Some(tree) = &self.tree else {
            return;
        };
        let r = tree.update_and_fetch(h, |old| {
            let mut info: KeyInfo = serde_json::from_slice(old?).ok()?;
            info.last_used_ms = Some(at_ms);
            serde_json::to_vec(&info).ok()
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot record a key's last use");
        }
    }
}

/// Failed attempts from one address within [`THROTTLE_WINDOW`] before it is refused.
pub const THROTTLE_LIMIT: u32 = 10;
/// The window over which failures are counted.
pub const THROTTLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Per-address throttling of repeated authentication failures.
#[derive(Clone, Default)]
pub struct Throttle(Arc<std::sync::Mutex<Failures>>);

/// Failure count and window start per address.
type Failures = std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>;

impl Throttle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        crate::sync::lock(&self.0)
    }

    /// Whether `ip` is currently refused; returns the seconds until it may retry.
    pub fn blocked(&self, ip: std::net::IpAddr) -> Option<u64> {
        let map = self.lock();
        let (n, since) = map.get(&ip)?;
        let left = THROTTLE_WINDOW.checked_sub(since.elapsed())?;
        (*n >= THROTTLE_LIMIT).then(|| left.as_secs() + 1)
    }

    /// Record a failure from `ip`; returns the failure count in the current window.
    pub fn fail(&self, ip: std::net::IpAddr) -> u32 {
        let mut map = self.lock();
        if map.len() > 10_000 {
            map.retain(|_, (_, t)| t.elapsed() < THROTTLE_WINDOW);
        }
        let e = map.entry(ip).or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() >= THROTTLE_WINDOW {
            *e = (0, std::time::Instant::now());
        }
        e.0 += 1;
        e.0
    }

    /// Total addresses currently refused.
    pub fn blocked_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|(n, t)| *n >= THROTTLE_LIMIT && t.elapsed() < THROTTLE_WINDOW)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_blocks_after_limit() {
        let t = Throttle::default();
        let ip: std::net::IpAddr = [127, 0, 0, 9].into();
        for _ in 0..THROTTLE_LIMIT - 1 {
            t.fail(ip);
        }
        assert!(t.blocked(ip).is_none());
        t.fail(ip);
        assert!(t.blocked(ip).is_some());
        assert!(t.blocked([127, 0, 0, 8].into()).is_none());
    }

    #[test]
    fn add_verify_revoke() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let store = KeyStore::persistent(db.open_tree("keys").expect("tree"));
        let (key, info) = store.add("tech", &[Scope::Read]).expect("add");
        assert!(key.starts_with("fg_") && key.len() == 67);
        let got = store.verify(&key).expect("valid key");
        assert!(got.allows(Scope::Read) && !got.allows(Scope::Write));
        assert!(store.verify("fg_wrong").is_none());
        assert_eq!(store.list().expect("list").len(), 1);
        assert_eq!(store.revoke(&info.id).expect("revoke"), 1);
        assert!(store.verify(&key).is_none());
        assert!(store.revoke("nobody").is_err());
    }

    #[test]
    fn duplicate_names_are_refused() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let store = KeyStore::persistent(db.open_tree("keys").expect("tree"));
        let (_, first) = store.add("tech", &[Scope::Read]).expect("add");
        match store.add("tech", &[Scope::Admin]) {
            Err(AuthError::Duplicate { name, id }) => {
                assert_eq!((name, id), ("tech".into(), first.id))
            }
            other => panic!("second key named tech: {other:?}"),
        }
        assert_eq!(store.list().expect("list").len(), 1);
        store.add("tech2", &[Scope::Read]).expect("another name");
    }

    #[test]
    fn last_use_is_stored_once_a_minute_and_at_shutdown() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let store = KeyStore::persistent(db.open_tree("keys").expect("tree"));
        let (key, _) = store.add("tech", &[Scope::Read]).expect("add");
        let stored = || store.list().expect("list")[0].last_used_ms;
        assert_eq!(stored(), None);
        let before = crate::frame::now_ms();
        store.verify(&key).expect("valid");
        let first = stored().expect("first use is stored at once");
        assert!(first >= before);
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.verify(&key).expect("valid");
        assert_eq!(stored(), Some(first), "not written again within the minute");
        store.persist_last_used();
        assert!(
            stored().expect("stored") > first,
            "shutdown stores the latest use"
        );
        store.revoke("tech").expect("revoke");
        store.store_last_used(&hash(&key), crate::frame::now_ms());
        assert!(
            store.list().expect("list").is_empty(),
            "a revoked key stays gone"
        );
    }

    #[test]
    fn ephemeral_and_admin() {
        let store = KeyStore {
            tree: None,
            ephemeral: Arc::default(),
            last_used: Arc::default(),
        };
        store.add_ephemeral("demo-key", "demo", &[Scope::Admin]);
        let info = store.verify("demo-key").expect("demo key");
        assert!(Scope::ALL.iter().all(|s| info.allows(*s)));
        assert_eq!("control".parse::<Scope>(), Ok(Scope::Control));
        assert!("root".parse::<Scope>().is_err());
    }
}
