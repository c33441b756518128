//! Integration tests of changeflow: randomized differential tests (against DataFusion's
//! from-scratch evaluation and against PostgreSQL), the CLI, the datagen source, the
//! PostgreSQL source and `changeflow serve`.

mod cli;
mod datagen;
mod differential;
mod pg_cluster;
mod postgres_oracle;
mod postgres_source;
mod serve;
mod serve_server;
mod support;
mod workload;
