//! From CAN frames to journal frames: lookup, J1939, decoding, collection rules.
//!
//! [`Ingest`] is the synchronous heart of a CAN source, shared by the source task and the
//! benchmark: every frame is looked up by id in the DBC database (on a J1939 bus also by
//! PGN, then in the built-in FMS table), decoded, filtered by the per-signal rules and
//! turned into one `can` frame per message (`{message, id, signals, units}`, plus `pgn`
//! and `sa` on J1939). Transport-protocol sessions are reassembled first; DM1 becomes a
//! `dtc` frame and the VIN a `VI` message, each journaled when it changes and at least
//! once a minute. Frames no DBC knows are counted by id for `/api/status` (bounded) and
//! dropped, unless `raw = true` journals every frame as `{id, ext, dlc, data_hex}`.
//! Input worth counting (values out of range, broken TP sessions) is queued in `issues`
//! for the task to count and log.

use super::config::CanConfig;
use super::dbc::{Database, Reading};
use super::j1939::{self, Dm1, TpEvent, Transport};
use super::{collect::Collector, fms, CanFrame};
use crate::frame::Frame;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Distinct unknown ids counted one by one; more are summed as "other".
const UNKNOWN_IDS_MAX: usize = 4096;
/// Unknown ids listed in the status.
const UNKNOWN_TOP: usize = 10;
/// An unchanged DM1 or VIN is journaled again after this long.
const REPEAT_MS: i64 = 60_000;

/// One CAN source's decoding state.
pub struct Ingest {
    gateway: String,
    source: String,
    device: String,
    vehicle: Option<String>,
    db: Database,
    /// J1939: messages by PGN (user DBC first, then the FMS table).
    by_pgn: HashMap<u32, usize>,
    j1939: bool,
    raw: bool,
    collect: Collector,
    tp: Transport,
    dm1_last: HashMap<u8, (Dm1, i64)>,
    vin_last: HashMap<u8, (String, i64)>,
    unknown: HashMap<u32, u64>,
    unknown_other: u64,
    unknown_total: u64,
    decoded: u64,
    raws: Vec<Option<u64>>,
    readings: Vec<(usize, Reading)>,
    out_of_range: Vec<usize>,
    /// Input to count and log: (reason, detail).
    pub issues: Vec<(&'static str, String)>,
}

impl Ingest {
    /// The pipeline of `cfg`'s bus over its compiled `db`.
    pub fn new(cfg: &CanConfig, gateway: &str, mut db: Database) -> Ingest {
        let mut by_pgn = HashMap::new();
        if cfg.j1939 {
            for m in &mut db.messages {
                if m.key & (1 << 31) != 0 {
                    m.j1939 = true;
                }
            }
            for (i, m) in db.messages.iter().enumerate() {
                if m.j1939 {
                    by_pgn
                        .entry(j1939::split(m.key & super::EFF_MAX).pgn)
                        .or_insert(i);
                }
            }
            for plan in fms::table() {
                by_pgn.entry(plan.key).or_insert(db.messages.len());
                db.messages.push(plan);
            }
        }
        let collect = Collector::new(&cfg.rules, &db);
        Ingest {
            gateway: gateway.to_string(),
            source: format!("can:{}", cfg.name),
            device: cfg.device().to_string(),
            vehicle: cfg.vehicle.clone(),
            db,
            by_pgn,
            j1939: cfg.j1939,
            raw: cfg.raw,
            collect,
            tp: Transport::default(),
            dm1_last: HashMap::new(),
            vin_last: HashMap::new(),
            unknown: HashMap::new(),
            unknown_other: 0,
            unknown_total: 0,
            decoded: 0,
            raws: Vec::new(),
            readings: Vec::new(),
            out_of_range: Vec::new(),
            issues: Vec::new(),
        }
    }

