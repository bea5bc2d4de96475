//! `/metrics`: Prometheus text exposition, rendered from the components' own counters.
//!
//! Every number already lives in exactly one place (journal counters, source and sink
//! status slots, the hub), so this module only formats a snapshot of them; a separate
//! metrics registry would be a second copy of the same state.
//!
//! The Prometheus rules hold by construction: a counter is a total of this run kept where
//! it is counted (a WebSocket client that leaves takes nothing out of
//! `fieldgate_ws_frames_sent_total`), every family has its `# HELP` and `# TYPE`, and
//! labels are the ones documented beside the counters (`reason` on
//! `fieldgate_frames_invalid_total`). The text is written here rather than through the
//! `prometheus-client` crate: its registry would hold that second copy, and its encoder
//! writes OpenMetrics (counter families renamed without `_total`, `# EOF`), which would
//! change the names every existing scrape config and dashboard reads.

use crate::api::AppState;
use crate::relay::latency::BOUNDS_US;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

/// Escape a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn val(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
        }
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        self.val(name, &[], v);
    }
    /// One family with a sample per component, labelled `key="<its name>"`.
    fn each<S, V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: &BTreeMap<String, S>,
        key: &str,
        v: impl Fn(&S) -> V,
    ) {
        self.head(name, kind, help);
        for (n, s) in rows {
            self.val(name, &[(key, n)], v(s));
        }
    }
}

