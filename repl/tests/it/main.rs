//! Integration tests of changeflow: randomized differential tests (against DataFusion's
//! from-scratch evaluation and against PostgreSQL), the CLI, the datagen source, the
//! PostgreSQL source, `changeflow serve`, and restarts from a data directory (`kill -9`
//! included, and views loaded from their checkpointed state).

mod checkpoint_file;
mod cli;
mod datagen;
mod differential;
mod durability;
mod durability_postgres;
mod pg_cluster;
mod postgres_oracle;
mod postgres_source;
mod scratch;
mod serve;
mod serve_server;
mod sinks;
mod state_size;
mod support;
mod view_state;
mod workload;