    /// Takes one frame from the bus; journal frames it produces go to `out`.
    pub fn push(
        &mut self,
        f: &CanFrame,
        device_ts: Option<i64>,
        now_ms: i64,
        out: &mut Vec<Frame>,
    ) {
        if self.raw {
            let mut p = json!({"id": f.id, "ext": f.ext, "dlc": f.dlc(), "data_hex": hex::encode_upper(f.data())});
            if f.rtr {
                p["rtr"] = json!(true);
            }
            out.push(self.frame("can", p, device_ts));
        }
        if f.rtr {
            return;
        }
        if self.j1939 && f.ext {
            let id = j1939::split(f.id);
            let da = id.da.unwrap_or(0xFF);
            let tp = match id.pgn {
                j1939::PGN_TP_CM => self.tp.on_cm(id.sa, da, f.data(), now_ms),
                j1939::PGN_TP_DT => self.tp.on_dt(id.sa, da, f.data(), now_ms),
                pgn => {
                    return self.j1939_message(
                        pgn,
                        id.sa,
                        Some(f.key()),
                        f.data(),
                        device_ts,
                        now_ms,
                        out,
                    )
                }
            };
            match tp {
                Some(TpEvent::Complete { pgn, sa, data, .. }) => {
                    self.j1939_message(pgn, sa, None, &data, device_ts, now_ms, out)
                }
                Some(TpEvent::Problem(detail)) => self.issues.push(("j1939_tp", detail)),
                None => {}
            }
            return;
        }
        match self.db.find(f.key()) {
            Some(i) => self.decode(i, f.data(), Some(f.id), None, device_ts, now_ms, out),
            None => self.unknown(f.key()),
        }
    }

    /// Expires stalled transport sessions (call now and then).
    pub fn tick(&mut self, now_ms: i64) {
        for ev in self.tp.expire(now_ms) {
            if let TpEvent::Problem(detail) = ev {
                self.issues.push(("j1939_tp", detail));
            }
        }
    }

    /// A J1939 message (from one frame, `key` set, or reassembled).
    #[allow(clippy::too_many_arguments)]
    fn j1939_message(
        &mut self,
        pgn: u32,
        sa: u8,
        key: Option<u32>,
        data: &[u8],
        device_ts: Option<i64>,
        now_ms: i64,
        out: &mut Vec<Frame>,
    ) {
        if pgn == j1939::PGN_DM1 {
            return self.dm1(sa, data, device_ts, now_ms, out);
        }
        if pgn == fms::PGN_VI {
            return self.vin(sa, data, device_ts, now_ms, out);
        }
        let id = key.map(|k| k & super::EFF_MAX);
        let found = key
            .and_then(|k| self.db.find(k))
            .or_else(|| self.by_pgn.get(&pgn).copied());
        match found {
            Some(i) => self.decode(i, data, id, Some((pgn, sa)), device_ts, now_ms, out),
            // A reassembled message has no id of its own: count it as priority 6 from `sa`.
            None => self
                .unknown(key.unwrap_or(super::key((6 << 26) | (pgn << 8) | u32::from(sa), true))),
        }
    }

    /// Decodes message `i` and journals the signals the rules let through.
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &mut self,
        i: usize,
        data: &[u8],
        id: Option<u32>,
        j1939: Option<(u32, u8)>,
        device_ts: Option<i64>,
        now_ms: i64,
        out: &mut Vec<Frame>,
    ) {
        self.decoded += 1;
        let m = &self.db.messages[i];
        self.readings.clear();
        self.out_of_range.clear();
        m.decode(
            data,
            &mut self.raws,
            &mut self.readings,
            &mut self.out_of_range,
        );
        for &s in &self.out_of_range {
            let sig = &m.signals[s];
            let (lo, hi) = sig.range.unwrap_or_default();
            let value = self
                .readings
                .iter()
                .find(|(i, _)| *i == s)
                .map(|(_, r)| format!("{r:?}"))
                .unwrap_or_default();
            self.issues.push((
                "out_of_range",
                format!("{}.{} = {value} outside [{lo}, {hi}]", m.name, sig.name),
            ));
        }
        let mut signals = Map::new();
        let mut units = Map::new();
        for (s, reading) in self.readings.drain(..) {
            if !self.collect.admit(i, s, &reading, now_ms) {
                continue;
            }
            let sig = &m.signals[s];
            let value = match reading {
                Reading::Name(name, _) => Value::from(&*name),
                Reading::Num(v) => {
                    if !sig.unit.is_empty() {
                        units.insert(sig.name.clone(), Value::from(sig.unit.as_str()));
                    }
                    number(v, sig.scaling.integral)
                }
            };
            signals.insert(sig.name.clone(), value);
        }
        if signals.is_empty() {
            return;
        }
        let mut p = Map::new();
        p.insert("message".into(), Value::from(m.name.as_str()));
        if let Some(id) = id {
            p.insert("id".into(), Value::from(id));
        }
        if let Some((pgn, sa)) = j1939 {
            p.insert("pgn".into(), Value::from(pgn));
            p.insert("sa".into(), Value::from(sa));
        }
        p.insert("signals".into(), Value::Object(signals));
        if !units.is_empty() {
            p.insert("units".into(), Value::Object(units));
        }
        out.push(self.frame("can", Value::Object(p), device_ts));
    }

