//! `fieldgate tail`: a terminal client for the live relay (filters, backfill, JSON output).
//!
//! It reconnects on its own and resumes from the last seq it printed, so a flaky Wi-Fi
//! link costs no frames and prints none twice.

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `fieldgate tail`.
#[derive(Args)]
pub struct TailArgs {
    /// Gateway WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:3004/ws")]
    url: String,
    /// API key (scope read).
    #[arg(long, env = "FIELDGATE_API_KEY")]
    key: String,
    /// Only these devices (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    device: Vec<String>,
    /// Only these vehicles.
    #[arg(long, value_delimiter = ',')]
    vehicle: Vec<String>,
    /// Only these kinds.
    #[arg(long, value_delimiter = ',')]
    kind: Vec<String>,
    /// Replay the journal from this seq first.
    #[arg(long)]
    from_seq: Option<u64>,
    /// Print each frame as one JSON line.
    #[arg(long)]
    json: bool,
    /// Exit after this many frames.
    #[arg(long)]
    count: Option<u64>,
    /// Client name shown in /api/connections.
    #[arg(long, default_value = "fieldgate-tail")]
    name: String,
}

fn list(v: &[String]) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        json!(v)
    }
}

/// One frame as a terminal line.
fn line(f: &Value) -> String {
    format!(
        "{} {} {}/{} {} {}",
        f["seq"],
        f["ts_ms"],
        f["vehicle"].as_str().unwrap_or("-"),
        f["device"].as_str().unwrap_or("-"),
        f["kind"].as_str().unwrap_or("-"),
        f["payload"]
    )
}

/// Says once per outage that tail keeps retrying, and why, and once when it is back.
#[derive(Default)]
struct Outage {
    since: Option<std::time::Instant>,
}

impl Outage {
    /// A connection attempt failed or the connection ended.
    fn failed(&mut self, url: &str, why: &dyn std::fmt::Display) {
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            eprintln!(
                "tail: {url}: {why}; retrying until it answers (at most 10 s apart; Ctrl-C to stop)"
            );
        }
    }

    /// Connected: ends an outage, if there was one.
    fn connected(&mut self, url: &str) {
        if let Some(t) = self.since.take() {
            eprintln!("tail: connected to {url} after {} s", t.elapsed().as_secs());
        }
    }
}

/// Run the client until `--count` frames or Ctrl-C.
pub async fn run(a: TailArgs) -> anyhow::Result<()> {
    let mut last: Option<u64> = a.from_seq.map(|s| s.saturating_sub(1));
    let mut printed = 0u64;
    let mut delay = Duration::from_millis(250);
    let mut outage = Outage::default();
    let mut out = std::io::stdout();
    loop {
        let mut req = a.url.as_str().into_client_request().context("--url")?;
        req.headers_mut()
            .insert("x-api-key", a.key.parse().context("--key")?);
        req.headers_mut()
            .insert("sec-websocket-protocol", a.name.parse().context("--name")?);
        let mut ws = match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                anyhow::bail!("gateway refused the connection: HTTP {}", resp.status());
            }
            Err(e) => {
                outage.failed(&a.url, &e);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        delay = Duration::from_millis(250);
        outage.connected(&a.url);
        let sub = json!({"type": "subscribe", "message": "", "data": {
            "devices": list(&a.device), "vehicles": list(&a.vehicle), "kinds": list(&a.kind),
            "from_seq": last.map(|l| l + 1),
        }});
        ws.send(Message::Text(sub.to_string().into())).await?;
        // Until the gateway confirms the subscription it relays everything (the seed
        // protocol's default), so frames before `subscribed` are not ours to print.
        let mut subscribed = false;
        while let Some(msg) = ws.next().await {
            let Ok(Message::Text(text)) = msg else {
                if msg.is_err() {
                    break;
                }
                continue;
            };
            let Ok(m) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match m["type"].as_str() {
                Some("subscribed") => subscribed = true,
                Some("frame") if subscribed => {
                    let f = &m["data"];
                    let seq = f["seq"].as_u64().unwrap_or(0);
                    if last.is_some_and(|l| seq <= l) {
                        continue;
                    }
                    last = Some(seq);
                    let text = if a.json { f.to_string() } else { line(f) };
                    if writeln!(out, "{text}").is_err() {
                        return Ok(());
                    }
                    printed += 1;
                    if a.count.is_some_and(|c| printed >= c) {
                        let _ = ws.close(None).await;
                        return Ok(());
                    }
                }
                Some("error") => eprintln!("tail: gateway error: {}", m["message"]),
                Some("lagged") => {
                    eprintln!("tail: lagged, {} frames dropped", m["data"]["dropped"])
                }
                _ => {}
            }
        }
        outage.failed(&a.url, &"the connection closed");
        tokio::time::sleep(delay).await;
    }
}
