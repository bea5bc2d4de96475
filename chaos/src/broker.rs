//! The MQTT broker of a scenario: Debian's mosquitto with persistence on (a restart keeps
//! the queued QoS1 messages of the gateway's persistent session) and no limit on that queue
//! (a broker that drops what it acknowledged would hide the gateway's losses behind its
//! own). Restarted gracefully (SIGTERM, so it saves its store) on the same port.

use crate::rig::Ctx;
use fieldgate_bench::broker::{free_port, Mosquitto};
use std::path::PathBuf;

/// A mosquitto that can be restarted.
pub struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    /// Its port on loopback.
    pub port: u16,
    running: Option<Mosquitto>,
}

impl Broker {
    /// Start a broker for the scenario.
    pub fn start(ctx: &Ctx) -> anyhow::Result<Broker> {
        let dir = ctx.path("mosquitto");
        std::fs::create_dir_all(&dir)?;
        let mut b = Broker {
            bin: ctx.env.mosquitto.clone(),
            dir,
            port: free_port()?,
            running: None,
        };
        b.resume()?;
        Ok(b)
    }

    fn conf(&self) -> String {
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
             persistence true\npersistence_location {}/\n\
             max_queued_messages 0\nmax_queued_bytes 0\n",
            self.port,
            self.dir.display()
        )
    }

    /// Stop it (SIGTERM: it writes its store and exits).
    pub fn stop(&mut self) {
        self.running = None;
    }

    /// Start it again on the same port and store; returns once it listens.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.running.is_none(), "broker already running");
        let conf = self.conf();
        self.running = Some(Mosquitto::start(&self.bin, &self.dir, &conf, &[self.port])?);
        Ok(())
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
