//! `fieldgate bench ...`: measurements that print numbers (README quotes them).

mod journal;

use clap::Subcommand;

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// Durable append throughput and disk bytes written per frame.
    Journal(journal::JournalArgs),
    // [bench variants]
}

/// Run a benchmark.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Journal(a) => journal::run(a),
        // [bench dispatch]
    }
}
