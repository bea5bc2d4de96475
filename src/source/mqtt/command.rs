//! `command`s for MQTT devices: published to the source's `command_topic` on its broker.
//!
//! Only devices the config names in `command_devices` (ids or `*` patterns) take commands,
//! and only once they have been seen on this broker (that is when their `{vehicle}` is
//! known). All of a source's devices share one channel and one task that publishes; the
//! per-device state is one route entry and the device's last vehicle, bounded by the
//! source's `max_devices`.

use crate::command::{glob_match, Command, CommandRoutes};
use crate::frame::Frame;
use crate::sync::lock;
use rumqttc::{AsyncClient, QoS};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tracing::Instrument;

/// Commands queued per source before `command` reports the queue full.
const QUEUE: usize = 64;

/// The last vehicle each routed device was seen with.
type Vehicles = Arc<Mutex<HashMap<String, Option<String>>>>;

/// One MQTT source's command routing: registers allowed devices as they appear.
pub struct Commands {
    source: String,
    allow: Vec<String>,
    routes: CommandRoutes,
    tx: mpsc::Sender<Command>,
    /// Devices already looked at (routed or not), with the vehicle last recorded.
    seen: HashMap<String, Option<String>>,
    vehicles: Vehicles,
}

impl Commands {
    /// Start the source's command task, if it has a `command_topic`.
    pub fn start(
        source: &str,
        topic: Option<&str>,
        allow: &[String],
        client: &AsyncClient,
        routes: &CommandRoutes,
    ) -> Option<Commands> {
        let pattern = topic?.to_string();
        let (tx, rx) = mpsc::channel(QUEUE);
        let vehicles = Vehicles::default();
        tokio::spawn(publish(pattern, rx, client.clone(), Arc::clone(&vehicles)).in_current_span());
        Some(Commands {
            source: source.into(),
            allow: allow.to_vec(),
            routes: routes.clone(),
            tx,
            seen: HashMap::new(),
            vehicles,
        })
    }

    /// A frame of this source was journaled: route its device if it is allowed and new,
    /// and keep its vehicle current.
    pub fn seen(&mut self, f: &Frame) {
        if self.seen.get(&f.device).is_some_and(|v| *v == f.vehicle) {
            return;
        }
        let first = !self.seen.contains_key(&f.device);
        self.seen.insert(f.device.clone(), f.vehicle.clone());
        if !self.allow.iter().any(|p| glob_match(p, &f.device)) {
            return;
        }
        if first {
            if let Err(e) = self
                .routes
                .register(&self.source, &f.device, self.tx.clone())
            {
                tracing::warn!(device = %f.device, error = %e, "no command route for the device");
                return;
            }
            tracing::info!(device = %f.device, "device takes commands");
        }
        lock(&self.vehicles).insert(f.device.clone(), f.vehicle.clone());
    }
}

/// The source's command task: publish each command to its device's topic (QoS1).
async fn publish(
    pattern: String,
    mut rx: mpsc::Receiver<Command>,
    client: AsyncClient,
    vehicles: Vehicles,
) {
    while let Some(cmd) = rx.recv().await {
        let vehicle = lock(&vehicles).get(&cmd.device).cloned().flatten();
        // Both ids are valid ids (no `/`, `+`, `#`): the topic has the pattern's shape.
        let topic = pattern
            .replace("{device}", &cmd.device)
            .replace("{vehicle}", vehicle.as_deref().unwrap_or("_"))
            .replace("{kind}", "cmd");
        let body = match cmd.payload {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        match client.publish(&topic, QoS::AtLeastOnce, false, body).await {
            Ok(()) => tracing::info!(device = %cmd.device, %topic, "command published"),
            Err(e) => tracing::warn!(device = %cmd.device, error = %e, "command not published"),
        }
    }
}
