//! The running gateway as doctor sees it from outside: who holds the listen port, whether
//! `/healthz` answers, and — given a key — its own `/api/status`, so a part the service
//! holds can be reported with what the service says about it.

use super::procfs::{self, Holder};
use crate::api::ListenConfig;
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long one request to the running gateway may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest body read from the gateway.
const BODY_MAX: usize = 4 << 20;
/// How many of the latest frames are searched for a GPS time.
const GNSS_LOOKBACK: u64 = 2_000;

/// The running gateway, if any.
#[derive(Debug, Default)]
pub struct Service {
    /// The process listening on the configured port.
    pub holder: Option<Holder>,
    /// Whether `/healthz` answered 200 on that port.
    pub healthz: bool,
    /// Its `/api/status`, when a key was given and accepted.
    pub status: Option<Value>,
    /// Why there is no status (no key, key refused, ...).
    pub status_note: String,
    /// Where it answered and the key it accepted, for further reads.
    reach: Option<(SocketAddr, String)>,
}

/// The service part of the JSON report.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Process id of the listener.
    pub pid: Option<u32>,
    /// Its command name.
    pub name: Option<String>,
    /// Whether `/healthz` answered.
    pub healthz: bool,
    /// Whether `/api/status` was read.
    pub status_read: bool,
}

/// The address to reach a listener bound to `addr` (loopback for a wildcard address).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// One GET; returns the status code and body.
async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> Result<(u16, Vec<u8>), String> {
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let mut req = hyper::Request::get(path).header(hyper::header::HOST, addr.to_string());
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), BODY_MAX)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        conn.abort();
        Ok((code, body.to_vec()))
    };
    tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no answer in {} s", HTTP_TIMEOUT.as_secs()))?
}

/// Look for the running gateway on the configured listen address.
pub async fn probe(listen: &ListenConfig, key: Option<&str>) -> Service {
    let holders = procfs::listeners(listen.address.port());
    let holder = holders
        .iter()
        .find(|h| h.is_fieldgate())
        .or(holders.first())
        .cloned();
    let addr = reachable(listen.address);
    let healthz = matches!(get(addr, "/healthz", None).await, Ok((200, _)));
    let mut service = Service {
        holder,
        healthz,
        ..Service::default()
    };
    if !healthz {
        service.status_note = format!("no gateway answers on {addr}");
        return service;
    }
    let Some(key) = key else {
        service.status_note =
            "pass --key (or FIELDGATE_API_KEY) to see the service's own view".into();
        return service;
    };
    match get(addr, "/api/status", Some(key)).await {
        Ok((200, body)) => match serde_json::from_slice(&body) {
            Ok(v) => {
                service.status = Some(v);
                service.reach = Some((addr, key.to_string()));
            }
            Err(e) => service.status_note = format!("/api/status is not JSON: {e}"),
        },
        Ok((code, _)) => {
            service.status_note =
                format!("the service refused the key (HTTP {code}); it needs the read scope")
        }
        Err(e) => service.status_note = format!("/api/status: {e}"),
    }
    service
}

impl Service {
    /// The JSON summary, when something holds the port or answers on it.
    pub fn summary(&self) -> Option<Summary> {
        (self.holder.is_some() || self.healthz).then(|| Summary {
            pid: self.holder.as_ref().map(|h| h.pid),
            name: self.holder.as_ref().map(|h| h.name.clone()),
            healthz: self.healthz,
            status_read: self.status.is_some(),
        })
    }

    /// The service's status entry of source `name`.
    pub fn source(&self, name: &str) -> Option<&Value> {
        self.status.as_ref()?.get("sources")?.get(name)
    }

    /// The service's status entry of sink `name`.
    pub fn sink(&self, name: &str) -> Option<&Value> {
        self.status.as_ref()?.get("sinks")?.get(name)
    }

    /// System time minus GNSS time, ms, from the latest journaled `gps` frame of `device`
    /// with a fix (its receive time minus the receiver's RMC time).
    pub async fn gnss_offset(&self, device: &str) -> Option<i64> {
        let (addr, key) = self.reach.as_ref()?;
        let last = self.status.as_ref()?["journal"]["last_seq"].as_u64()?;
        let from = last.saturating_sub(GNSS_LOOKBACK);
        let path = format!("/api/frames?kind=gps&from_seq={from}&limit={GNSS_LOOKBACK}");
        let (code, body) = get(*addr, &path, Some(key)).await.ok()?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_slice(&body).ok()?;
        v["frames"].as_array()?.iter().rev().find_map(|f| {
            let fix = f["device"] == device && f["payload"]["valid"] == true;
            let (ts, dev) = (f["ts_ms"].as_i64()?, f["device_ts_ms"].as_i64()?);
            fix.then_some(ts - dev)
        })
    }

    /// "`state`, N frames, last error: ..." of a status entry.
    pub fn describe(entry: &Value) -> String {
        let mut s = entry["state"].as_str().unwrap_or("?").to_string();
        if let Some(n) = entry["frames"].as_u64() {
            s.push_str(&format!(", {n} frames"));
        }
        if let Some(lag) = entry["lag"].as_u64() {
            s.push_str(&format!(", lag {lag}"));
        }
        if let Some(e) = entry["last_error"].as_str() {
            s.push_str(&format!(", last error: {}", super::printable(e, 300)));
        }
        s
    }
}
