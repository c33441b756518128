//! Integration tests of changeflow: randomized differential tests (against DataFusion's
//! from-scratch evaluation and against PostgreSQL), the CLI, and the datagen source.

mod cli;
mod datagen;
mod differential;
mod pg_cluster;
mod postgres_oracle;
mod postgres_source;
mod support;
mod workload;
