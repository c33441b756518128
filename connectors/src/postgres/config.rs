//! The `WITH (...)` options of a PostgreSQL source, checked and typed. Secrets stay out of
//! everything printed: [`PostgresConfig::display_url`] has no password.

use changeflow_sql::parser::{CreateSource, SourceTables};

use super::endpoint::{ENDPOINT_OPTIONS, Endpoint, HostCredentials};
use super::error::PgError;

/// Default retained-WAL size past which a warning is logged: 1 GiB.
const DEFAULT_RETAINED_WAL_WARNING: u64 = 1 << 30;
/// Default size of the parts a large transaction is spilled to disk in.
const DEFAULT_SPILL_AFTER_OPERATIONS: usize = 200_000;
/// The source's own options (besides the endpoint's: url, credentials, TLS).
const OPTIONS: [&str; 6] =
    ["publication", "slot", "snapshot", "retained_wal_warning_bytes", "spill_after_operations", "append_only"];

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub source: String,
    pub endpoint: Endpoint,
    pub display_url: String,
    pub publication: String,
    pub slot: String,
    pub snapshot: bool,
    pub tables: SourceTables,
    pub retained_wal_warning: u64,
    /// A transaction is spilled to disk in parts of this many operations.
    pub spill_after_operations: usize,
    /// Relations that only grow (outbox tables): inserts are kept even when the row is
    /// deleted in the same transaction, deletes and truncates are ignored, an update adds
    /// the new row. `None` in the list means every relation.
    pub append_only: Option<Vec<String>>,
}

impl PostgresConfig {
    pub fn from_statement(create: &CreateSource, host_credentials: HostCredentials) -> Result<Self, PgError> {
        let source = create.name.clone();
        let bad = |message: String| PgError::Config(format!("source \"{source}\": {message}"));
        for key in create.options.keys() {
            if !OPTIONS.contains(&key.as_str()) && !ENDPOINT_OPTIONS.contains(&key.as_str()) {
                return Err(bad(format!(
                    "unknown option '{key}'; POSTGRES takes {}, {}",
                    ENDPOINT_OPTIONS.join(", "),
                    OPTIONS.join(", ")
                )));
            }
        }
        let endpoint = Endpoint::from_options(&create.options, host_credentials).map_err(bad)?;
        let display_url = endpoint.display_url.clone();
        let snapshot = match create.options.get("snapshot").map(String::as_str) {
            None | Some("initial") => true,
            Some("never") => false,
            Some(other) => return Err(bad(format!("option 'snapshot' must be 'initial' or 'never', not '{other}'"))),
        };
        let retained_wal_warning = match create.options.get("retained_wal_warning_bytes") {
            None => DEFAULT_RETAINED_WAL_WARNING,
            Some(text) => text
                .parse()
                .map_err(|_| bad(format!("option 'retained_wal_warning_bytes' must be a byte count, not '{text}'")))?,
        };
        let spill_after_operations = match create.options.get("spill_after_operations") {
            None => DEFAULT_SPILL_AFTER_OPERATIONS,
            Some(text) => text.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                bad(format!("option 'spill_after_operations' must be a positive count, not '{text}'"))
            })?,
        };
        let default_name = format!("changeflow_{source}");
        let publication = create.options.get("publication").cloned().unwrap_or_else(|| default_name.clone());
        let slot = create.options.get("slot").cloned().unwrap_or(default_name);
        if !slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(bad(format!("slot name '{slot}' may contain only lower-case letters, digits and underscores")));
        }
        if matches!(create.tables, SourceTables::Unspecified) {
            return Err(bad("say which tables to capture: FOR TABLES (schema.table, ...) or FOR ALL TABLES".into()));
        }
        let append_only = match create.options.get("append_only").map(|v| v.trim().to_ascii_lowercase()) {
            None => Some(Vec::new()),
            Some(all) if all == "true" => None,
            Some(none) if none == "false" => Some(Vec::new()),
            Some(list) => Some(list.split(',').map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect()),
        };
        Ok(Self {
            source,
            endpoint,
            display_url,
            publication,
            slot,
            snapshot,
            tables: create.tables.clone(),
            retained_wal_warning,
            spill_after_operations,
            append_only,
        })
    }

    /// Whether a relation of this source only grows (see `append_only`).
    pub fn is_append_only(&self, relation: &str) -> bool {
        self.append_only.as_ref().is_none_or(|list| list.iter().any(|r| r == relation))
    }

    /// A client connection to the database (snapshot and catalog queries).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PgError> {
        let settings: Vec<String> = super::protocol::SESSION_SETTINGS
            .iter()
            .map(|(name, value)| format!("-c {name}={}", value.replace(' ', "\\ ")))
            .collect();
        self.endpoint
            .connect(|config| {
                config.application_name("changeflow");
                config.options(settings.join(" "));
            })
            .await
    }
}

/// The connection string without its password.
pub(super) fn redact(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let database = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{database}")
}

/// A name quoted as a PostgreSQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string quoted as a PostgreSQL literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
