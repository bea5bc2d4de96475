//! fieldgate: an edge telemetry gateway.
//!
//! Frames come in from sources (serial, MQTT, the simulator), get their sequence number in
//! the durable [`journal`], and flow from there to sinks (MongoDB) and the live relay.
//! Each component owns its config struct and its task; they talk through the journal.

pub mod api;
pub mod auth;
pub mod config;
pub mod doctor;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_api;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod relay;
pub mod service;
pub mod sink;
pub mod source;
pub mod sync;
pub mod units;
