//! The POSTGRES source: a consistent snapshot, then logical replication (pgoutput) from a
//! replication slot. `config` reads the options, `endpoint` where and how to connect
//! (credentials, `tls`), `upstream` checks the server and tables,
//! `protocol` speaks the replication protocol, `pgoutput` decodes its messages, `types` and
//! `decode` turn text values into Arrow, `slot` finds, creates and drops the slot and
//! keeps what a restart resumes from, `snapshot` copies the tables, `transaction` gathers
//! each upstream transaction, `spill` writes large ones to disk, and `source` runs it all.
//! `sink` writes a relation's changes into a PostgreSQL table.

mod config;
mod decode;
mod endpoint;
mod error;
mod pgoutput;
mod protocol;
mod sink;
mod slot;
mod snapshot;
mod source;
mod spill;
mod tls;
mod transaction;
mod types;
mod upstream;

pub use error::PgError;
pub use sink::PostgresSinkConnector;
pub use source::PostgresConnector;
