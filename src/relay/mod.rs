//! The live relay: frames from the journal fanned out to WebSocket clients.
//!
//! The [`hub::Hub`] turns each journaled frame into a WebSocket frame of its TMD JSON text
//! once and writes it to every client's socket ([`conn::Conn`]) whose filters it passes; a
//! socket that cannot take it now gets it queued, up to a per-client bound. A slow client
//! only ever loses its own oldest frames (and is told so with `lagged`), never slows ingest
//! or other clients. Each client's session ([`ws`]) answers its messages and does backfill
//! (`from_seq`): the journal, then live with no gap and no duplicate.
//! [`latency`] times each delivery from journal append to the client's socket.

pub mod conn;
pub mod hub;
pub mod latency;
pub mod socket;
pub mod ws;

use serde::Serialize;

/// The TMD envelope, serialized straight from the borrowed parts (no `Value` copy of the
/// frame: this runs once per live frame).
#[derive(Serialize)]
struct Envelope<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    data: T,
}

/// The seed's message envelope, `{type, message, data}`: the one place it is built.
pub fn tmd(kind: &str, message: &str, data: impl Serialize) -> String {
    serde_json::to_string(&Envelope {
        kind,
        message,
        data,
    })
    .unwrap_or_else(|_| {
        // Only data that JSON cannot express (e.g. non-string map keys) ends up here.
        serde_json::to_string(&Envelope {
            kind,
            message,
            data: (),
        })
        .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn envelope_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&super::tmd("pong", "pong", serde_json::json!({"t": 1})))
                .expect("json");
        assert_eq!(v["type"], "pong");
        assert_eq!(v["message"], "pong");
        assert_eq!(v["data"]["t"], 1);
        let text = super::tmd("frame", "", 7);
        assert_eq!(text, r#"{"type":"frame","message":"","data":7}"#);
    }
}
