//! Test helpers for the mqtt tests (see mod.rs).
