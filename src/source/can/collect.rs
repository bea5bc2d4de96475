//! Per-signal collection rules: which decoded values are worth journaling.
//!
//! A bus repeats most signals every 10–100 ms whether they changed or not; shipping all of
//! that over LTE costs money and tells the back office nothing new. A [`SignalRule`]
//! (`rules = [...]` of a `[[sources.can]]`) matches signals by name (`Signal` or
//! `Message.Signal`, `*` as wildcard; the first matching rule wins) and lets a value
//! through only if at least `min_period_ms` passed since the last one it let through, it
//! moved by at least `deadband`, and (`on_change`, meant for enums and switches) it
//! differs at all; `max_period_ms` sends it anyway after that long, so a steady value still
//! shows it is alive; `skip` drops the signal. Signals no rule matches are all kept.

use super::dbc::{Database, Reading};
use crate::config::ConfigError;
use serde::Deserialize;

/// One rule of `rules = [...]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRule {
    /// `Signal` or `Message.Signal`; `*` matches any run of characters.
    pub signal: String,
    /// Least time between two journaled values.
    #[serde(default)]
    pub min_period_ms: u64,
    /// Journal the value after this long even if it did not move.
    pub max_period_ms: Option<u64>,
    /// Least change (physical units) worth journaling.
    #[serde(default)]
    pub deadband: f64,
    /// Journal only values that differ from the last one journaled.
    #[serde(default)]
    pub on_change: bool,
    /// Never journal this signal.
    #[serde(default)]
    pub skip: bool,
}

