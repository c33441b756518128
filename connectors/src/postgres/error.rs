//! Errors of the PostgreSQL source: what failed, against which server, and (for setup
//! problems) what to change upstream.

use changeflow_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server cannot be reached or dropped the connection.
    #[error("cannot reach PostgreSQL at {target}: {message}")]
    Connect { target: String, message: String },
    #[error("authentication failed: {0}")]
    Auth(String),
    /// An ErrorResponse from the server.
    #[error("PostgreSQL error {code}: {message}")]
    Server { code: String, message: String },
    /// The server's setup does not allow the source; the message says what to change.
    #[error("{0}")]
    Setup(String),
    /// A bad option, table list or type, found before anything upstream changes.
    #[error("{0}")]
    Config(String),
    /// A message the decoder did not expect: a bug or an unsupported server.
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// A value that does not fit the column's type.
    #[error("{0}")]
    Value(String),
    #[error("{0}")]
    Client(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

impl PgError {
    pub fn io(error: std::io::Error) -> Self {
        PgError::Protocol(error.to_string())
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        PgError::Protocol(message.into())
    }

    /// Whether reconnecting may help (the server went away), rather than a lasting problem.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Connect { .. } => true,
            // admin shutdown, crash shutdown, cannot connect now, connection failures, and
            // a slot still held by the walsender of a connection that just died
            PgError::Server { code, .. } => code.starts_with("57P") || code.starts_with("08") || code == "55006",
            PgError::Client(error) => error.is_closed() || error.as_db_error().is_none(),
            _ => false,
        }
    }
}

impl From<PgError> for EngineError {
    fn from(error: PgError) -> Self {
        EngineError::Connector(error.to_string())
    }
}
