//! The `fieldgate` command line: run, demo, check-config, keys, journal, tail, doctor.

mod keys_cli;
mod tail;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fieldgate::auth::Scope;
use fieldgate::config::{Config, GatewayConfig};
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::service::{self, RunOptions};
use fieldgate::source::sim::SimConfig;
use fieldgate::units::ByteSize;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Edge telemetry gateway: serial + MQTT in, durable journal, MongoDB sync, live relay.
#[derive(Parser)]
#[command(name = "fieldgate", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway from a config file.
    Run {
        /// Config file.
        #[arg(long, short, default_value = "/etc/fieldgate/fieldgate.toml")]
        config: PathBuf,
    },
    /// Run a self-contained demo: a simulated vehicle, a local journal, the API.
    Demo {
        /// API listen address.
        #[arg(long, default_value = "127.0.0.1:3004")]
        listen: SocketAddr,
        /// Journal directory.
        #[arg(long, default_value = "fieldgate-demo-data")]
        data: PathBuf,
        /// API key to accept (one is generated and printed when absent).
        #[arg(long, env = "FIELDGATE_API_KEY")]
        api_key: Option<String>,
        /// Sync the simulated vehicle to this MongoDB server.
        #[arg(long)]
        mongo_uri: Option<String>,
        /// Journal the simulated vehicle directly instead of through pseudo-terminals
        /// (e.g. under qemu-user, where the pty-fed serial sources do not open).
        #[arg(long)]
        direct: bool,
    },
    /// Validate a config file: exit 0, or name the bad key and why.
    CheckConfig {
        /// Config file.
        file: PathBuf,
    },
    /// Manage API keys (stored hashed in the journal).
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
        #[command(flatten)]
        at: JournalAt,
    },
    /// Inspect the journal.
    Journal {
        #[command(subcommand)]
        cmd: JournalCmd,
        #[command(flatten)]
        at: JournalAt,
    },
    /// Watch live frames from a gateway (filters, backfill, JSON lines).
    Tail(tail::TailArgs),
    /// Check an installation part by part (config, journal, ports, brokers, MongoDB,
    /// listener, clock): one line each with a verdict and the fix; exit 0 when none failed.
    Doctor(fieldgate::doctor::DoctorArgs),
}

/// The config `keys` and `journal` read when given neither `--config` nor `--data`.
const DEFAULT_CONFIG: &str = "/etc/fieldgate/fieldgate.toml";

