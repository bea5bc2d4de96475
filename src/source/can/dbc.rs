//! DBC files: what the frames of a bus mean, compiled for decoding.
//!
//! Files are parsed by the `can-dbc` crate (a maintained pest grammar that reads every
//! file of the opendbc collection); this module turns its syntax tree into a
//! [`Database`]: per message the bit [`Layout`] of each signal, its scaling, range, unit,
//! value table (enum names) and multiplexing (`M`/`mN` and extended `SG_MUL_VAL_`, switches
//! first), looked up by id in one hash probe. The tree is dropped once compiled.
//!
//! Errors name the file and, where the parser knows it, the line: a fleet engineer fixes
//! `vehicle.dbc:1234` without reading code. Problems that leave the rest of a file usable
//! (a signal that does not fit its message, a multiplexed signal without a switch) are
//! warnings: the signal is skipped, the rest decodes. Files that are not UTF-8 are read as
//! Windows-1252, as Vector's tools write them.

use super::decode::{self, Layout, Order, Scaling, Value};
use can_dbc::{ByteOrder, MultiplexIndicator, NumericValue, SignalExtendedValueType, ValueType};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Largest DBC file read.
const MAX_FILE: u64 = 32 << 20;
/// Deepest chain of nested multiplexors followed.
const MAX_MUX_DEPTH: usize = 8;
/// Vector's placeholder message for signals that belong to no message (id 0xC0000000).
const INDEPENDENT_SIGNALS: &str = "VECTOR__INDEPENDENT_SIG_MSG";

/// A DBC file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DbcError {
    /// Unreadable or too large.
    #[error("{path}: {message}")]
    Read {
        /// File.
        path: String,
        /// Why.
        message: String,
    },
    /// Not valid DBC syntax.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// Valid syntax the parser could not turn into a definition.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// File.
        path: String,
        /// Line, when the offending text could be found.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// When a multiplexed signal is present.
#[derive(Debug, Clone, PartialEq)]
pub enum Mux {
    /// Always.
    Always,
    /// When the raw value of signal `switch` (an index into the message's signals) is in
    /// one of `ranges` (inclusive).
    When {
        /// Index of the multiplexor signal.
        switch: usize,
        /// Inclusive raw-value ranges that select this signal.
        ranges: Box<[(u64, u64)]>,
    },
}

/// One signal, ready to decode.
#[derive(Debug, Clone)]
pub struct SignalPlan {
    /// Signal name.
    pub name: String,
    /// Unit (may be empty).
    pub unit: String,
    /// Where its bits are.
    pub layout: Layout,
    /// How the bits are read.
    pub value: Value,
    /// Physical = raw × factor + offset.
    pub scaling: Scaling,
    /// Declared range, if any (`[0|0]` declares none).
    pub range: Option<(f64, f64)>,
    /// Enum names by raw value, sorted.
    pub names: Box<[(i64, Arc<str>)]>,
    /// Multiplexing.
    pub mux: Mux,
}

/// One message, ready to decode.
#[derive(Debug, Clone)]
pub struct MessagePlan {
    /// Message name.
    pub name: String,
    /// [`super::key`] of its id.
    pub key: u32,
    /// Signals, in file order.
    pub signals: Vec<SignalPlan>,
    /// Signal indices in decode order: every switch before the signals it selects.
    pub order: Box<[usize]>,
    /// J1939 semantics: values in the "error" and "not available" ranges are omitted.
    pub j1939: bool,
}

/// A decoded signal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A number (physical value).
    Num(f64),
    /// A value-table name, with the raw value it stands for.
    Name(Arc<str>, i64),
}

/// Every message of a source's DBC files.
#[derive(Debug, Clone, Default)]
pub struct Database {
    /// All messages; indices are stable.
    pub messages: Vec<MessagePlan>,
    by_key: HashMap<u32, usize>,
    /// Problems that skipped a signal or message but left the file usable.
    pub warnings: Vec<String>,
}