impl SignalRule {
    /// Checks beyond types; `key` is this rule's path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.signal.is_empty() || self.signal.len() > 256 {
            return Err(ConfigError::invalid(
                format!("{key}.signal"),
                "expected a signal name or pattern of 1-256 characters",
            ));
        }
        if !self.deadband.is_finite() || self.deadband < 0.0 {
            return Err(ConfigError::invalid(
                format!("{key}.deadband"),
                format!("expected a non-negative number, got {}", self.deadband),
            ));
        }
        if let Some(max) = self.max_period_ms {
            if max < self.min_period_ms.max(1) {
                return Err(ConfigError::invalid(
                    format!("{key}.max_period_ms"),
                    format!(
                        "expected at least min_period_ms ({}), got {max}",
                        self.min_period_ms
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether this rule applies to `signal` of `message`.
    pub fn matches(&self, message: &str, signal: &str) -> bool {
        if self.signal.contains('.') {
            let full = format!("{message}.{signal}");
            glob(self.signal.as_bytes(), full.as_bytes())
        } else {
            glob(self.signal.as_bytes(), signal.as_bytes())
        }
    }
}

/// `*`-only glob match (iterative, linear in practice).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What was last let through for one signal.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Index of the rule that governs the signal.
    rule: Option<u16>,
    /// When a value was last let through (unix ms); `None` before the first.
    last_ms: Option<i64>,
    /// That value (enum names by their raw value).
    last: f64,
}

/// The rules of one source, resolved per signal of its database.
#[derive(Debug, Default)]
pub struct Collector {
    rules: Vec<SignalRule>,
    /// Per message, per signal.
    slots: Vec<Vec<Slot>>,
    /// Values the rules held back so far.
    pub held: u64,
}

impl Collector {
    /// Resolves `rules` against every signal of `db` (first match wins).
    pub fn new(rules: &[SignalRule], db: &Database) -> Collector {
        let slots = if rules.is_empty() {
            Vec::new()
        } else {
            db.messages
                .iter()
                .map(|m| {
                    m.signals
                        .iter()
                        .map(|s| Slot {
                            rule: rules
                                .iter()
                                .position(|r| r.matches(&m.name, &s.name))
                                .map(|i| i as u16),
                            ..Slot::default()
                        })
                        .collect()
                })
                .collect()
        };
        Collector {
            rules: rules.to_vec(),
            slots,
            held: 0,
        }
    }

    /// Whether signal `sig` of message `msg` with this reading at `now_ms` is journaled
    /// (and, if so, remembered as the last value).
    pub fn admit(&mut self, msg: usize, sig: usize, reading: &Reading, now_ms: i64) -> bool {
        let Some(slot) = self.slots.get_mut(msg).and_then(|m| m.get_mut(sig)) else {
            return true;
        };
        let Some(rule) = slot.rule.and_then(|r| self.rules.get(usize::from(r))) else {
            return true;
        };
        let value = match reading {
            Reading::Num(v) => *v,
            Reading::Name(_, raw) => *raw as f64,
        };
        let pass = match slot.last_ms {
            _ if rule.skip => false,
            None => true,
            Some(last_ms) => {
                let age = now_ms.saturating_sub(last_ms);
                let moved = (value - slot.last).abs();
                if age < rule.min_period_ms as i64 {
                    false
                } else if rule.max_period_ms.is_some_and(|max| age >= max as i64) {
                    true
                } else {
                    !(rule.on_change && moved == 0.0) && moved >= rule.deadband
                }
            }
        };
        if pass {
            slot.last_ms = Some(now_ms);
            slot.last = value;
        } else {
            self.held += 1;
        }
        pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> SignalRule {
        toml::from_str(text).expect("rule")
    }

    fn db() -> Database {
        let mut db = Database::default();
        let text = "VERSION \"\"\n\nBU_: ECU\n\nBO_ 256 ENGINE: 8 ECU\n SG_ EngineSpeed : 0|16@1+ (0.25,0) [0|16000] \"rpm\" Vector__XXX\n SG_ Gear : 16|4@1+ (1,0) [0|15] \"\" Vector__XXX\n SG_ Debug : 24|8@1+ (1,0) [0|0] \"\" Vector__XXX\n";
        db.add("test.dbc", text).expect("dbc");
        db
    }

    #[test]
    fn globs() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"Engine*", b"EngineSpeed"));
        assert!(glob(b"*Speed", b"EngineSpeed"));
        assert!(glob(b"E*g*e*d", b"EngineSpeed"));
        assert!(!glob(b"Engine", b"EngineSpeed"));
        assert!(!glob(b"*Temp*", b"EngineSpeed"));
        assert!(rule("signal = \"ENGINE.*\"").matches("ENGINE", "Gear"));
        assert!(!rule("signal = \"BODY.*\"").matches("ENGINE", "Gear"));
    }

    #[test]
    fn period_deadband_on_change_and_skip() {
        let rules = [
            rule("signal = \"EngineSpeed\"\nmin_period_ms = 100\ndeadband = 10.0\nmax_period_ms = 1000"),
            rule("signal = \"ENGINE.Gear\"\non_change = true"),
            rule("signal = \"Deb*\"\nskip = true"),
        ];
        let mut c = Collector::new(&rules, &db());
        let rpm = |v: f64| Reading::Num(v);
        assert!(c.admit(0, 0, &rpm(800.0), 0), "first value");
        assert!(!c.admit(0, 0, &rpm(2000.0), 50), "within min_period");
        assert!(!c.admit(0, 0, &rpm(805.0), 150), "inside the deadband");
        assert!(
            c.admit(0, 0, &rpm(811.0), 200),
            "moved by more than the deadband"
        );
        assert!(c.admit(0, 0, &rpm(811.0), 1200), "max_period passed");
        let gear = |raw: i64| Reading::Name("D".into(), raw);
        assert!(c.admit(0, 1, &gear(3), 0));
        assert!(!c.admit(0, 1, &gear(3), 10));
        assert!(c.admit(0, 1, &gear(1), 20));
        assert!(!c.admit(0, 2, &Reading::Num(1.0), 0), "skipped");
        assert_eq!(c.held, 4);
        // Without rules everything passes.
        let mut open = Collector::new(&[], &db());
        assert!((0..5).all(|t| open.admit(0, 0, &rpm(800.0), t)));
    }

    #[test]
    fn rule_values_are_checked() {
        assert!(rule("signal = \"x\"\ndeadband = -1.0")
            .validate("r")
            .is_err());
        assert!(rule("signal = \"\"").validate("r").is_err());
        let e = rule("signal = \"x\"\nmin_period_ms = 500\nmax_period_ms = 100")
            .validate("r")
            .expect_err("max < min");
        assert!(e.to_string().starts_with("r.max_period_ms"), "{e}");
        assert!(rule("signal = \"x\"\nmin_period_ms = 5")
            .validate("r")
            .is_ok());
    }
}
