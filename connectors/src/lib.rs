//! changeflow's connectors: one module per external system, each with the same files
//! (`config.rs` turns `WITH (...)` options into a typed struct, `source.rs` reads). Only
//! `datagen` exists so far; it is the shape later connectors follow.

pub mod datagen;
mod registry;

pub use registry::registry;
