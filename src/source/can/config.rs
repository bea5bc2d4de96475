//! `[[sources.can]]`: one CAN bus, how to reach it, and what to make of its frames.
//!
//! One flat table per bus; `interface` says which keys apply (`path`/`baud`/`bitrate` for
//! `slcan`, `address` for `slcan-tcp`, `ifname` for `socketcan`, `path`/`speed`/`loop` for
//! `candump`), and a key given for the wrong interface is an error naming it, so a typo
//! never silently falls back to a default. Validation also parses every DBC file, so
//! `fieldgate check-config` reports a bad one with its file and line.

use super::collect::SignalRule;
use super::dbc::Database;
use crate::config::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// How fieldgate reaches the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interface {
    /// A Lawicel/SLCAN adapter (CANable, USBtin, ...) on a serial port.
    Slcan,
    /// SLCAN over TCP (WiCAN-style adapters).
    SlcanTcp,
    /// A Linux SocketCAN interface.
    Socketcan,
    /// Replay of a `candump -L` log file.
    Candump,
}

impl Interface {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Slcan => "slcan",
            Interface::SlcanTcp => "slcan-tcp",
            Interface::Socketcan => "socketcan",
            Interface::Candump => "candump",
        }
    }
}

/// Bit rates an SLCAN adapter can be set to, with their `Sn` command.
pub const BITRATES: [(u32, &str); 9] = [
    (10_000, "S0"),
    (20_000, "S1"),
    (50_000, "S2"),
    (100_000, "S3"),
    (125_000, "S4"),
    (250_000, "S5"),
    (500_000, "S6"),
    (800_000, "S7"),
    (1_000_000, "S8"),
];

/// One CAN bus.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanConfig {
    /// Source name (unique); frames carry `source = "can:<name>"`.
    pub name: String,
    /// `slcan` | `slcan-tcp` | `socketcan` | `candump`.
    pub interface: Interface,
    /// Serial device (`slcan`) or log file (`candump`).
    pub path: Option<PathBuf>,
    /// Serial baud rate (`slcan`; USB adapters ignore it). Default 115200.
    pub baud: Option<u64>,
    /// Bus bit rate (`slcan`, `slcan-tcp`), sent as `S0`–`S8`. Default 500000.
    pub bitrate: Option<u32>,
    /// `host:port` (`slcan-tcp`).
    pub address: Option<String>,
    /// Interface name such as `can0` (`socketcan`).
    pub ifname: Option<String>,
    /// Replay speed (`candump`): 1.0 recorded timing, 0 as fast as possible. Default 1.0.
    pub speed: Option<f64>,
    /// Replay the log again from the start when it ends (`candump`). Default false.
    #[serde(rename = "loop")]
    pub repeat: Option<bool>,
    /// DBC files decoding this bus.
    #[serde(default)]
    pub dbc: Vec<PathBuf>,
    /// J1939 bus: PGN matching, transport-protocol reassembly, DM1 → `dtc`, FMS built in.
    #[serde(default)]
    pub j1939: bool,
    /// Also journal every frame raw (`{id, ext, dlc, data_hex}`), for diagnostics.
    #[serde(default)]
    pub raw: bool,
    /// Allow `command`s to transmit on this bus (otherwise the adapter is listen-only).
    #[serde(default)]
    pub writable: bool,
    /// Per-signal collection rules (first match wins; unmatched signals are all kept).
    #[serde(default)]
    pub rules: Vec<SignalRule>,
    /// Device id of the frames (default: the source name).
    pub device: Option<String>,
    /// Vehicle id.
    pub vehicle: Option<String>,
    /// When frames trickle, wait this long between reads so they gather (fewer wake-ups).
    #[serde(default = "default_gather_ms")]
    pub gather_ms: u64,
    /// DBC texts compiled into the binary (the demo's), as (name, text).
    #[serde(skip)]
    pub embedded_dbc: Vec<(&'static str, &'static str)>,
}

fn default_gather_ms() -> u64 {
    20
}

impl CanConfig {
    /// Device id of the frames.
    pub fn device(&self) -> &str {
        self.device.as_deref().unwrap_or(&self.name)
    }

    /// Where the bus is, for logs and status: the path, address or interface name.
    pub fn location(&self) -> PathBuf {
        match self.interface {
            Interface::Slcan | Interface::Candump => self.path.clone().unwrap_or_default(),
            Interface::SlcanTcp => {
                PathBuf::from(format!("tcp://{}", self.address.as_deref().unwrap_or("")))
            }
            Interface::Socketcan => PathBuf::from(self.ifname.as_deref().unwrap_or("")),
        }
    }

    /// Serial baud rate.
    pub fn baud(&self) -> u32 {
        self.baud
            .and_then(|b| u32::try_from(b).ok())
            .unwrap_or(115_200)
    }

