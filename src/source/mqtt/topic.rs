//! Topic patterns and payload decoding: the pure part of the MQTT source.
//!
//! A pattern such as `fleet/{vehicle}/{device}/{kind}` is both the subscription (each
//! placeholder becomes a `+` level) and the parser that fills a frame's ids from the topic
//! a message arrived on. Payloads become the frame's JSON payload. Everything here is a
//! function of its inputs, so it is unit-tested on strings and bytes.

use base64::Engine;
use serde_json::{json, Value};

/// One level of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// Must equal the topic level exactly.
    Literal(String),
    /// `{vehicle}`.
    Vehicle,
    /// `{device}`.
    Device,
    /// `{kind}`.
    Kind,
}

/// A parsed subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    levels: Vec<Level>,
}

/// Why a pattern is not acceptable (config validation names the key).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// Empty pattern.
    #[error("the pattern is empty")]
    Empty,
    /// MQTT wildcards are not allowed; placeholders say what a level means.
    #[error(
        "wildcards (+, #) are not allowed; use {{vehicle}}, {{device}}, {{kind}} placeholders"
    )]
    Wildcard,
    /// A `{...}` that is not one of the known placeholders, or not a whole level.
    #[error("unknown placeholder or partial level {0:?}; expected {{vehicle}}, {{device}} or {{kind}} as a whole level")]
    Placeholder(String),
    /// The same placeholder twice.
    #[error("placeholder {0} appears twice")]
    Repeated(&'static str),
}

/// Ids a topic filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicIds {
    /// From `{vehicle}`.
    pub vehicle: Option<String>,
    /// From `{device}`.
    pub device: Option<String>,
    /// From `{kind}`.
    pub kind: Option<String>,
}

impl TopicPattern {
    /// Parse `fleet/{vehicle}/{device}/{kind}`-style patterns.
    pub fn parse(pattern: &str) -> Result<TopicPattern, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut levels = Vec::new();
        for part in pattern.split('/') {
            let level = match part {
                "{vehicle}" => Level::Vehicle,
                "{device}" => Level::Device,
                "{kind}" => Level::Kind,
                p if p.contains(['+', '#']) => return Err(PatternError::Wildcard),
                p if p.contains(['{', '}']) => return Err(PatternError::Placeholder(p.into())),
                p => Level::Literal(p.to_string()),
            };
            for (l, name) in [
                (Level::Vehicle, "{vehicle}"),
                (Level::Device, "{device}"),
                (Level::Kind, "{kind}"),
            ] {
                if level == l && levels.contains(&l) {
                    return Err(PatternError::Repeated(name));
                }
            }
            levels.push(level);
        }
        Ok(TopicPattern { levels })
    }

    /// The MQTT subscription filter: placeholders become `+`.
    pub fn filter(&self) -> String {
        let parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                _ => "+",
            })
            .collect();
        parts.join("/")
    }

    /// The ids a topic fills in, or `None` if the topic does not have this pattern's shape
    /// (wrong level count, a literal differs, or a placeholder level is empty).
    pub fn match_topic(&self, topic: &str) -> Option<TopicIds> {
        let mut ids = TopicIds::default();
        let mut parts = topic.split('/');
        for level in &self.levels {
            let part = parts.next()?;
            let slot = match level {
                Level::Literal(s) if s == part => continue,
                Level::Literal(_) => return None,
                Level::Vehicle => &mut ids.vehicle,
                Level::Device => &mut ids.device,
                Level::Kind => &mut ids.kind,
            };
            if part.is_empty() {
                return None;
            }
            *slot = Some(part.to_string());
        }
        if parts.next().is_some() {
            return None;
        }
        Some(ids)
    }
}

impl TopicIds {
    /// The ids a topic filled in must be ids like configured ones ([`crate::config::valid_id`]:
    /// 1-64 characters of `A-Z a-z 0-9 . _ -`): they become journal keys, BSON values,
    /// command topics and dashboard text.
    pub fn check(&self) -> Result<(), Reject> {
        let bad = |v: &Option<String>| v.as_deref().is_some_and(|v| !crate::config::valid_id(v));
        if bad(&self.vehicle) {
            return Err(Reject::BadVehicle);
        }
        if bad(&self.device) {
            return Err(Reject::BadDevice);
        }
        if bad(&self.kind) {
            return Err(Reject::BadKind);
        }
        Ok(())
    }
}

/// Why a message was rejected; the string is the `reason` label of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reject {
    /// The topic matches no configured pattern.
    WrongTopic,
    /// Zero-length payload.
    Empty,
    /// Payload longer than `max_frame`.
    TooLong,
    /// The `{vehicle}` level is not a valid id.
    BadVehicle,
    /// The `{device}` level is not a valid id.
    BadDevice,
    /// The `{kind}` level is not a valid id.
    BadKind,
    /// The device belongs to another (configured) source.
    ForeignDevice,
    /// A new device beyond the source's `max_devices`.
    TooManyDevices,
}

