//! Command routing: which source delivers a WebSocket `command` to which device.
//!
//! Routes are keyed by (source, device). A device belongs to at most one configured source:
//! at start, before any input is read, every configured source claims its devices
//! ([`CommandRoutes::claim`]). A device name that later shows up on another source (an MQTT
//! topic level is chosen by whoever publishes) can then neither take over the route nor
//! register one of its own. Devices nobody claimed (MQTT devices matched by a source's
//! command allow-list) may be routed by more than one source; a command that does not name
//! its source is then refused as ambiguous instead of guessed.
//!
//! This module sits below both the sources (which register routes) and the relay (which
//! sends commands), so neither imports the other.

use crate::sync::lock;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A command on its way to a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Target device id.
    pub device: String,
    /// What to send (the source decides how it goes on the wire).
    pub payload: Value,
}

/// Why a command was not handed to a source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The device id is not a valid id (nothing routes to it, nothing is journaled under it).
    #[error("device: expected 1-64 characters of A-Z a-z 0-9 . _ -, got {0:?}")]
    BadId(String),
    /// No source routes commands to this device.
    #[error("device {0:?} has no command route")]
    Unknown(String),
    /// The named source does not route commands to this device.
    #[error("source {name:?} has no command route to device {device:?}")]
    NotOnSource {
        /// The source named.
        name: String,
        /// The device.
        device: String,
    },
    /// More than one source routes commands to this device and the command names none.
    #[error("device {device:?} is served by sources {sources:?}; name one with \"source\"")]
    Ambiguous {
        /// The device.
        device: String,
        /// Its sources.
        sources: Vec<String>,
    },
    /// The device's source cannot send it anything (e.g. a simulator, an OBD adapter).
    #[error("device {0:?} takes no commands")]
    NoCommands(String),
    /// The owning source is not connected to the device right now.
    #[error("device {0:?} is not connected")]
    NotConnected(String),
    /// The device's command queue is full.
    #[error("device {0:?} command queue is full")]
    Full(String),
}

/// A source tried to route or claim a device another source owns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {device:?} belongs to source {owner:?}")]
pub struct Owned {
    /// The device.
    pub device: String,
    /// The source that claimed it.
    pub owner: String,
}

/// One source's route to a device.
struct Route {
    source: String,
    /// Where commands go; `None` while a claimed device's source is not connected.
    tx: Option<mpsc::Sender<Command>>,
    /// Claimed by a configured source: exclusive.
    claimed: bool,
    /// Whether its source can deliver commands at all.
    commands: bool,
}

/// Refused if a source other than `source` claimed the device these routes lead to.
fn not_owned_by_another(routes: &[Route], source: &str, device: &str) -> Result<(), Owned> {
    match routes.iter().find(|r| r.claimed && r.source != source) {
        Some(owner) => Err(Owned {
            device: device.into(),
            owner: owner.source.clone(),
        }),
        None => Ok(()),
    }
}

/// The routing table, shared by the sources and the relay.
#[derive(Clone, Default)]
pub struct CommandRoutes(Arc<Mutex<HashMap<String, Vec<Route>>>>);

impl CommandRoutes {
    /// A configured source claims `device`: from now on only `source` may route or journal
    /// it. A second claim by another source is refused (the first keeps it). `commands`
    /// says whether the source can deliver commands at all.
    pub fn claim(&self, source: &str, device: &str, commands: bool) -> Result<(), Owned> {
        let mut table = lock(&self.0);
        let routes = table.entry(device.to_string()).or_default();
        not_owned_by_another(routes, source, device)?;
        routes.retain(|r| r.source == source);
        match routes.first_mut() {
            Some(r) => {
                r.claimed = true;
                r.commands = commands;
            }
            None => routes.push(Route {
                source: source.into(),
                tx: None,
                claimed: true,
                commands,
            }),
        }
        Ok(())
    }

    /// Route `device`'s commands on `source` to `tx` (replacing that source's earlier
    /// route). Refused when another source claimed the device.
    pub fn register(
        &self,
        source: &str,
        device: &str,
        tx: mpsc::Sender<Command>,
    ) -> Result<(), Owned> {
        let mut table = lock(&self.0);
        let routes = table.entry(device.to_string()).or_default();
        not_owned_by_another(routes, source, device)?;
        match routes.iter_mut().find(|r| r.source == source) {
            Some(r) => {
                r.tx = Some(tx);
                r.commands = true;
            }
            None => routes.push(Route {
                source: source.into(),
                tx: Some(tx),
                claimed: false,
                commands: true,
            }),
        }
        Ok(())
    }

    /// Devices claimed by sources other than `source` (a snapshot for per-frame checks:
    /// claims are made before any source starts).
    pub fn claimed_by_others(&self, source: &str) -> HashSet<String> {
        lock(&self.0)
            .iter()
            .filter(|(_, routes)| routes.iter().any(|r| r.claimed && r.source != source))
            .map(|(device, _)| device.clone())
            .collect()
    }

