//! Integration tests of changeflow: randomized differential tests (against DataFusion's
//! from-scratch evaluation and against PostgreSQL), the CLI, the datagen source, the
//! PostgreSQL source (upstream schema changes included), `changeflow serve` (clients
//! that go wrong, hostile ones and their limits), restarts from a data directory (`kill -9` included, views loaded from
//! their checkpointed state, a full disk), and sinks that fail or cannot reach their target.

mod checkpoint_file;
mod cli;
mod datagen;
mod differential;
mod disk_full;
mod durability;
mod durability_postgres;
mod pg_cluster;
mod postgres_oracle;
mod postgres_schema_changes;
mod postgres_source;
mod postgres_tls;
mod raw_client;
mod scratch;
mod serve;
mod serve_server;
mod server_limits;
mod server_memory;
mod session_failures;
mod sink_failures;
mod sinks;
mod state_size;
mod support;
mod view_state;
mod workload;
