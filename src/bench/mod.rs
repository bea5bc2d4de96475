//! `fieldgate bench ...`: measurements that print numbers (README quotes them).

mod broker;
mod journal;
mod mongo;
mod mqtt;
mod scrape;
mod serial;
mod ws;

use clap::Subcommand;

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCmd {
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
    // [bench variants]
}

/// Run a benchmark.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Journal(a) => journal::run(a),
        BenchCmd::Mongo(a) => mongo::run(a),
        BenchCmd::Ws(a) => ws::run(a),
        BenchCmd::Mqtt(a) => mqtt::run(a),
        BenchCmd::Serial(a) => serial::run(a),
        // [bench dispatch]
    }
}