impl Database {
    /// Reads and compiles `files` (paths) and `embedded` (name, text) DBCs; a later file's
    /// message replaces an earlier one with the same id.
    pub fn load(
        files: &[impl AsRef<Path>],
        embedded: &[(&str, &str)],
    ) -> Result<Database, DbcError> {
        let mut db = Database::default();
        for path in files {
            let path = path.as_ref();
            let text = read(path)?;
            db.add(&path.display().to_string(), &text)?;
        }
        for (name, text) in embedded {
            db.add(name, text)?;
        }
        Ok(db)
    }

    /// Parses one file's text and adds its messages.
    pub fn add(&mut self, path: &str, text: &str) -> Result<(), DbcError> {
        let parsed = can_dbc::Dbc::try_from(text).map_err(|e| parse_error(path, text, e))?;
        for m in &parsed.messages {
            if m.name == INDEPENDENT_SIGNALS {
                continue;
            }
            let plan = compile(&parsed, m, &mut self.warnings, path);
            self.insert(plan, path);
        }
        Ok(())
    }

    /// Adds a compiled message (replacing one with the same key).
    pub fn insert(&mut self, plan: MessagePlan, origin: &str) {
        match self.by_key.get(&plan.key) {
            Some(&i) => {
                self.warnings.push(format!(
                    "{origin}: message {} ({}) replaces {} from an earlier file",
                    plan.name,
                    super::key_text(plan.key),
                    self.messages[i].name
                ));
                self.messages[i] = plan;
            }
            None => {
                self.by_key.insert(plan.key, self.messages.len());
                self.messages.push(plan);
            }
        }
    }

    /// The index of the message with this [`super::key`].
    pub fn find(&self, key: u32) -> Option<usize> {
        self.by_key.get(&key).copied()
    }

    /// Number of signals over all messages.
    pub fn signal_count(&self) -> usize {
        self.messages.iter().map(|m| m.signals.len()).sum()
    }
}

