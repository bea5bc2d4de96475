//! fieldgate's benchmarks and load generators, kept out of the gateway binary.
//!
//! Each module is one measurement that prints numbers (README quotes them): it drives the
//! gateway's real components through the `fieldgate` library, or a running `fieldgate`
//! process, against real brokers and servers it starts for the run. [`synthetic`] makes
//! the load-test frames, which the journal crash test also checks against.

pub mod broker;
pub mod can;
pub mod journal;
pub mod mongo;
pub mod mqtt;
pub mod scrape;
pub mod secantus;
pub mod serial;
pub mod synthetic;
pub mod ws;
