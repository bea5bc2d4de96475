//! Test helpers for the serial tests (see mod.rs).
