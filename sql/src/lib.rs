//! changeflow's SQL front end.
//!
//! - [`parser`] splits a text into statements (with positions) and parses them: standard SQL
//!   through sqlparser, plus `CREATE SOURCE`, `CREATE SINK`, `CREATE SECRET` (and their DROPs),
//!   `SHOW ...`, `SUBSCRIBE` and `EXPLAIN CREATE MATERIALIZED VIEW`.
//! - [`catalog`] holds tables, views, materialized views and sources with their schemas.
//! - [`context`] lets DataFusion's SQL planner resolve names against the catalog.
//! - [`planner`] turns a view's optimized DataFusion `LogicalPlan` into the incremental
//!   dataflow of [`plan`], refusing what cannot be maintained incrementally;
//!   [`eager_aggregation`] first moves aggregates over joins partly below them.
//! - [`ddl`] maps `CREATE TABLE` to Arrow schemas; [`explain`] renders dataflows.
//! - [`system_catalog`] answers `pg_catalog` queries (psql's `\d`, drivers) from the catalog.

pub mod arrays;
pub mod catalog;
pub mod change_stream;
pub mod context;
pub mod ddl;
pub mod depth;
pub mod eager_aggregation;
pub mod error;
pub mod explain;
pub mod names;
pub mod parser;
pub mod plan;
pub mod planner;
pub mod postgres_functions;
pub mod secret_statement;
pub mod sink_statement;
pub mod system_catalog;

pub use catalog::{Catalog, Relation, RelationKind, SinkDef, SourceDef};
pub use context::{PlanContext, RelationData, new_session_state};
pub use error::{Position, Result, SqlError};
pub use parser::{ParsedStatement, ShowKind, Statement, parse_sql, split_statements};
