//! changeflow's connectors: one module per external system, each with the same files
//! (`config.rs` turns `WITH (...)` options into a typed struct, `source.rs` reads, `sink.rs`
//! writes). `datagen` generates data; `postgres` reads PostgreSQL's logical replication and
//! writes tables; `file` writes JSON lines; `format` turns epochs into messages.

pub mod datagen;
pub mod file;
pub mod format;
#[cfg(feature = "postgres")]
pub mod postgres;
mod registry;

pub use registry::{HostCredentials, registry, registry_for_server};