/// Where the journal is: from a config file or a directory.
#[derive(clap::Args)]
struct JournalAt {
    /// Config file naming the journal (default: /etc/fieldgate/fieldgate.toml, if it exists).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Journal directory (overrides --config).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key and print it (the only time it is shown).
    Add {
        /// Who or what uses the key.
        name: String,
        /// Comma-separated scopes: read, write, publish, control, admin.
        #[arg(long, value_delimiter = ',', default_value = "read")]
        scopes: Vec<Scope>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke keys by id or name.
    Revoke {
        /// Key id (from `keys list`) or name.
        which: String,
    },
}

#[derive(Subcommand)]
enum JournalCmd {
    /// Print journal statistics as JSON.
    Stats,
    /// Print frames as JSON lines.
    Export {
        /// First seq to print.
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// Most frames to print.
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
    },
}

fn init_logging(level: &str) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // `Targets` (`info`, `fieldgate=debug,sled=warn`) rather than `EnvFilter`: the same
    // directives installers use, without the regex engine EnvFilter's span-field filters
    // pull in (~190 KB of code, most of it resident once mapped).
    let env = std::env::var("RUST_LOG").ok();
    let filter = [env.as_deref(), Some(level)]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .find_map(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
}

impl JournalAt {
    fn journal_config(&self) -> anyhow::Result<JournalConfig> {
        let default = std::path::Path::new(DEFAULT_CONFIG);
        let config = match (&self.config, &self.data) {
            (Some(path), _) => Some(path.as_path()),
            (None, Some(_)) => None,
            (None, None) if default.exists() => Some(default),
            (None, None) => anyhow::bail!(
                "which journal? {DEFAULT_CONFIG} does not exist here: give the gateway's \
                 config with --config FILE, or a journal directory with --data DIR"
            ),
        };
        let mut jc = match config {
            Some(path) => Config::load(path)?.journal,
            None => JournalConfig::default(),
        };
        if let Some(d) = &self.data {
            jc.path = d.clone();
        }
        Ok(jc)
    }
}

/// The demo's built-in configuration.
fn demo_config(listen: SocketAddr, data: PathBuf, direct: bool) -> Config {
    let mut cfg = Config {
        gateway: GatewayConfig { id: "demo".into() },
        journal: JournalConfig {
            path: data,
            max_bytes: ByteSize(64 << 20),
            ..JournalConfig::default()
        },
        listen: Default::default(),
        log: Default::default(),
        mongo: None,
        sources: Default::default(),
    };
    cfg.listen.address = listen;
    cfg.sources.sim.push(SimConfig::default());
    // The simulated vehicle speaks NMEA and ELM327 on pseudo-terminals, published as links
    // in a per-run directory; the serial and OBD sources read them like real devices.
    let links = std::env::temp_dir().join(format!("fieldgate-demo-{}", std::process::id()));
    if direct {
        return cfg;
    }
    if let Err(e) = fieldgate::source::sim_devices::wire_demo(&mut cfg.sources, &links) {
        tracing::warn!(error = %e, "demo falls back to the in-process simulator");
    }
    // [demo sources]
    cfg
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS provider for the whole binary (MQTT and MongoDB both use rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fieldgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                println!(
                    "{}: ok (gateway {}, {} sources, mongo {})",
                    file.display(),
                    cfg.gateway.id,
                    cfg.sources.names().len(),
                    if cfg.mongo.is_some() { "on" } else { "off" }
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                Ok(ExitCode::from(2))
            }
        },
        Cmd::Run { config } => {
            let cfg = Config::load(&config)?;
            init_logging(&cfg.log.level);
            runtime()?.block_on(service::run(cfg, RunOptions::default()))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            listen,
            data,
            api_key,
            mongo_uri,
            direct,
        } => {
            init_logging("info");
            let mut cfg = demo_config(listen, data, direct);
            if let Some(uri) = mongo_uri {
                cfg.mongo = Some(fieldgate::sink::mongo::MongoConfig::with_uri(uri));
            }
            cfg.apply_env(|k| std::env::var(k).ok())?;
            let key = api_key.unwrap_or_else(fieldgate::auth::generate_key);
            let mut out = std::io::stdout();
            writeln!(
                out,
                "fieldgate demo: simulated vehicle, journal in {}",
                cfg.journal.path.display()
            )?;
            writeln!(out, "API key: {key}")?;
            writeln!(
                out,
                "Status:  curl -H 'x-api-key: {key}' http://{}/api/status",
                cfg.listen.address
            )?;
            writeln!(out, "Stop with Ctrl-C.")?;
            out.flush()?;
            let opts = RunOptions {
                ephemeral_key: Some(key),
            };
            runtime()?.block_on(service::run(cfg, opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Keys { cmd, at } => {
            let action = match cmd {
                KeysCmd::Add { name, scopes } => keys_cli::Action::Add { name, scopes },
                KeysCmd::List => keys_cli::Action::List,
                KeysCmd::Revoke { which } => keys_cli::Action::Revoke { which },
            };
            keys_cli::run(at.journal_config()?, action)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Journal { cmd, at } => {
            let journal = Journal::open(at.journal_config()?)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match cmd {
                JournalCmd::Stats => {
                    writeln!(out, "{}", serde_json::to_string_pretty(&journal.stats())?)?;
                }
                JournalCmd::Export { from_seq, limit } => {
                    let mut next = from_seq;
                    let mut left = limit;
                    while left > 0 {
                        // Payloads as stored text, 4 MiB at a time: no `Value` trees.
                        let chunk = journal.range_raw(next, left.min(1000) as usize, 4 << 20);
                        let Some(last) = chunk.last().map(|f| f.seq) else {
                            break;
                        };
                        for f in &chunk {
                            writeln!(out, "{}", serde_json::to_string(f)?)?;
                        }
                        left -= chunk.len() as u64;
                        next = last + 1;
                    }
                }
            }
            out.flush()?;
            journal.close()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Doctor(args) => {
            let report = runtime()?.block_on(fieldgate::doctor::run(&args));
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        Cmd::Tail(args) => {
            runtime()?.block_on(tail::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
