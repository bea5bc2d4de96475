//! `fieldgate-chaos`: run the fault scenarios against a real gateway (see `scripts/chaos`).

use clap::Parser;
use fieldgate_chaos::report::Outcome;
use fieldgate_chaos::rig::{Ctx, Env, Guard};
use fieldgate_chaos::scenario::{self, Profile, Scenario};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// fieldgate's fault-injection suite: each scenario prints `name: PASS|FAIL figures...`.
#[derive(Parser)]
#[command(name = "fieldgate-chaos", version, about)]
struct Cli {
    /// `ci` (every scenario, short) or `full` (the published figures).
    #[arg(long, default_value = "ci")]
    profile: String,
    /// Run only these scenarios (comma-separated names; see --list).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// The gateway binary under test (default: `fieldgate` beside this program).
    #[arg(long)]
    fieldgate: Option<PathBuf>,
    /// mosquitto.
    #[arg(
        long,
        env = "FIELDGATE_TEST_MOSQUITTO",
        default_value = "/usr/sbin/mosquitto"
    )]
    mosquitto: PathBuf,
    /// SecantusDB launcher (default: $FIELDGATE_TEST_SECANTUSD or .venv-test/bin/secantusd-py).
    #[arg(long)]
    secantusd: Option<PathBuf>,
    /// A real MongoDB server (single host) to use instead of SecantusDB.
    #[arg(long, env = "FIELDGATE_TEST_MONGODB_URI")]
    mongodb_uri: Option<String>,
    /// Scratch directory (default: a fresh one under the system temp dir, removed after
    /// a run where every scenario passed).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Seed of the random moments (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
    // The MongoDB driver's rustls needs a process-wide provider, as in the gateway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fieldgate-chaos: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<bool> {
    let all = scenario::all();
    if cli.list {
        for s in &all {
            let known = s
                .known
                .map(|k| format!(" [known failure: {k}]"))
                .unwrap_or_default();
            println!("{:<16} {}{known}", s.name, s.what);
        }
        return Ok(true);
    }
    let profile = Profile::named(&cli.profile)
        .ok_or_else(|| anyhow::anyhow!("unknown profile {:?} (ci or full)", cli.profile))?;
    for name in &cli.only {
        anyhow::ensure!(
            all.iter().any(|s| s.name == name),
            "no scenario {name:?} (see --list)"
        );
    }
    let chosen: Vec<Scenario> = all
        .into_iter()
        .filter(|s| cli.only.is_empty() || cli.only.iter().any(|n| n == s.name))
        .collect();
    let fieldgate = match cli.fieldgate {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("fieldgate"),
    };
    anyhow::ensure!(
        fieldgate.is_file(),
        "no gateway binary at {} (cargo build --release builds it; or pass --fieldgate)",
        fieldgate.display()
    );
    let seed = cli
        .seed
        .unwrap_or_else(|| fieldgate::frame::now_ms() as u64);
    let scratch = cli.work.is_none();
    let work = cli.work.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fieldgate-chaos-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let env = Env {
        fieldgate: std::path::absolute(&fieldgate)?,
        mosquitto: cli.mosquitto,
        secantusd: cli.secantusd,
        mongo_uri: cli.mongodb_uri,
        work: work.clone(),
        seed,
    };
    println!(
        "fieldgate-chaos: profile {}, {} scenarios, seed {seed}, gateway {}, MongoDB {}, scratch {}",
        profile.name,
        chosen.len(),
        env.fieldgate.display(),
        if env.mongo_uri.is_some() { "external (FIELDGATE_TEST_MONGODB_URI)" } else { "SecantusDB" },
        work.display()
    );
    let t0 = Instant::now();
    let (mut passed, mut known) = (0, Vec::new());
    for s in &chosen {
        if run_one(&env, &profile, s) {
            passed += 1;
        } else if let Some(why) = s.known {
            known.push(format!("{} ({why})", s.name));
        }
    }
    println!(
        "fieldgate-chaos: {passed} of {} scenarios passed in {:.0} s (profile {})",
        chosen.len(),
        t0.elapsed().as_secs_f64(),
        profile.name
    );
    for k in &known {
        println!("fieldgate-chaos: KNOWN FAILURE, not failing the run: {k}");
    }
    let ok = passed + known.len() == chosen.len();
    if ok && scratch {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!("fieldgate-chaos: logs and data kept in {}", work.display());
    }
    Ok(ok)
}

/// Run one scenario on its own thread within its budget; print its verdict line.
fn run_one(env: &Env, profile: &Profile, s: &Scenario) -> bool {
    let budget = (s.budget)(profile);
    eprintln!("== {} ({}; budget {} s)", s.name, s.what, budget.as_secs());
    let guard = Arc::new(Guard::default());
    let (tx, rx) = mpsc::channel();
    let (env2, profile2, g, run, name) = (
        env.clone(),
        profile.clone(),
        Arc::clone(&guard),
        s.run,
        s.name,
    );
    let t0 = Instant::now();
    let spawned = std::thread::Builder::new()
        .name(format!("scenario-{name}"))
        .spawn(move || {
            let mut out = Outcome::default();
            let result = Ctx::new(&env2, name, g).and_then(|ctx| run(&ctx, &profile2, &mut out));
            if let Err(e) = result {
                out.fail(format!("{e:#}"));
            }
            let _ = tx.send(out);
        });
    let line = match spawned {
        Err(e) => format!("{}: FAIL why={:?}", s.name, format!("cannot start: {e}")),
        Ok(handle) => match rx.recv_timeout(budget) {
            Ok(out) => {
                let _ = handle.join();
                guard.finish();
                out.line(s.name, t0.elapsed().as_secs_f64())
            }
            Err(_) => {
                guard.put_down();
                // Its processes are dead: give it a moment to notice and clean up.
                let _ = rx.recv_timeout(Duration::from_secs(30));
                format!(
                    "{}: FAIL wall={:.0}s why=\"over its {} s budget: put down\"",
                    s.name,
                    t0.elapsed().as_secs_f64(),
                    budget.as_secs()
                )
            }
        },
    };
    let pass = line.starts_with(&format!("{}: PASS", s.name));
    match s.known {
        Some(why) if !pass => println!("{line} known_failure={why:?}"),
        Some(why) => println!("{line} (marked as a known failure: {why:?}; the mark can go)"),
        None => println!("{line}"),
    }
    pass
}
