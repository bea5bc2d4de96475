//! `[listen]`: where the technician interface listens, with which certificate, for which
//! other origins, and within which limits.
//!
//! The defaults fit a Raspberry Pi on a vehicle's Wi-Fi: a few technicians with a dashboard
//! and a tool or two each, and a listener that a misbehaving client on the same network
//! cannot starve (see `serve.rs` for how each limit is enforced).

use crate::config::ConfigError;
use crate::units::{HumanDuration, Positive};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[listen]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Address of the HTTP/WebSocket listener.
    pub address: SocketAddr,
    /// Certificate chain (PEM, leaf first); with `tls_key`, the port speaks HTTPS and WSS.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Origins whose web pages may call the API with a key (CORS): `["*"]` (any; keys never
    /// travel in cookies, so no page gets a credential it was not given), `[]` (none), or
    /// exact origins such as `"http://laptop.local:8080"`.
    pub cors_origins: Vec<String>,
    /// A request head must arrive completely within this long of the first byte (and a new
    /// connection must send one within this long).
    pub header_timeout: HumanDuration,
    /// A connection on which nothing moves for this long is closed (between requests, or
    /// stalled mid-request); WebSocket sessions have their own liveness rules.
    pub idle_timeout: HumanDuration,
    /// Most open connections (WebSocket sessions included); over it the longest idle one
    /// is closed to make room, or the new one gets 503.
    pub max_connections: Positive,
    /// Most open connections from one address (IPv6: one /64); over it, 429.
    pub max_connections_per_ip: Positive,
    /// Most WebSocket sessions open on one API key; over it, 429.
    pub max_sessions_per_key: Positive,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: SocketAddr::from(([0, 0, 0, 0], 3004)),
            tls_cert: None,
            tls_key: None,
            cors_origins: vec!["*".into()],
            header_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_connections: Positive(256),
            max_connections_per_ip: Positive(32),
            max_sessions_per_key: Positive(8),
        }
    }
}

impl ListenConfig {
    /// Checks beyond types; errors name the key under `listen`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "listen.tls_key",
                    "expected the private key file next to tls_cert",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "listen.tls_cert",
                    "expected the certificate file next to tls_key",
                ))
            }
            _ => {}
        }
        for (i, o) in self.cors_origins.iter().enumerate() {
            if o != "*" && !valid_origin(o) {
                return Err(ConfigError::invalid(
                    format!("listen.cors_origins[{i}]"),
                    format!("expected \"*\" or an origin such as \"https://tool.example:8443\" (scheme://host[:port], no path), got {o:?}"),
                ));
            }
        }
        if self.cors_origins.len() > 1 && self.cors_origins.iter().any(|o| o == "*") {
            return Err(ConfigError::invalid(
                "listen.cors_origins",
                "\"*\" already allows every origin; list it alone",
            ));
        }
        for (key, d) in [
            ("header_timeout", self.header_timeout.0),
            ("idle_timeout", self.idle_timeout.0),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                return Err(ConfigError::invalid(
                    format!("listen.{key}"),
                    format!("expected 1s to 1h, got {d:?}"),
                ));
            }
        }
        let cap = |key: &str, v: Positive, max: u64| {
            if v.0 > max {
                Err(ConfigError::invalid(
                    format!("listen.{key}"),
                    format!("expected at most {max}, got {}", v.0),
                ))
            } else {
                Ok(())
            }
        };
        cap("max_connections", self.max_connections, 65_536)?;
        cap(
            "max_connections_per_ip",
            self.max_connections_per_ip,
            65_536,
        )?;
        cap("max_sessions_per_key", self.max_sessions_per_key, 65_536)?;
        Ok(())
    }

    /// The limits as the listener uses them.
    pub fn limits(&self) -> Limits {
        let n = |p: Positive| usize::try_from(p.0).unwrap_or(usize::MAX);
        Limits {
            header_timeout: self.header_timeout.0,
            idle_timeout: self.idle_timeout.0,
            max_connections: n(self.max_connections),
            max_per_ip: n(self.max_connections_per_ip).min(n(self.max_connections)),
            max_sessions_per_key: n(self.max_sessions_per_key),
        }
    }
}

/// `scheme://host[:port]` with an http(s) scheme and nothing after the authority.
fn valid_origin(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.is_empty()
        && o.parse::<axum::http::HeaderValue>().is_ok()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

/// The listener's limits, resolved.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`ListenConfig::header_timeout`].
    pub header_timeout: Duration,
    /// See [`ListenConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`ListenConfig::max_connections`].
    pub max_connections: usize,
    /// See [`ListenConfig::max_connections_per_ip`].
    pub max_per_ip: usize,
    /// See [`ListenConfig::max_sessions_per_key`].
    pub max_sessions_per_key: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ListenConfig, ConfigError> {
        let c: ListenConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_and_bad_values_name_the_key() {
        let c = parse("").expect("defaults");
        assert_eq!(c.cors_origins, vec!["*"]);
        assert_eq!(c.limits().max_connections, 256);
        let small = parse("max_connections = 10").expect("small");
        assert_eq!(
            small.limits().max_per_ip,
            10,
            "per-address cap clamped to the total"
        );
        parse("cors_origins = [\"http://laptop.local:8080\", \"https://tool.example\"]")
            .expect("origins");
        for (text, key) in [
            ("tls_cert = \"/x.pem\"", "listen.tls_key"),
            ("tls_key = \"/x.pem\"", "listen.tls_cert"),
            (
                "cors_origins = [\"laptop.local\"]",
                "listen.cors_origins[0]",
            ),
            ("cors_origins = [\"http://a/b\"]", "listen.cors_origins[0]"),
            (
                "cors_origins = [\"*\", \"http://a\"]",
                "listen.cors_origins",
            ),
            ("header_timeout = \"0s\"", "listen.header_timeout"),
            ("idle_timeout = \"2h\"", "listen.idle_timeout"),
            ("max_connections = 70000", "listen.max_connections"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with(&format!("{key}:")), "{text}: {e}");
        }
    }
}
