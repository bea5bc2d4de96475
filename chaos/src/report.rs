//! A scenario's verdict: the figures it measured and the checks that failed, printed as the
//! one line `name: PASS|FAIL key=value ...` that CI and docs/reliability.md read.

use std::fmt::Display;

/// What one scenario found.
#[derive(Debug, Default)]
pub struct Outcome {
    figures: Vec<(String, String)>,
    failures: Vec<String>,
}

impl Outcome {
    /// Record a figure (printed in order, as `key=value`).
    pub fn figure(&mut self, key: &str, value: impl Display) {
        let value = value.to_string();
        match self.figures.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.figures.push((key.to_string(), value)),
        }
    }

    /// A figure in seconds with millisecond precision.
    pub fn secs(&mut self, key: &str, s: f64) {
        self.figure(key, format!("{s:.3}s"));
    }

    /// Fail the scenario unless `ok`; `why` says what was expected and what was seen.
    pub fn check(&mut self, ok: bool, why: impl FnOnce() -> String) -> bool {
        if !ok {
            self.fail(why());
        }
        ok
    }

    /// Fail the scenario with a reason.
    pub fn fail(&mut self, why: impl Into<String>) {
        let why = why.into();
        eprintln!("  check failed: {why}");
        self.failures.push(why);
    }

    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The reasons it failed.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// The verdict line: `name: PASS k=v ...`, or `name: FAIL k=v ... why="first reason"`.
    pub fn line(&self, name: &str, wall_s: f64) -> String {
        let mut s = format!("{name}: {}", if self.passed() { "PASS" } else { "FAIL" });
        for (k, v) in &self.figures {
            s.push_str(&format!(" {k}={v}"));
        }
        s.push_str(&format!(" wall={wall_s:.0}s"));
        if let Some(first) = self.failures.first() {
            let more = match self.failures.len() {
                1 => String::new(),
                n => format!(" (+{} more)", n - 1),
            };
            s.push_str(&format!(" why={:?}", format!("{first}{more}")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn one_line_with_figures_in_order_and_the_first_failure() {
        let mut o = Outcome::default();
        o.figure("trials", 10);
        o.secs("resume", 1.23456);
        o.figure("trials", 11);
        assert_eq!(
            o.line("kill9", 42.4),
            "kill9: PASS trials=11 resume=1.235s wall=42s"
        );
        o.check(1 + 1 == 3, || "lost=2".into());
        o.check(false, || "seq reused".into());
        assert!(!o.passed());
        assert_eq!(
            o.line("kill9", 42.6),
            "kill9: FAIL trials=11 resume=1.235s wall=43s why=\"lost=2 (+1 more)\""
        );
    }
}