    fn dm1(
        &mut self,
        sa: u8,
        data: &[u8],
        device_ts: Option<i64>,
        now_ms: i64,
        out: &mut Vec<Frame>,
    ) {
        let Some(dm1) = Dm1::parse(data) else {
            self.issues.push((
                "j1939_dm1",
                format!("DM1 of {} bytes from SA {sa:#04x}", data.len()),
            ));
            return;
        };
        self.decoded += 1;
        if repeat_due(&self.dm1_last, sa, &dm1, now_ms) {
            out.push(self.frame("dtc", dm1.payload(sa), device_ts));
            self.dm1_last.insert(sa, (dm1, now_ms));
        }
    }

    fn vin(
        &mut self,
        sa: u8,
        data: &[u8],
        device_ts: Option<i64>,
        now_ms: i64,
        out: &mut Vec<Frame>,
    ) {
        let Some(vin) = fms::vin(data) else {
            self.issues
                .push(("j1939_vin", format!("VI from SA {sa:#04x} is not a VIN")));
            return;
        };
        self.decoded += 1;
        if repeat_due(&self.vin_last, sa, &vin, now_ms) {
            let p = json!({"message": "VI", "pgn": fms::PGN_VI, "sa": sa,
                           "signals": {"VehicleIdentificationNumber": vin}});
            out.push(self.frame("can", p, device_ts));
            self.vin_last.insert(sa, (vin, now_ms));
        }
    }

    fn unknown(&mut self, key: u32) {
        self.unknown_total += 1;
        let n = self.unknown.len();
        match self.unknown.get_mut(&key) {
            Some(c) => *c += 1,
            None if n < UNKNOWN_IDS_MAX => {
                self.unknown.insert(key, 1);
            }
            None => self.unknown_other += 1,
        }
    }

    fn frame(&self, kind: &str, payload: Value, device_ts: Option<i64>) -> Frame {
        let mut f = Frame::new(&self.gateway, &self.source, &self.device, kind, payload);
        f.vehicle.clone_from(&self.vehicle);
        f.device_ts_ms = device_ts;
        f
    }

    /// What `/api/status` shows of this bus: messages known, decoded, held back by rules,
    /// unknown ids (the most frequent first), J1939 sessions.
    pub fn status(&self) -> Value {
        let mut top: Vec<(&u32, &u64)> = self.unknown.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<Value> = top
            .into_iter()
            .take(UNKNOWN_TOP)
            .map(|(k, n)| json!({"id": super::key_text(*k), "frames": n}))
            .collect();
        let mut s = json!({
            "dbc_messages": self.db.messages.len(),
            "decoded": self.decoded,
            "held_by_rules": self.collect.held,
            "unknown_frames": self.unknown_total,
            "unknown_ids": top,
        });
        if self.unknown_other > 0 {
            s["unknown_other"] = json!(self.unknown_other);
        }
        if self.j1939 {
            s["j1939"] =
                json!({"sessions": self.tp.open_sessions(), "reassembled": self.tp.completed});
        }
        s
    }
}

/// Whether a sender's DM1 or VIN is journaled: it changed, or a minute passed.
fn repeat_due<T: PartialEq>(last: &HashMap<u8, (T, i64)>, sa: u8, value: &T, now_ms: i64) -> bool {
    last.get(&sa)
        .is_none_or(|(v, t)| v != value || now_ms - t >= REPEAT_MS)
}

/// A physical value as JSON: an integer where the scaling makes it one.
fn number(v: f64, integral: bool) -> Value {
    if integral && v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

#[cfg(test)]
mod tests;