/// Reads a DBC file as text (UTF-8, else Windows-1252).
fn read(path: &Path) -> Result<String, DbcError> {
    let err = |message: String| DbcError::Read {
        path: path.display().to_string(),
        message,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .len();
    if len > MAX_FILE {
        return Err(err(format!(
            "{len} bytes; a DBC file may have at most {MAX_FILE}"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => Ok(cp1252::decode(e.as_bytes())),
    }
}

/// The parser's error, with a line wherever one can be found.
fn parse_error(path: &str, text: &str, e: can_dbc::DbcError) -> DbcError {
    use can_dbc::DbcError as E;
    if let E::Pest(p) = &e {
        let (line, column) = match p.line_col {
            pest::error::LineColLocation::Pos(lc) => lc,
            pest::error::LineColLocation::Span(lc, _) => lc,
        };
        return DbcError::Syntax {
            path: path.into(),
            line,
            column,
            message: p.variant.message().into_owned(),
        };
    }
    // The other errors carry the offending text; its first occurrence is the best guess.
    let needle = match &e {
        E::InvalidFloat(s)
        | E::InvalidInt(s)
        | E::InvalidUint(s)
        | E::InvalidNumericValue(s)
        | E::UnknownMultiplexIndicator(s) => Some(s.clone()),
        E::MessageIdOutOfRange(id) => Some(format!("BO_ {id}")),
        _ => None,
    };
    let line = needle
        .filter(|n| !n.is_empty())
        .and_then(|n| text.find(&n))
        .map(|at| text[..at].matches('\n').count() + 1);
    DbcError::Invalid {
        path: path.into(),
        line,
        message: e.to_string(),
    }
}

fn float(v: &NumericValue) -> f64 {
    match *v {
        NumericValue::Uint(u) => u as f64,
        NumericValue::Int(i) => i as f64,
        NumericValue::Double(d) => d,
    }
}

/// Compiles one message; signals that cannot be decoded are skipped with a warning.
fn compile(
    db: &can_dbc::Dbc,
    m: &can_dbc::Message,
    warnings: &mut Vec<String>,
    path: &str,
) -> MessagePlan {
    let mut signals = Vec::with_capacity(m.signals.len());
    // (index in `signals`, indicator, extended multiplexing of this signal)
    let mut kept = Vec::with_capacity(m.signals.len());
    for s in &m.signals {
        let order = match s.byte_order {
            ByteOrder::LittleEndian => Order::Intel,
            ByteOrder::BigEndian => Order::Motorola,
        };
        let Some(layout) = Layout::new(s.start_bit, s.size, order) else {
            warnings.push(format!(
                "{path}: signal {}.{} ({}|{}) does not fit in 64 bytes; skipped",
                m.name, s.name, s.start_bit, s.size
            ));
            continue;
        };
        let value = match (
            db.extended_value_type_for_signal(m.id, &s.name),
            s.value_type,
        ) {
            (Some(SignalExtendedValueType::IEEEfloat32Bit), _) if s.size == 32 => Value::F32,
            (Some(SignalExtendedValueType::IEEEdouble64bit), _) if s.size == 64 => Value::F64,
            (_, ValueType::Signed) => Value::Signed,
            (_, ValueType::Unsigned) => Value::Unsigned,
        };
        let (min, max) = (float(&s.min), float(&s.max));
        let mut names: Vec<(i64, Arc<str>)> = db
            .value_descriptions_for_signal(m.id, &s.name)
            .unwrap_or_default()
            .iter()
            .map(|v| (v.id, Arc::from(v.description.as_str())))
            .collect();
        names.sort_by_key(|(v, _)| *v);
        names.dedup_by_key(|(v, _)| *v);
        kept.push((signals.len(), s.multiplexer_indicator));
        signals.push(SignalPlan {
            name: s.name.clone(),
            unit: s.unit.clone(),
            layout,
            value,
            scaling: Scaling::new(s.factor, s.offset),
            range: (min < max).then_some((min, max)),
            names: names.into_boxed_slice(),
            mux: Mux::Always,
        });
    }
    let index: HashMap<String, usize> = signals
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    // The plain `M` switch (or the only switch) serves `mN` signals without SG_MUL_VAL_.
    let switches: Vec<usize> = kept
        .iter()
        .filter(|(_, ind)| {
            matches!(
                ind,
                MultiplexIndicator::Multiplexor
                    | MultiplexIndicator::MultiplexorAndMultiplexedSignal(_)
            )
        })
        .map(|(i, _)| *i)
        .collect();
    let plain_switch = kept
        .iter()
        .find(|(_, ind)| *ind == MultiplexIndicator::Multiplexor)
        .map(|(i, _)| *i)
        .or_else(|| (switches.len() == 1).then(|| switches[0]));
    let mut unusable = vec![false; signals.len()];
    for (i, ind) in &kept {
        let selector = match ind {
            MultiplexIndicator::MultiplexedSignal(v)
            | MultiplexIndicator::MultiplexorAndMultiplexedSignal(v) => *v,
            _ => continue,
        };
        let extended = db
            .extended_multiplex
            .iter()
            .find(|x| x.message_id == m.id && x.signal_name == signals[*i].name);
        let mux = match extended {
            Some(x) => index.get(&x.multiplexor_signal_name).map(|&sw| Mux::When {
                switch: sw,
                ranges: x
                    .mappings
                    .iter()
                    .map(|r| (r.min_value, r.max_value))
                    .collect(),
            }),
            None => plain_switch.filter(|sw| sw != i).map(|sw| Mux::When {
                switch: sw,
                ranges: Box::new([(selector, selector)]),
            }),
        };
        match mux {
            Some(mux) => signals[*i].mux = mux,
            None => {
                warnings.push(format!(
                    "{path}: multiplexed signal {}.{} has no multiplexor; skipped",
                    m.name, signals[*i].name
                ));
                unusable[*i] = true;
            }
        }
    }
    let order = decode_order(&signals, &mut unusable, warnings, path, &m.name);
    MessagePlan {
        name: m.name.clone(),
        key: m.id.raw(),
        signals,
        order,
        j1939: false,
    }
}

/// Signal indices sorted so that every switch comes before what it selects; signals in a
/// switch cycle or too deep a chain are left out.
fn decode_order(
    signals: &[SignalPlan],
    unusable: &mut [bool],
    warnings: &mut Vec<String>,
    path: &str,
    message: &str,
) -> Box<[usize]> {
    let depth = |mut i: usize| -> Option<usize> {
        for d in 0..=MAX_MUX_DEPTH {
            match &signals[i].mux {
                Mux::Always => return Some(d),
                Mux::When { switch, .. } => i = *switch,
            }
        }
        None
    };
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(signals.len());
    for i in 0..signals.len() {
        if unusable[i] {
            continue;
        }
        match depth(i) {
            Some(d) => order.push((d, i)),
            None => {
                unusable[i] = true;
                warnings.push(format!(
                    "{path}: signal {message}.{} sits in a multiplexor cycle; skipped",
                    signals[i].name
                ));
            }
        }
    }
    order.sort();
    order.into_iter().map(|(_, i)| i).collect()
}

impl MessagePlan {
    /// Decodes `data` into `out` (signal index, reading); `raws` is scratch space. Signals
    /// the data is too short for, whose multiplexor does not select them, or (J1939) whose
    /// value is "error" or "not available" are left out. Signals outside their declared
    /// range are reported and also listed in `out_of_range`.
    pub fn decode(
        &self,
        data: &[u8],
        raws: &mut Vec<Option<u64>>,
        out: &mut Vec<(usize, Reading)>,
        out_of_range: &mut Vec<usize>,
    ) {
        raws.clear();
        raws.resize(self.signals.len(), None);
        for &i in self.order.iter() {
            let s = &self.signals[i];
            if let Mux::When { switch, ranges } = &s.mux {
                let Some(sel) = raws[*switch] else { continue };
                if !ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&sel)) {
                    continue;
                }
            }
            let Some(raw) = s.layout.extract(data) else {
                continue;
            };
            raws[i] = Some(raw);
            if self.j1939
                && s.value == Value::Unsigned
                && super::j1939::not_a_value(raw, s.layout.size())
            {
                continue;
            }
            let int = match s.value {
                Value::Signed => decode::signed(raw, s.layout.size()),
                _ => raw as i64,
            };
            if let Ok(at) = s.names.binary_search_by_key(&int, |(v, _)| *v) {
                out.push((i, Reading::Name(Arc::clone(&s.names[at].1), int)));
                continue;
            }
            let n = decode::number(raw, s.layout.size(), s.value);
            let v = match s.value {
                // A float signal keeps its precision; integers round to their resolution.
                Value::F32 | Value::F64 => n * s.scaling.factor + s.scaling.offset,
                Value::Signed | Value::Unsigned => s.scaling.apply(n),
            };
            if let Some((lo, hi)) = s.range {
                // Half a step of slack: the declared range is often the rounded extreme.
                let slack = s.scaling.factor.abs() / 2.0;
                if v < lo - slack || v > hi + slack {
                    out_of_range.push(i);
                }
            }
            out.push((i, Reading::Num(v)));
        }
    }

    /// Encodes physical values (by signal name) into a zeroed message of `len` bytes; the
    /// simulator's and tests' inverse of [`MessagePlan::decode`]. Names it does not know are
    /// ignored; enum names may be given as their raw value.
    pub fn encode(&self, len: usize, values: &[(&str, f64)]) -> Vec<u8> {
        let mut data = vec![0u8; len];
        for (name, v) in values {
            let Some(s) = self.signals.iter().find(|s| s.name == *name) else {
                continue;
            };
            let raw = match s.value {
                Value::F32 => u64::from((*v as f32).to_bits()),
                Value::F64 => v.to_bits(),
                Value::Signed => s.scaling.raw(*v) as i64 as u64,
                Value::Unsigned => s.scaling.raw(*v).max(0.0) as u64,
            };
            s.layout.insert(&mut data, raw);
        }
        data
    }
}

mod cp1252;
#[cfg(test)]
pub(crate) mod tests;
