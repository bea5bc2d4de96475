//! `fieldgate-bench`: measurements that print numbers (README quotes them).

use clap::{Parser, Subcommand};
use fieldgate_bench::{can, journal, mongo, mqtt, serial, ws};
use std::process::ExitCode;

/// fieldgate's benchmarks: each prints its numbers.
#[derive(Parser)]
#[command(name = "fieldgate-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Durable append throughput and disk bytes written per frame.
    Journal(journal::JournalArgs),
    /// MongoDB sink: backlog drain vs raw insert_many, and steady-state sync lag.
    Mongo(mongo::MongoArgs),
    /// Publish → WebSocket latency, fieldgate vs mosquitto's WebSocket listener.
    Ws(ws::WsArgs),
    /// MQTT QoS1 ingest into the durable journal vs a plain QoS1 subscriber, same stream.
    Mqtt(mqtt::MqttArgs),
    /// CPU % of one core used by a serial source reading NMEA at line rate over a pty.
    Serial(serial::SerialArgs),
    /// CAN decode + journal throughput, CPU at a bus rate over a pty, DBC memory.
    Can(can::CanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
    // The MongoDB driver's rustls needs a process-wide provider, as in the gateway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run = match cli.cmd {
        Cmd::Journal(a) => journal::run(a),
        Cmd::Mongo(a) => mongo::run(a),
        Cmd::Ws(a) => ws::run(a),
        Cmd::Mqtt(a) => mqtt::run(a),
        Cmd::Serial(a) => serial::run(a),
        Cmd::Can(a) => can::run(a),
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldgate-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
