//! changeflow's connectors: one module per external system, each with the same files
//! (`config.rs` turns `WITH (...)` options into a typed struct, `source.rs` reads). `datagen`
//! generates data; `postgres` reads PostgreSQL's logical replication.

pub mod datagen;
#[cfg(feature = "postgres")]
pub mod postgres;
mod registry;

pub use registry::registry;