    /// Hand a command to the source that routes `device` (`source` names it when more than
    /// one does); returns that source's name.
    pub fn send(
        &self,
        source: Option<&str>,
        device: &str,
        payload: Value,
    ) -> Result<String, RouteError> {
        if !crate::config::valid_id(device) {
            return Err(RouteError::BadId(device.into()));
        }
        let table = lock(&self.0);
        let routes = table.get(device).map(Vec::as_slice).unwrap_or_default();
        let route =
            match source {
                Some(s) => routes.iter().find(|r| r.source == s).ok_or_else(|| {
                    RouteError::NotOnSource {
                        name: s.into(),
                        device: device.into(),
                    }
                })?,
                None => match routes {
                    [] => return Err(RouteError::Unknown(device.into())),
                    [one] => one,
                    many => {
                        return Err(RouteError::Ambiguous {
                            device: device.into(),
                            sources: many.iter().map(|r| r.source.clone()).collect(),
                        })
                    }
                },
            };
        if !route.commands {
            return Err(RouteError::NoCommands(device.into()));
        }
        let tx = route
            .tx
            .as_ref()
            .ok_or_else(|| RouteError::NotConnected(device.into()))?;
        let cmd = Command {
            device: device.into(),
            payload,
        };
        tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RouteError::Full(device.into()),
            mpsc::error::TrySendError::Closed(_) => RouteError::NotConnected(device.into()),
        })?;
        Ok(route.source.clone())
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (the
/// command allow-lists' patterns, e.g. `valve-*`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_claimed_device_cannot_be_taken_over() {
        let routes = CommandRoutes::default();
        routes.claim("pump-port", "pump0", true).expect("claim");
        routes.claim("sim", "sim-gps", false).expect("claim");
        assert_eq!(
            routes.send(None, "sim-gps", json!(1)),
            Err(RouteError::NoCommands("sim-gps".into()))
        );
        let (serial_tx, mut serial_rx) = mpsc::channel(4);
        let (mqtt_tx, mut mqtt_rx) = mpsc::channel(4);
        // Before the port opens, the device exists but is not connected.
        assert_eq!(
            routes.send(None, "pump0", json!("VALVE OPEN")),
            Err(RouteError::NotConnected("pump0".into()))
        );
        assert_eq!(
            routes.register("broker", "pump0", mqtt_tx.clone()),
            Err(Owned {
                device: "pump0".into(),
                owner: "pump-port".into()
            })
        );
        assert!(routes.claim("broker", "pump0", true).is_err());
        routes
            .register("pump-port", "pump0", serial_tx)
            .expect("owner registers");
        assert_eq!(
            routes.send(None, "pump0", json!("VALVE OPEN")),
            Ok("pump-port".into())
        );
        assert_eq!(serial_rx.try_recv().expect("serial got it").device, "pump0");
        assert!(mqtt_rx.try_recv().is_err());
        assert!(routes.claimed_by_others("broker").contains("pump0"));
        assert!(!routes.claimed_by_others("pump-port").contains("pump0"));
    }

    #[test]
    fn unclaimed_devices_on_two_sources_need_the_source_named() {
        let routes = CommandRoutes::default();
        let (a_tx, mut a_rx) = mpsc::channel(1);
        let (b_tx, _b_rx) = mpsc::channel(1);
        routes.register("a", "valve-1", a_tx).expect("a");
        routes.register("b", "valve-1", b_tx).expect("b");
        assert!(matches!(
            routes.send(None, "valve-1", json!(1)),
            Err(RouteError::Ambiguous { .. })
        ));
        assert_eq!(routes.send(Some("a"), "valve-1", json!(1)), Ok("a".into()));
        assert_eq!(a_rx.try_recv().expect("a got it").payload, json!(1));
        assert_eq!(
            routes.send(Some("a"), "valve-1", json!(2)),
            Ok("a".into()),
            "queue of 1 was drained"
        );
        assert_eq!(
            routes.send(Some("a"), "valve-1", json!(3)),
            Err(RouteError::Full("valve-1".into()))
        );
        assert!(matches!(
            routes.send(Some("c"), "valve-1", json!(1)),
            Err(RouteError::NotOnSource { .. })
        ));
        assert_eq!(
            routes.send(None, "nobody", json!(1)),
            Err(RouteError::Unknown("nobody".into()))
        );
        assert_eq!(
            routes.send(None, "<img src=x>", json!(1)),
            Err(RouteError::BadId("<img src=x>".into()))
        );
    }

    #[test]
    fn globs() {
        for (p, n, ok) in [
            ("pump0", "pump0", true),
            ("pump0", "pump01", false),
            ("valve-*", "valve-3", true),
            ("valve-*", "valve-", true),
            ("valve-*", "xvalve-3", false),
            ("*", "anything", true),
            ("*-cmd", "a-cmd", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxc", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(glob_match(p, n), ok, "{p} vs {n}");
        }
    }
}
