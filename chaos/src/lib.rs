//! fieldgate's fault-injection suite (`scripts/chaos`, docs/reliability.md).
//!
//! Every scenario runs the real pipeline — a `fieldgate run` process, Debian's mosquitto,
//! the SecantusDB MongoDB-wire server (or a real mongod), real pseudo-terminals, real
//! WebSocket clients over TCP — injects one kind of fault, and checks the gateway's promise
//! against ground truth read after the fact: the journal opened with the gateway's own
//! library, MongoDB's documents, and what the broker and the gateway acknowledged (seen on
//! the wire by a proxy). Each ends in one verdict line, `name: PASS|FAIL figures...`.

pub mod broker;
pub mod check;
pub mod disk;
pub mod gateway;
pub mod load;
pub mod mongo;
pub mod proxy;
pub mod report;
pub mod rig;
pub mod scenario;
pub mod ws;
