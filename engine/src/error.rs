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
    #[error("{}", changeflow_sql::error::postgres_words(&.0.to_string()))]
    Arrow(#[from] ArrowError),
    /// A source or sink connector failed.
    #[error("{0}")]
    Connector(String),
    /// Reading or writing the data directory failed, or what it holds is damaged.
    #[error("{0}")]
    Durability(String),
    /// A write waited too long for sinks that are far behind (backpressure); it was not
    /// applied.
    #[error("{0}")]
    Backpressure(String),
    /// A statement stopped by a cancel request, its client going away, or its timeout.
    #[error("{0}")]
    Canceled(String),
    /// PREPARE, EXECUTE or DEALLOCATE of a session failed.
    #[error("{message}")]
    Prepared { sqlstate: &'static str, message: String },
    /// An invariant of the engine was broken: a bug, reported rather than hidden.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    /// The PostgreSQL SQLSTATE that fits the error best, for clients of the wire protocol.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            EngineError::Sql(SqlError::Syntax { .. }) => "42601",
            EngineError::Sql(SqlError::TooComplex(_)) => "54001",
            EngineError::Sql(SqlError::Catalog(message)) => catalog_sqlstate(message),
            EngineError::Sql(SqlError::Unsupported(_)) | EngineError::Sql(SqlError::NotIncremental(_)) => "0A000",
            EngineError::Sql(SqlError::DataFusion(error)) | EngineError::DataFusion(error) => {
                datafusion_sqlstate(error)
            }
            EngineError::Constraint(message) => {
                if message.starts_with("duplicate key") {
                    "23505"
                } else if message.contains("not-null constraint") {
                    "23502"
                } else if message.contains("out of range") {
                    "22003"
                } else if message.contains("is of type") {
                    "22P02"
                } else if message.contains("read-only") || message.contains("is not a table") {
                    "42809"
                } else {
                    "23000"
                }
            }
            EngineError::State(message) => {
                if message.contains("already a transaction") || message.contains("inside a transaction block") {
                    "25001"
                } else if message.contains("no transaction") {
                    "25P01"
                } else {
                    "55000"
                }
            }
            EngineError::Arrow(error) if error.to_string().contains("too large to store in a Decimal128") => "22003",
            EngineError::Arrow(_) => "22000",
            EngineError::Backpressure(_) => "53000",
            EngineError::Prepared { sqlstate, .. } => sqlstate,
            EngineError::Canceled(message) if message.contains("lock timeout") => "55P03",
            EngineError::Canceled(_) => "57014",
            EngineError::Connector(_) => "08000",
            EngineError::Durability(_) => "58030",
            EngineError::Internal(_) => "XX000",
        }
    }
}

fn catalog_sqlstate(message: &str) -> &'static str {
    if message.contains("does not exist") {
        if message.starts_with("column") {
            "42703"
        } else if message.starts_with("function") {
            "42883"
        } else {
            "42P01"
        }
    } else if message.contains("already exists") {
        "42P07"
    } else if message.contains("depend") {
        "2BP01"
    } else if message.contains("more than once") {
        "42701"
    } else {
        "42809"
    }
}

fn datafusion_sqlstate(error: &DataFusionError) -> &'static str {
    let message = changeflow_sql::error::clean_datafusion_message(error);
    if message.contains("does not exist") {
        return catalog_sqlstate(&message);
    }
    if message.starts_with("numeric field overflow") {
        return "22003";
    }
    if message.ends_with("is not supported") {
        return "0A000";
    }
    match error.find_root() {
        DataFusionError::SchemaError(..) => "42703",
        DataFusionError::Plan(_) if message.contains("not found") => "42P01",
        DataFusionError::Plan(_) if message.contains("No function matches") || message.contains("Invalid function") => {
            "42883"
        }
        DataFusionError::Plan(_) if message.contains("coerc") || message.contains("Cannot infer") => "42804",
        DataFusionError::Plan(_) => "42000",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::ArrowError(..) if message.contains("Divide by zero") => "22012",
        DataFusionError::ArrowError(..) if message.contains("Cast error") || message.contains("Parser error") => {
            "22P02"
        }
        DataFusionError::ArrowError(..) => "22000",
        DataFusionError::Execution(_) if message.contains("Divide by zero") => "22012",
        DataFusionError::Execution(_) => "22000",
        _ => "XX000",
    }
}

/// The message a panic carried (its `&str` or `String` payload), for reporting a task that
/// panicked by name instead of letting it vanish.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_string(),
        (None, Some(text)) => text.clone(),
        (None, None) => "a panic without a message".to_string(),
    }
}
