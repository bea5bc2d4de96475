//! The broker's own counters: mosquitto publishes `$SYS/broker/...` topics (retained,
//! every `sys_interval`, 10 s by default), among them how many publishes it dropped
//! because a client's in-flight window and queue were full. The MQTT source subscribes to
//! a few of them on its connection and shows them in `/api/status` under the source, so
//! drops that happen at the broker (while fieldgate waits for its fsync) are visible.
//! The counters are broker-wide, not per client.

use crate::source::SourceSlot;

/// The topic prefix of the counters.
const PREFIX: &str = "$SYS/broker/";

/// The counters taken, named as their topic after [`PREFIX`].
pub const STATS: [&str; 4] = [
    "publish/messages/dropped",
    "publish/messages/received",
    "publish/messages/sent",
    "store/messages/count",
];

/// The topic filters to subscribe to.
pub fn filters() -> impl Iterator<Item = String> {
    STATS.iter().map(|s| format!("{PREFIX}{s}"))
}

/// If `topic` is one of the counters, record `payload` (a decimal number) in `slot` and
/// return true. Anything else under `$SYS/` is ignored (true); other topics are not ours.
pub fn take(topic: &str, payload: &[u8], slot: &SourceSlot) -> bool {
    let Some(rest) = topic.strip_prefix("$SYS/") else {
        return false;
    };
    let stat = STATS
        .iter()
        .find(|s| rest.strip_prefix("broker/") == Some(**s));
    let value = std::str::from_utf8(payload)
        .ok()
        .filter(|t| t.len() <= 20)
        .and_then(|t| t.trim().parse::<u64>().ok());
    if let (Some(stat), Some(value)) = (stat, value) {
        slot.set_broker_stat(stat, value);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceStates;

    #[test]
    fn counters_are_taken_and_the_rest_ignored() {
        let states = SourceStates::default();
        let slot = states.register("m", "mqtt");
        assert!(take("$SYS/broker/publish/messages/dropped", b"417", &slot));
        assert!(take("$SYS/broker/store/messages/count", b" 12\n", &slot));
        assert!(take("$SYS/broker/publish/messages/sent", b"-1", &slot));
        assert!(take("$SYS/broker/uptime", b"5 seconds", &slot));
        assert!(take(
            "$SYS/broker/publish/messages/received",
            &[b'9'; 40],
            &slot
        ));
        assert!(!take("fleet/van/dev/kind", b"1", &slot));
        let s = &states.snapshot()["m"];
        assert_eq!(s.broker.get("publish/messages/dropped"), Some(&417));
        assert_eq!(s.broker.get("store/messages/count"), Some(&12));
        assert_eq!(s.broker.len(), 2, "{:?}", s.broker);
    }
}