    /// The `Sn` command of the bit rate.
    pub fn bitrate_command(&self) -> &'static str {
        let rate = self.bitrate.unwrap_or(500_000);
        BITRATES
            .iter()
            .find(|(r, _)| *r == rate)
            .map(|(_, c)| *c)
            .unwrap_or("S6")
    }

    /// Replay speed factor (0 = as fast as possible).
    pub fn speed(&self) -> f64 {
        self.speed.unwrap_or(1.0)
    }

    /// Parses and compiles the DBC files (what the source task and validation do).
    pub fn database(&self) -> Result<Database, super::dbc::DbcError> {
        Database::load(&self.dbc, &self.embedded_dbc)
    }

    /// Checks beyond types, including that every DBC file parses; `key` is this entry's path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let bad = |k: &str, m: String| ConfigError::invalid(format!("{key}.{k}"), m);
        let iface = self.interface.as_str();
        let given: [(&str, bool, &[Interface]); 6] = [
            (
                "path",
                self.path.is_some(),
                &[Interface::Slcan, Interface::Candump],
            ),
            ("baud", self.baud.is_some(), &[Interface::Slcan]),
            (
                "bitrate",
                self.bitrate.is_some(),
                &[Interface::Slcan, Interface::SlcanTcp],
            ),
            ("address", self.address.is_some(), &[Interface::SlcanTcp]),
            ("ifname", self.ifname.is_some(), &[Interface::Socketcan]),
            (
                "speed",
                self.speed.is_some() || self.repeat.is_some(),
                &[Interface::Candump],
            ),
        ];
        for (k, present, allowed) in given {
            if present && !allowed.contains(&self.interface) {
                return Err(bad(k, format!("does not apply to interface \"{iface}\"")));
            }
        }
        let required = match self.interface {
            Interface::Slcan | Interface::Candump => ("path", self.path.is_some()),
            Interface::SlcanTcp => ("address", self.address.is_some()),
            Interface::Socketcan => ("ifname", self.ifname.is_some()),
        };
        if !required.1 {
            return Err(bad(
                required.0,
                format!("required for interface \"{iface}\""),
            ));
        }
        if let Some(b) = self.baud {
            if b == 0 || u32::try_from(b).is_err() {
                return Err(bad(
                    "baud",
                    format!("expected a baud rate such as 115200, got {b}"),
                ));
            }
        }
        if let Some(rate) = self.bitrate {
            if !BITRATES.iter().any(|(r, _)| *r == rate) {
                let list: Vec<String> = BITRATES.iter().map(|(r, _)| r.to_string()).collect();
                return Err(bad(
                    "bitrate",
                    format!("expected one of {}, got {rate}", list.join(", ")),
                ));
            }
        }
        if let Some(addr) = &self.address {
            if addr
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(bad("address", format!("expected host:port, got {addr:?}")));
            }
        }
        if let Some(ifname) = &self.ifname {
            // IFNAMSIZ is 16 including the terminating NUL.
            if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', '\0', ' ']) {
                return Err(bad(
                    "ifname",
                    format!("expected an interface name such as can0, got {ifname:?}"),
                ));
            }
        }
        if let Some(s) = self.speed {
            if !s.is_finite() || s < 0.0 {
                return Err(bad(
                    "speed",
                    format!("expected 0 (as fast as possible) or a positive factor, got {s}"),
                ));
            }
        }
        if self.writable && self.interface == Interface::Candump {
            return Err(bad("writable", "a candump replay cannot transmit".into()));
        }
        if self.gather_ms > 1000 {
            return Err(bad(
                "gather_ms",
                format!("expected at most 1000 ms, got {}", self.gather_ms),
            ));
        }
        if self.dbc.len() > 16 {
            return Err(bad(
                "dbc",
                format!("expected at most 16 files, got {}", self.dbc.len()),
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(&format!("{key}.rules[{i}]"))?;
        }
        self.database().map_err(|e| bad("dbc", e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> CanConfig {
        toml::from_str(text).expect("can config")
    }

    #[test]
    fn interfaces_take_their_own_keys() {
        let ok =
            parse("name = \"c\"\ninterface = \"slcan\"\npath = \"/dev/null\"\nbitrate = 250000\n");
        ok.validate("k").expect("valid");
        assert_eq!(
            (ok.bitrate_command(), ok.baud(), ok.device()),
            ("S5", 115_200, "c")
        );
        let cases = [
            (
                "interface = \"slcan\"\n",
                "k.path: required for interface \"slcan\"",
            ),
            (
                "interface = \"slcan-tcp\"\naddress = \"nohost\"\n",
                "k.address: expected host:port",
            ),
            (
                "interface = \"socketcan\"\nifname = \"can0\"\nbitrate = 500000\n",
                "k.bitrate: does not apply",
            ),
            (
                "interface = \"slcan\"\npath = \"/x\"\nbitrate = 300000\n",
                "k.bitrate: expected one of 10000",
            ),
            (
                "interface = \"candump\"\npath = \"/x\"\nspeed = -1.0\n",
                "k.speed: expected 0",
            ),
            (
                "interface = \"candump\"\npath = \"/x\"\nwritable = true\n",
                "k.writable: a candump replay",
            ),
            (
                "interface = \"socketcan\"\nifname = \"a/b\"\n",
                "k.ifname: expected an interface",
            ),
            (
                "interface = \"socketcan\"\nifname = \"can0\"\ndbc = [\"/nonexistent.dbc\"]\n",
                "k.dbc: /nonexistent.dbc: ",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&format!("name = \"c\"\n{text}"))
                .validate("k")
                .expect_err(text);
            assert!(e.to_string().starts_with(want), "{text}: {e}");
        }
        let unknown =
            toml::from_str::<CanConfig>("name = \"c\"\ninterface = \"slcan\"\npth = \"/x\"\n");
        assert!(unknown.is_err());
        let bad_iface = toml::from_str::<CanConfig>("name = \"c\"\ninterface = \"usb\"\n");
        assert!(bad_iface.is_err());
    }
}
