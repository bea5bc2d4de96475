//! Sinks: consumers of the journal that deliver frames elsewhere, each by its own cursor.

pub mod mongo;