/// Render all metrics.
pub fn render(st: &AppState) -> String {
    let mut o = Out(String::with_capacity(4096));
    let j = st.journal.stats();
    o.one(
        "fieldgate_journal_last_seq",
        "gauge",
        "Highest seq issued.",
        j.last_seq,
    );
    o.one(
        "fieldgate_journal_durable_seq",
        "gauge",
        "Highest seq on disk.",
        j.durable_seq,
    );
    o.one(
        "fieldgate_journal_first_seq",
        "gauge",
        "Oldest seq stored.",
        j.first_seq,
    );
    o.one(
        "fieldgate_journal_frames",
        "gauge",
        "Frames stored.",
        j.frames,
    );
    o.one(
        "fieldgate_journal_bytes",
        "gauge",
        "Logical bytes stored.",
        j.bytes,
    );
    o.one(
        "fieldgate_journal_disk_bytes",
        "gauge",
        "Bytes on disk.",
        j.disk_bytes,
    );
    o.one(
        "fieldgate_journal_evicted_total",
        "counter",
        "Frames evicted by the byte cap.",
        j.evicted,
    );
    o.one(
        "fieldgate_journal_pruned_total",
        "counter",
        "Frames pruned by retention.",
        j.pruned,
    );
    o.one(
        "fieldgate_journal_appended_total",
        "counter",
        "Frames appended in this run.",
        j.appended,
    );
    o.one(
        "fieldgate_journal_commits_total",
        "counter",
        "Group commits in this run.",
        j.flushes,
    );
    o.one(
        "fieldgate_journal_write_failing",
        "gauge",
        "1 while journal writes keep failing (a full disk, ...).",
        u8::from(j.write_failing),
    );
    o.one(
        "fieldgate_journal_decode_errors_total",
        "counter",
        "Undecodable records skipped.",
        j.decode_errors,
    );

    let sources = st.sources.snapshot();
    o.head(
        "fieldgate_source_frames_total",
        "counter",
        "Frames journaled per source.",
    );
    for (name, s) in &sources {
        o.val(
            "fieldgate_source_frames_total",
            &[("source", name), ("kind", s.kind)],
            s.frames,
        );
    }
    let name = "fieldgate_frames_invalid_total";
    o.head(name, "counter", "Input rejected per source and reason.");
    for (source, s) in &sources {
        for (reason, n) in &s.invalid_by_reason {
            o.val(name, &[("source", source), ("reason", reason)], n);
        }
        // Rejects counted without a reason still count.
        let unnamed = s
            .invalid
            .saturating_sub(s.invalid_by_reason.values().sum::<u64>());
        if unnamed > 0 {
            o.val(name, &[("source", source), ("reason", "other")], unnamed);
        }
    }
    o.each(
        "fieldgate_source_up",
        "gauge",
        "1 when the source is running.",
        &sources,
        "source",
        |s| u8::from(s.state == "running"),
    );

    let sinks = st.sinks.snapshot();
    o.each(
        "fieldgate_sink_acked_seq",
        "gauge",
        "Last seq the sink's destination acknowledged.",
        &sinks,
        "sink",
        |s| s.acked_seq,
    );
    o.each(
        "fieldgate_sink_resent_total",
        "counter",
        "Frames sent again because the destination lost them after acknowledging them.",
        &sinks,
        "sink",
        |s| s.resent,
    );
    o.each(
        "fieldgate_sink_collisions_total",
        "counter",
        "Frames whose _id the destination held for a different frame (re-journaled).",
        &sinks,
        "sink",
        |s| s.collisions,
    );
    let name = "fieldgate_sink_encode_fallbacks_total";
    o.head(
        name,
        "counter",
        "Frames not stored as plain documents, by reason.",
    );
    for (sink, s) in &sinks {
        for (reason, n) in &s.encode_fallbacks {
            o.val(name, &[("sink", sink), ("reason", reason)], n);
        }
    }
    o.each(
        "fieldgate_sink_lag_frames",
        "gauge",
        "Frames not yet acknowledged.",
        &sinks,
        "sink",
        |s| s.lag,
    );
    o.each(
        "fieldgate_sink_lag_seconds",
        "gauge",
        "Age of the oldest unacknowledged frame.",
        &sinks,
        "sink",
        |s| s.lag_seconds,
    );
    o.each(
        "fieldgate_sink_online",
        "gauge",
        "1 when the sink's destination is reachable.",
        &sinks,
        "sink",
        |s| u8::from(s.state == "online"),
    );

    let clients = st.hub.clients();
    o.one(
        "fieldgate_ws_clients",
        "gauge",
        "Connected WebSocket clients.",
        clients.len(),
    );
    o.one(
        "fieldgate_ws_frames_sent_total",
        "counter",
        "Frames sent to WebSocket clients (all clients of this run, gone ones included).",
        st.hub.delivery.sent.load(Relaxed),
    );
    o.one(
        "fieldgate_ws_frames_dropped_total",
        "counter",
        "Frames dropped for slow WebSocket clients (all clients of this run).",
        st.hub.delivery.dropped.load(Relaxed),
    );
    let lat = st.hub.relay_latency.snapshot();
    let name = "fieldgate_relay_latency_seconds";
    o.head(
        name,
        "histogram",
        "Journal append to a WebSocket client's socket, per delivered frame.",
    );
    let mut total = 0;
    for (i, n) in lat.buckets.iter().enumerate() {
        total += n;
        let le = BOUNDS_US
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |us| (*us as f64 / 1e6).to_string());
        o.val(&format!("{name}_bucket"), &[("le", &le)], total);
    }
    o.val(&format!("{name}_sum"), &[], lat.sum_us as f64 / 1e6);
    o.val(&format!("{name}_count"), &[], total);
    o.one(
        "fieldgate_live_published_total",
        "counter",
        "Frames published live.",
        st.hub.published.load(Relaxed),
    );
    o.one(
        "fieldgate_auth_blocked_addresses",
        "gauge",
        "Addresses throttled for failed auth.",
        st.throttle.blocked_count(),
    );
    o.one(
        "fieldgate_auth_wrong_keys_total",
        "counter",
        "Presented, non-empty wrong API keys.",
        st.events.wrong_keys_total(),
    );
    o.one(
        "fieldgate_http_connections",
        "gauge",
        "Open connections to the listener (WebSocket sessions included).",
        st.connections.open(),
    );
    for (name, help, rows) in [
        (
            "fieldgate_http_refused_total",
            "Connections, sessions and requests refused by a [listen] limit or the throttle.",
            st.events.refused_total(),
        ),
        (
            "fieldgate_http_closed_total",
            "Connections the listener closed (timeouts, evictions, failed TLS handshakes).",
            st.events.closed_total(),
        ),
    ] {
        o.head(name, "counter", help);
        for (reason, n) in rows {
            o.val(name, &[("reason", reason)], n);
        }
    }
    o.one(
        "fieldgate_uptime_seconds",
        "gauge",
        "Seconds since start.",
        st.started.elapsed().as_secs(),
    );
    o.0
}
