//! Test helpers for the mongo tests (see mod.rs).