impl Reject {
    /// Counter label.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::WrongTopic => "wrong_topic",
            Reject::Empty => "empty",
            Reject::TooLong => "too_long",
            Reject::BadVehicle => "bad_vehicle_id",
            Reject::BadDevice => "bad_device_id",
            Reject::BadKind => "bad_kind",
            Reject::ForeignDevice => "foreign_device",
            Reject::TooManyDevices => "too_many_devices",
        }
    }
}

/// Decode a payload into the frame's JSON and its default kind (`json` or `raw`).
/// JSON objects are kept as they are, other JSON values are wrapped as `{"value": ...}`,
/// anything else becomes `{"raw_b64": "..."}`.
pub fn decode_payload(bytes: &[u8], max_frame: usize) -> Result<(Value, &'static str), Reject> {
    if bytes.is_empty() {
        return Err(Reject::Empty);
    }
    if bytes.len() > max_frame {
        return Err(Reject::TooLong);
    }
    Ok(match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => (v, "json"),
        Ok(v) => (json!({ "value": v }), "json"),
        Err(_) => (
            json!({ "raw_b64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
            "raw",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_to_filter_and_ids() {
        let p = TopicPattern::parse("fleet/{vehicle}/{device}/{kind}").expect("parse");
        assert_eq!(p.filter(), "fleet/+/+/+");
        let ids = p.match_topic("fleet/van-7/gps0/gps").expect("match");
        assert_eq!(ids.vehicle.as_deref(), Some("van-7"));
        assert_eq!(ids.device.as_deref(), Some("gps0"));
        assert_eq!(ids.kind.as_deref(), Some("gps"));
    }

    #[test]
    fn wrong_shapes_do_not_match() {
        let p = TopicPattern::parse("fleet/{vehicle}/{device}/{kind}").expect("parse");
        for t in [
            "fleet/van/gps0",
            "fleet/van/gps0/gps/extra",
            "other/van/gps0/gps",
            "fleet//gps0/gps",
            "fleet/van/gps0/",
            "",
        ] {
            assert_eq!(p.match_topic(t), None, "{t:?}");
        }
        let lit = TopicPattern::parse("plant/line1/{device}").expect("parse");
        assert_eq!(lit.filter(), "plant/line1/+");
        assert!(lit.match_topic("plant/line2/x").is_none());
        let ids = lit.match_topic("plant/line1/x").expect("match");
        assert_eq!((ids.vehicle, ids.kind), (None, None));
    }

    #[test]
    fn ids_from_topic_levels_must_be_valid_ids() {
        let p = TopicPattern::parse("fleet/{vehicle}/{device}/{kind}").expect("parse");
        let check = |t: &str| p.match_topic(t).expect("shape matches").check();
        assert_eq!(check("fleet/van-7/gps0/gps"), Ok(()));
        assert_eq!(
            check("fleet/<img src=x onerror=alert(1)>/gps9/gps"),
            Err(Reject::BadVehicle)
        );
        assert_eq!(check("fleet/van/dev ice/gps"), Err(Reject::BadDevice));
        assert_eq!(check("fleet/van/gps0/k\u{0}"), Err(Reject::BadKind));
        let long = "d".repeat(65);
        assert_eq!(
            check(&format!("fleet/van/{long}/gps")),
            Err(Reject::BadDevice)
        );
        assert_eq!(check("fleet/van/gps0/\u{e9}t\u{e9}"), Err(Reject::BadKind));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert_eq!(TopicPattern::parse(""), Err(PatternError::Empty));
        assert_eq!(TopicPattern::parse("a/+/b"), Err(PatternError::Wildcard));
        assert_eq!(TopicPattern::parse("a/#"), Err(PatternError::Wildcard));
        assert!(matches!(
            TopicPattern::parse("a/{vin}"),
            Err(PatternError::Placeholder(_))
        ));
        assert!(matches!(
            TopicPattern::parse("a/x{device}"),
            Err(PatternError::Placeholder(_))
        ));
        assert_eq!(
            TopicPattern::parse("{device}/{device}"),
            Err(PatternError::Repeated("{device}"))
        );
    }

    #[test]
    fn payloads() {
        let (v, k) = decode_payload(br#"{"rpm": 900}"#, 100).expect("json");
        assert_eq!((v, k), (json!({"rpm": 900}), "json"));
        let (v, _) = decode_payload(b"42.5", 100).expect("number");
        assert_eq!(v, json!({"value": 42.5}));
        let (v, k) = decode_payload(&[0xff, 0x00, 0x01], 100).expect("raw");
        assert_eq!((v, k), (json!({"raw_b64": "/wAB"}), "raw"));
        assert_eq!(decode_payload(b"", 100), Err(Reject::Empty));
        assert_eq!(decode_payload(&[b'x'; 101], 100), Err(Reject::TooLong));
        assert!(decode_payload(&[b'1'; 100], 100).is_ok());
    }
}
