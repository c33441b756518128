//! Errors of the engine: bad statements, constraint violations, and failures while
//! maintaining views. Each says what is wrong and where.

use changeflow_sql::SqlError;
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A write that would break a constraint (primary key, NOT NULL, read-only relation).
    #[error("{0}")]
    Constraint(String),
    /// A statement that cannot run in the current state (e.g. COMMIT outside a transaction).
    #[error("{0}")]
    State(String),
    /// Evaluating an expression or a query failed.
    #[error("{}", changeflow_sql::error::clean_datafusion_message(.0))]
    DataFusion(#[from] DataFusionError),
    #[error("{0}")]
    Arrow(#[from] ArrowError),
    /// A source or sink connector failed.
    #[error("{0}")]
    Connector(String),
    /// An invariant of the engine was broken: a bug, reported rather than hidden.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
