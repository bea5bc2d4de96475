//! MQTT: topic pattern → subscription filter, topic → ids, payload → frame payload, and the
//! frame they make through the journal encoding.
//!
//! Input: `max_frame` (2 bytes), a pattern selector (1 byte; modulo 8 above the fixed
//! patterns, the pattern is the next NUL-terminated field), the topic (NUL-terminated), then the payload.
#![no_main]

use base64::Engine as _;
use fieldgate::frame::Frame;
use fieldgate::source::mqtt::topic::{decode_payload, Reject, TopicPattern};
use fieldgate_fuzz::{assert_frame_roundtrip, Input};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const PATTERNS: [&str; 5] = [
    "fleet/{vehicle}/{device}/{kind}",
    "{device}",
    "sensors/{device}/data",
    "a/{kind}//{vehicle}/b/{device}",
    "telemetry",
];

/// MQTT topic-filter matching (`+` = one level, `#` = the rest), as a broker does it.
fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max_frame = 1 + usize::from(input.u16());
    let sel = input.byte();
    let owned;
    let pattern = match PATTERNS.get(usize::from(sel % 8)) {
        Some(p) => *p,
        None => {
            let Ok(p) = std::str::from_utf8(input.field()) else {
                return;
            };
            owned = p.to_string();
            &owned
        }
    };
    // rumqttc hands over topics as `String`: only valid UTF-8 reaches the source.
    let Ok(topic) = std::str::from_utf8(input.field()) else {
        return;
    };
    let payload = input.rest();

    let Ok(pattern) = TopicPattern::parse(pattern) else {
        return;
    };
    let filter = pattern.filter();
    let Some(ids) = pattern.match_topic(topic) else {
        return;
    };
    assert!(
        filter_matches(&filter, topic),
        "{topic:?} matched but not its filter {filter:?}"
    );
    for id in [&ids.vehicle, &ids.device, &ids.kind].into_iter().flatten() {
        assert!(
            !id.is_empty() && !id.contains('/'),
            "id {id:?} from {topic:?}"
        );
    }

    let (value, default_kind) = match decode_payload(payload, max_frame) {
        Ok(v) => v,
        Err(Reject::Empty) => return assert!(payload.is_empty()),
        Err(Reject::TooLong) => return assert!(payload.len() > max_frame),
        Err(other) => panic!("decode_payload does not look at topics or ids: {other:?}"),
    };
    assert!(!payload.is_empty() && payload.len() <= max_frame);
    match default_kind {
        "json" => assert!(value.is_object()),
        "raw" => {
            let b64 = value["raw_b64"].as_str().expect("raw payload has raw_b64");
            let back = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64");
            assert_eq!(back, payload);
        }
        other => panic!("default kind {other}"),
    }

    // The frame the source builds from them goes through the journal unchanged.
    let kind = ids.kind.as_deref().unwrap_or(default_kind);
    let device = ids.device.as_deref().unwrap_or("broker");
    let mut frame = Frame::new("gw", &format!("mqtt:{topic}"), device, kind, value);
    frame.seq = 1;
    frame.vehicle = ids.vehicle;
    assert_frame_roundtrip(&frame);
    assert!(matches!(frame.payload, Value::Object(_)));
});
