//! Sinks: consumers of the journal that deliver frames elsewhere, each by its own cursor.

pub mod mongo;

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a sink is doing right now, as `/api/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkState {
    /// `starting`, `online`, `offline`, `stopped`.
    pub state: String,
    /// Last seq the destination acknowledged.
    pub acked_seq: u64,
    /// Frames journaled but not yet acknowledged.
    pub lag: u64,
    /// Age in seconds of the oldest unacknowledged frame (0 when caught up).
    pub lag_seconds: f64,
    /// Frames delivered in this run.
    pub delivered: u64,
    /// Frames sent again in this run because the destination had lost them after
    /// acknowledging them (a server crash or rollback).
    pub resent: u64,
    /// Frames whose `_id` the destination already held for a different frame (a reused
    /// seq); each was journaled again under a fresh seq, never counted as delivered.
    pub collisions: u64,
    /// Frames not stored as plain documents in this run, by reason (`big_integer`,
    /// `nul_in_key`, `too_large`, `refused`).
    pub encode_fallbacks: BTreeMap<String, u64>,
    /// Last error, if any.
    pub last_error: Option<String>,
}

/// Status slots of all sinks, shared between the sinks and the API.
#[derive(Clone, Default)]
pub struct SinkStates(Arc<Mutex<BTreeMap<String, SinkState>>>);

impl SinkStates {
    /// Register a sink; returns a handle to update its state.
    pub fn register(&self, name: &str) -> SinkSlot {
        self.lock().insert(
            name.to_string(),
            SinkState {
                state: "starting".into(),
                ..SinkState::default()
            },
        );
        SinkSlot {
            states: self.clone(),
            name: name.to_string(),
        }
    }

    /// A copy of every sink's state.
    pub fn snapshot(&self) -> BTreeMap<String, SinkState> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SinkState>> {
        crate::sync::lock(&self.0)
    }
}

/// One sink's handle on its status entry.
#[derive(Clone)]
pub struct SinkSlot {
    states: SinkStates,
    name: String,
}

impl SinkSlot {
    /// Update the entry in place.
    pub fn update(&self, f: impl FnOnce(&mut SinkState)) {
        if let Some(s) = self.states.lock().get_mut(&self.name) {
            f(s);
        }
    }
}
