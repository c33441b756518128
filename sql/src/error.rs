//! Errors of the SQL front end. Each names what is wrong; positions are attached by the
//! statement splitter so a caller can print `FILE:LINE:COL: message`.

use datafusion::error::DataFusionError;

/// A position in a SQL text, 1-based like editors and sqlparser count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The text does not parse.
    #[error("syntax error: {message}")]
    Syntax { message: String, position: Option<Position> },
    /// A name that does not exist, already exists, or is used where it cannot be.
    #[error("{0}")]
    Catalog(String),
    /// A statement that is valid SQL but not something changeflow does.
    #[error("{0}")]
    Unsupported(String),
    /// A statement that nests too deeply to be planned safely (see [`crate::depth`]).
    #[error("statement too complex: {0}")]
    TooComplex(String),
    /// A view query the incremental planner cannot maintain; names the blocking construct.
    #[error("cannot maintain this view incrementally: {0}")]
    NotIncremental(String),
    /// Type or name resolution failures reported by DataFusion's planner.
    #[error("{}", clean_datafusion_message(.0))]
    DataFusion(#[from] DataFusionError),
}

impl SqlError {
    /// The position the error points at inside the statement, if it knows one.
    pub fn position(&self) -> Option<Position> {
        match self {
            SqlError::Syntax { position, .. } => *position,
            _ => None,
        }
    }
}

/// DataFusion prefixes messages with its own layer names ("Error during planning: "),
/// which mean nothing to a user of changeflow; keep the message itself.
pub fn clean_datafusion_message(error: &DataFusionError) -> String {
    let mut error = error;
    while let DataFusionError::Context(_, inner) = error {
        error = inner;
    }
    if let DataFusionError::Diagnostic(_, inner) = error {
        return clean_datafusion_message(inner);
    }
    let text = error.to_string();
    let mut message = text.as_str();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "SQL error: ",
        "Execution error: ",
        "Arrow error: ",
        "This feature is not implemented: ",
        "Optimizer rule 'type_coercion' failed\ncaused by\n",
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            message = rest;
        }
    }
    postgres_words(message.trim())
}

/// DataFusion's and Arrow's wording of common errors, said as PostgreSQL says them.
pub fn postgres_words(message: &str) -> String {
    // "Invalid function 'x'.\nDid you mean 'y'?": suggestions of Arrow's own functions
    // (arrow_typeof, arrow_cast) help nobody writing PostgreSQL.
    if let Some(rest) = message.strip_prefix("Invalid function '")
        && let Some((name, tail)) = rest.split_once('\'')
    {
        let suggestion = tail
            .split_once("Did you mean '")
            .and_then(|(_, s)| s.split_once('\''))
            .map(|(s, _)| s)
            .filter(|s| !s.starts_with("arrow_") && !s.starts_with('_'));
        return match suggestion {
            Some(suggestion) => format!("function {name}() does not exist; did you mean {suggestion}()?"),
            None => format!("function {name}() does not exist"),
        };
    }
    // "Invalid argument error: 123.00 is too large to store in a Decimal128 of precision 10.
    // Max is 99999999.99"
    if let Some(at) = message.find(" is too large to store in a Decimal128 of precision ") {
        let value = message[..at].rsplit([' ', ':']).next().unwrap_or_default();
        let rest = &message[at + " is too large to store in a Decimal128 of precision ".len()..];
        let precision: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let max = rest.split_once("Max is ").map(|(_, m)| m.trim_end_matches('.')).unwrap_or_default();
        return format!(
            "numeric field overflow: {value} does not fit a numeric of precision {precision} (largest: {max})"
        );
    }
    // Subqueries DataFusion could not rewrite as joins reach its physical planner.
    if let Some(rest) = message.strip_prefix("Physical plan does not support logical expression ") {
        let construct = match rest.split(['(', ' ']).next().unwrap_or_default() {
            "InSubquery" => "IN (SELECT ...) where it cannot become a join (in a SELECT without FROM, or under OR)",
            "Exists" => "EXISTS (SELECT ...) where it cannot become a join (in a SELECT without FROM, or under OR)",
            "ScalarSubquery" => "a scalar subquery (SELECT ...) where it cannot become a join",
            other => other,
        };
        return format!("{construct} is not supported");
    }
    message.to_string()
}

pub type Result<T, E = SqlError> = std::result::Result<T, E>;
