//! WebSocket client messages: the TMD envelope and the `data` of each message type, parsed
//! by the session's own `parse_client_message`, and the replies built from them.
//!
//! Input: the text of one message (tungstenite hands the session valid UTF-8 only, at most
//! `MAX_MESSAGE` bytes).
#![no_main]

use fieldgate::relay::tmd;
use fieldgate::relay::ws::{parse_client_message, ClientMessage, Filters, MAX_MESSAGE};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// A reply must be one JSON document.
fn assert_json(text: &str) {
    serde_json::from_str::<Value>(text)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text}"));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > MAX_MESSAGE {
        return;
    }
    let msg = match parse_client_message(text) {
        Ok(m) => m,
        Err(e) => {
            // The error reply echoes at most an escaped copy of the input.
            assert!(
                e.len() <= 6 * text.len() + 256,
                "error of {} bytes",
                e.len()
            );
            return assert_json(&tmd("error", &e, Value::Null));
        }
    };
    match msg {
        ClientMessage::Ping(data) | ClientMessage::Broadcast(data) => {
            assert_json(&tmd("pong", "pong", data));
        }
        ClientMessage::Subscribe(filters) => {
            // What the session shows back (and stores in the client list) reads back the same.
            let shown = serde_json::to_value(&filters).expect("filters serialize");
            let back: Filters = serde_json::from_value(shown.clone()).expect("shown filters parse");
            assert_eq!(
                serde_json::to_value(&back).expect("filters serialize"),
                shown
            );
            assert_json(&tmd("subscribed", "subscribed", shown));
            // A frame carrying the first listed value of every filter passes them.
            fn first(l: &Option<Vec<String>>) -> Option<Option<&str>> {
                match l {
                    None => Some(None),
                    Some(v) => v.first().map(|s| Some(s.as_str())),
                }
            }
            let picked = (
                first(&filters.devices),
                first(&filters.vehicles),
                first(&filters.kinds),
            );
            if let (Some(d), Some(v), Some(k)) = picked {
                assert!(filters.matches(d.unwrap_or("dev"), v, k.unwrap_or("gps")));
            }
        }
        ClientMessage::Unsubscribe => {}
        ClientMessage::Command(cmd) => {
            assert_json(&tmd(
                "command",
                "sent",
                serde_json::json!({"device": cmd.device}),
            ));
            // A CAN frame was checked and moved into the payload; the source parses it again.
            assert!(cmd.can.is_none());
            let sent_can = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|m| m.get("data")?.get("can").cloned())
                .is_some_and(|c| !c.is_null());
            if sent_can {
                fieldgate::source::can::command::parse(&cmd.payload).expect("routed CAN frame");
            }
        }
    }
});
