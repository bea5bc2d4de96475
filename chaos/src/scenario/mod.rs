//! The scenarios, in the order they run, and the figures of each profile.

mod cap;
mod disk_full;
mod ingest;
mod kill;
mod mongo;
mod power;
mod slow;
mod stack;
mod start;

use crate::report::Outcome;
use crate::rig::Ctx;
use std::time::Duration;

/// How hard each scenario pushes: `ci` (all of them in under 10 minutes on a 2-core box)
/// or `full` (the published figures).
#[derive(Debug, Clone)]
pub struct Profile {
    /// `ci` or `full`.
    pub name: &'static str,
    /// kill -9 trials.
    pub kill_trials: u32,
    /// MongoDB outage length.
    pub outage: Duration,
    /// MongoDB SIGKILLs mid-batch.
    pub mongo_kills: u32,
    /// Broker restarts and serial unplugs (each).
    pub ingest_faults: u32,
    /// Length of the journal-cap run.
    pub cap_run: Duration,
    /// How long the disk stays full.
    pub disk_full: Duration,
    /// Length of each slow-consumer phase, and how many pairs of phases.
    pub slow_phase: Duration,
    /// Pairs of (without, with) stalled clients.
    pub slow_rounds: u32,
    /// Power cuts.
    pub power_cuts: u32,
}

impl Profile {
    /// The profile called `name`.
    pub fn named(name: &str) -> Option<Profile> {
        match name {
            "ci" => Some(Profile {
                name: "ci",
                kill_trials: 10,
                outage: Duration::from_secs(60),
                mongo_kills: 5,
                ingest_faults: 3,
                cap_run: Duration::from_secs(30),
                disk_full: Duration::from_secs(10),
                slow_phase: Duration::from_secs(20),
                slow_rounds: 1,
                power_cuts: 3,
            }),
            "full" => Some(Profile {
                name: "full",
                kill_trials: 100,
                outage: Duration::from_secs(600),
                mongo_kills: 20,
                ingest_faults: 10,
                cap_run: Duration::from_secs(300),
                disk_full: Duration::from_secs(60),
                slow_phase: Duration::from_secs(30),
                slow_rounds: 3,
                power_cuts: 20,
            }),
            _ => None,
        }
    }
}

/// A scenario: its name, its time budget under a profile, and its body.
pub struct Scenario {
    /// The name on its verdict line.
    pub name: &'static str,
    /// What it shows, for `--list`.
    pub what: &'static str,
    /// Its time budget under a profile (past it the runner puts it down: FAIL).
    pub budget: fn(&Profile) -> Duration,
    /// The scenario.
    pub run: fn(&Ctx, &Profile, &mut Outcome) -> anyhow::Result<()>,
    /// A hole this scenario is known to find and the issue it belongs to: its FAIL is
    /// printed as usual, marked `known_failure=...`, and does not fail the run.
    pub known: Option<&'static str>,
}

/// Every scenario, in running order.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "kill9",
            what: "kill -9 of the gateway at random moments during QoS1 ingest and MongoDB sync",
            budget: |p| Duration::from_secs(120 + 10 * u64::from(p.kill_trials)),
            run: kill::run,
            known: None,
        },
        Scenario {
            name: "mongo-outage",
            what: "MongoDB down for a long time at 1,000 frames/s, then back",
            budget: |p| Duration::from_secs(300) + p.outage * 4,
            run: mongo::outage,
            known: None,
        },
        Scenario {
            name: "mongo-kill",
            what: "MongoDB killed -9 mid-batch and restarted, again and again",
            budget: |p| Duration::from_secs(240 + 20 * u64::from(p.mongo_kills)),
            run: mongo::kills,
            known: None,
        },
        Scenario {
            name: "ingest-faults",
            what: "broker restarts and serial unplug/replug during ingest",
            budget: |p| Duration::from_secs(120 + 30 * u64::from(p.ingest_faults)),
            run: ingest::run,
            known: None,
        },
        Scenario {
            name: "journal-cap",
            what: "the journal's byte cap reached during a long MongoDB outage",
            budget: |p| Duration::from_secs(120) + p.cap_run,
            run: cap::run,
            known: None,
        },
        Scenario {
            name: "disk-full",
            what: "the journal's filesystem fills up while running, then space returns",
            budget: |p| Duration::from_secs(180) + p.disk_full,
            run: disk_full::run,
            known: Some(
                "issue 17: the journal stays failed after ENOSPC until the process restarts",
            ),
        },
        Scenario {
            name: "slow-consumers",
            what: "200 WebSocket clients, 20 of them never reading",
            budget: |p| Duration::from_secs(120) + p.slow_phase * 2 * p.slow_rounds * 2,
            run: slow::run,
            known: None,
        },
        Scenario {
            name: "bad-start",
            what:
                "a corrupt journal at start (quarantined) and one owned by another user (refused)",
            budget: |_| Duration::from_secs(180),
            run: start::run,
            known: None,
        },
        Scenario {
            name: "power-cut",
            what: "the block device's content at a kill (no page cache), mounted and run on",
            budget: |p| Duration::from_secs(120 + 30 * u64::from(p.power_cuts)),
            run: power::run,
            known: None,
        },
    ]
}

/// A database name for one scenario run.
pub fn database(tag: &str) -> String {
    format!(
        "chaos_{tag}_{}_{}",
        std::process::id(),
        fieldgate::frame::now_ms() % 1_000_000_000
    )
}
