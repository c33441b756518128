//! changeflow's incremental engine.
//!
//! **Change batches** ([`change`]): an Arrow `RecordBatch` plus a weight per row (+1 insert,
//! -1 retract; an update is both). **Epochs**: the changes of one or more whole upstream
//! transactions (a local transaction, a source transaction); [`Engine::run_epoch`] steps every
//! materialized view's operator tree ([`operator`]) with the epoch's changes in creation order
//! and applies each view's output change to its stored contents ([`store`]), so queries never
//! see part of a transaction. Operators keep explicit state (per-group accumulators, join
//! arrangements, ordered rows for top-k) so an epoch costs work proportional to its change.
//!
//! Ad-hoc queries run on DataFusion over snapshots of the stored relations. Sources and sinks
//! plug in through the traits of [`connector`]; [`Database`] runs sources as tasks that feed
//! the engine, and each sink ([`sink`]) as a task that delivers its relation's epochs in
//! order; `changes(relation)` turns a relation's changes into event rows. With a data
//! directory ([`durable`]) DDL and local writes are journaled and checkpoints taken, so a
//! restart (even after `kill -9`) comes back to the same state; without one, state lives in
//! memory.

pub mod change;
mod change_stream;
pub mod connector;
mod database;
pub mod durable;
mod engine;
pub mod error;
pub mod events;
mod exec_ddl;
mod exec_dml;
mod exec_query;
pub mod heap_bytes;
pub mod interrupt;
mod key_changes;
mod key_index;
pub mod keyed;
pub mod memory;
pub mod operator;
mod prefetch;
mod prepared;
mod query_runtime;
pub mod redact;
pub mod rows;
mod same_bytes;
mod secrets;
mod session;
pub mod sink;
pub mod stats;
pub mod store;
pub mod subscribe;
#[cfg(test)]
mod test_random;

pub use change::ChangeBatch;
pub use database::Database;
pub use durable::{DurabilityOptions, RestoreReport};
pub use engine::{Engine, Mode, Output, SourceStatus};
pub use error::{EngineError, Result};
pub use exec_query::{Description, PreparedQuery};
pub use keyed::{KeyedChanges, RowOp};
pub use query_runtime::RowStream;
pub use session::{Session, Streamed};
pub use subscribe::{Subscription, ViewUpdate};
