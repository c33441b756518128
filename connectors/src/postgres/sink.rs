//! The POSTGRES sink: `CREATE SINK s FROM relation INTO POSTGRES WITH (url = '...', table =
//! '...', [columns = 'a, b'], [create_table = 'true'])`. Each epoch is one transaction that
//! deletes the keys whose rows went away, upserts (`INSERT ... ON CONFLICT (key) DO UPDATE`)
//! the new rows, and records the sink's progress in `changeflow_sink_progress` (the epoch,
//! and the source position it came from; keyed by sink and target table). After a restart, epochs whose source position is
//! at or below the recorded one are not applied again; a sink that starts over (no
//! checkpoint holds its position) on a table it wrote before empties it in its first
//! transaction, as everything is delivered again. Rows the target refuses (a
//! constraint, a value out of range) are found one by one under savepoints and follow the
//! sink's ON ERROR policy; a lost connection is retried.

use std::collections::BTreeMap;

use async_trait::async_trait;
use changeflow_engine::connector::{Rejected, SinkConnector, SinkEpoch, SinkFailure, SinkTarget, SinkWriter};
use changeflow_engine::error::{EngineError, Result};
use datafusion::arrow::array::{Array, BinaryArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;

use super::config::quote_ident;
use super::endpoint::{ENDPOINT_OPTIONS, Endpoint, HostCredentials};
use super::error::PgError;

fn application_name(config: &mut tokio_postgres::Config) {
    config.application_name("changeflow sink");
}
use crate::format::events;

const PROGRESS_TABLE: &str = "changeflow_sink_progress";
/// How long CREATE SINK waits for the target to answer its check.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Upserts of at least this many rows go through COPY into a staging table.
const COPY_THRESHOLD: usize = 1_000;

/// A value in COPY's text format: backslash, tab, newline and carriage return escaped.
fn copy_escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

pub struct PostgresSinkConnector {
    host_credentials: HostCredentials,
}

impl PostgresSinkConnector {
    pub fn new(host_credentials: HostCredentials) -> Self {
        Self { host_credentials }
    }
}

#[derive(Clone)]
struct SinkConfig {
    endpoint: Endpoint,
    display_url: String,
    /// The target table, quoted (possibly schema-qualified).
    table: String,
    /// Columns written (indexes into the relation), and which of them are the key.
    columns: Vec<usize>,
    key: Vec<usize>,
    create_table: bool,
}

fn config(
    options: &BTreeMap<String, String>,
    target: &SinkTarget,
    host_credentials: HostCredentials,
) -> Result<SinkConfig> {
    let bad = |message: String| EngineError::Connector(format!("sink \"{}\": {message}", target.sink));
    const KNOWN: [&str; 3] = ["table", "columns", "create_table"];
    if let Some(unknown) =
        options.keys().find(|k| !KNOWN.contains(&k.as_str()) && !ENDPOINT_OPTIONS.contains(&k.as_str()))
    {
        return Err(bad(format!(
            "unknown option '{unknown}' for INTO POSTGRES; known: key, validate, {}, {}",
            ENDPOINT_OPTIONS.join(", "),
            KNOWN.join(", ")
        )));
    }
    let endpoint = Endpoint::from_options(options, host_credentials).map_err(bad)?;
    let table = options.get("table").ok_or_else(|| bad("INTO POSTGRES needs table = '<table>'".into()))?;
    let table = table.split('.').map(|part| quote_ident(part.trim())).collect::<Vec<_>>().join(".");
    if target.key.is_empty() {
        return Err(bad(format!("\"{}\" has no key to upsert by; give key = '<column, ...>'", target.relation)));
    }
    let columns = match options.get("columns") {
        None => (0..target.schema.fields().len()).collect(),
        Some(list) => {
            list.split(',')
                .map(|c| {
                    let name = c.trim().to_ascii_lowercase();
                    target.schema.index_of(&name).map_err(|_| {
                        bad(format!("columns names '{name}', which \"{}\" does not have", target.relation))
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    if let Some(missing) = target.key.iter().find(|k| !columns.contains(k)) {
        return Err(bad(format!("columns must include the key column '{}'", target.schema.field(*missing).name())));
    }
    let create_table = match options.get("create_table").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad(format!("create_table is 'true' or 'false', not '{other}'"))),
    };
    Ok(SinkConfig {
        display_url: endpoint.display_url.clone(),
        endpoint,
        table,
        columns,
        key: target.key.clone(),
        create_table,
    })
}

/// The PostgreSQL type of a column created with `create_table = 'true'` (text for what has
/// no counterpart).
fn postgres_type(data_type: &DataType) -> String {
    changeflow_sql::ddl::postgres_type_name(data_type).unwrap_or_else(|| "text".into())
}

/// A failure of the target: retried when the connection or server went away, a refusal of
/// the data (classes 22 and 23) otherwise, else fatal.
fn classify(error: &tokio_postgres::Error, what: &str) -> SinkFailure {
    match error.as_db_error() {
        None => SinkFailure::Transient(format!("{what}: {error}")),
        Some(db) => {
            let code = db.code().code();
            let message = format!("{what}: {} (SQLSTATE {code})", db.message());
            if code.starts_with("08")
                || code.starts_with("57")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01"
            {
                SinkFailure::Transient(message)
            } else {
                SinkFailure::Fatal(message)
            }
        }
    }
}

/// The columns of the target table and their types (none when it does not exist).
async fn target_columns(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<BTreeMap<String, String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn refused(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23"))
}

#[async_trait]
impl SinkConnector for PostgresSinkConnector {
    fn validate(&self, options: &BTreeMap<String, String>, target: &SinkTarget) -> Result<()> {
        config(options, target, self.host_credentials).map(|_| ())
    }

    async fn check(&self, options: &BTreeMap<String, String>, target: &SinkTarget) -> Result<()> {
        let config = config(options, target, self.host_credentials)?;
        let failed = |message: String| EngineError::Connector(format!("sink \"{}\": {message}", target.sink));
        let connect = tokio::time::timeout(CHECK_TIMEOUT, config.endpoint.connect(application_name));
        let client = match connect.await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(failed(error.to_string())),
            Err(_) => {
                return Err(failed(format!(
                    "PostgreSQL at {} did not answer within {} s",
                    config.display_url,
                    CHECK_TIMEOUT.as_secs()
                )));
            }
        };
        let checked = if config.create_table {
            Ok(())
        } else {
            target_columns(&client, &config.table).await.map_err(|e| failed(e.to_string())).and_then(|found| {
                if found.is_empty() {
                    return Err(failed(format!(
                        "table {} does not exist in {}; create it, or set create_table = 'true'",
                        config.table, config.display_url
                    )));
                }
                match config.columns.iter().map(|&i| target.schema.field(i).name()).find(|n| !found.contains_key(*n)) {
                    Some(missing) => Err(failed(format!("table {} has no column \"{missing}\"", config.table))),
                    None => Ok(()),
                }
            })
        };
        drop(client);
        checked
    }

    async fn open(
        &self,
        options: &BTreeMap<String, String>,
        target: &SinkTarget,
        resume: Option<String>,
    ) -> Result<Box<dyn SinkWriter>> {
        let config = config(options, target, self.host_credentials)?;
        let mut writer = PostgresSinkWriter::open(config, target.clone())
            .await
            .map_err(|e| EngineError::Connector(e.to_string()))?;
        if resume.is_none() && writer.applied.is_some() {
            // This sink wrote the table before, and starts over (no checkpoint holds its
            // position): everything is delivered again, so what is there goes first.
            writer.start_over = true;
            writer.applied = None;
        }
        Ok(Box::new(writer))
    }
}

struct PostgresSinkWriter {
    plan: Plan,
    client: Option<tokio_postgres::Client>,
    /// The source position of the newest epoch applied (from the progress row).
    applied: Option<(String, u64)>,
    /// Set when the sink starts over on a table it wrote before: the first epoch empties it.
    start_over: bool,
}

/// What the statements are built from.
struct Plan {
    config: SinkConfig,
    target: SinkTarget,
    /// The target's type of each written column, for casts.
    types: Vec<String>,
}

/// The key of each row of an epoch's change, encoded (equal keys, equal bytes).
fn key_rows(epoch: &SinkEpoch, key: &[usize]) -> Result<Vec<Box<[u8]>>, SinkFailure> {
    use datafusion::arrow::row::{RowConverter, SortField};
    let data = &epoch.change.data;
    let fields = key.iter().map(|&i| SortField::new(data.schema().field(i).data_type().clone())).collect();
    let encode = || -> Result<Vec<Box<[u8]>>, datafusion::arrow::error::ArrowError> {
        let converter = RowConverter::new(fields)?;
        let columns: Vec<_> = key.iter().map(|&i| data.column(i).clone()).collect();
        Ok(converter.convert_columns(&columns)?.iter().map(|r| r.as_ref().into()).collect())
    };
    encode().map_err(|e| SinkFailure::Fatal(format!("encoding keys: {e}")))
}

fn lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

impl PostgresSinkWriter {
    async fn open(config: SinkConfig, target: SinkTarget) -> Result<Self, SinkFailure> {
        let mut writer =
            Self { plan: Plan { config, target, types: Vec::new() }, client: None, applied: None, start_over: false };
        writer.connect().await?;
        Ok(writer)
    }

    /// Connects, prepares the table and reads the progress row.
    async fn connect(&mut self) -> Result<(), SinkFailure> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let client = self.plan.config.endpoint.connect(application_name).await.map_err(|error| match error {
            // Unreachable now, maybe not for long.
            PgError::Connect { .. } => SinkFailure::Transient(error.to_string()),
            other => SinkFailure::Fatal(other.to_string()),
        })?;
        let names: Vec<String> =
            self.plan.config.columns.iter().map(|&i| self.plan.target.schema.field(i).name().clone()).collect();
        if self.plan.config.create_table {
            let columns: Vec<String> = self
                .plan
                .config
                .columns
                .iter()
                .map(|&i| {
                    let field = self.plan.target.schema.field(i);
                    format!("{} {}", quote_ident(field.name()), postgres_type(field.data_type()))
                })
                .collect();
            let key: Vec<String> =
                self.plan.config.key.iter().map(|&i| quote_ident(self.plan.target.schema.field(i).name())).collect();
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
                self.plan.config.table,
                columns.join(", "),
                key.join(", ")
            );
            client.batch_execute(&sql).await.map_err(|e| classify(&e, "creating the target table"))?;
        }
        let types = target_columns(&client, &self.plan.config.table)
            .await
            .map_err(|e| classify(&e, "reading the target table"))?;
        if types.is_empty() {
            return Err(SinkFailure::Fatal(format!(
                "table {} does not exist in {}; create it, or set create_table = 'true'",
                self.plan.config.table, self.plan.config.display_url
            )));
        }
        self.plan.types = names
            .iter()
            .map(|name| {
                types.get(name).cloned().ok_or_else(|| {
                    SinkFailure::Fatal(format!("table {} has no column \"{name}\"", self.plan.config.table))
                })
            })
            .collect::<Result<_, _>>()?;
        prepare_progress_table(&client).await?;
        // A row of this sink for another table (the sink was dropped and made again with
        // another target) says nothing about this table. Rows from before the table was
        // recorded ('') belong to the sink, whatever its table.
        let progress = client
            .query_opt(
                &format!(
                    "SELECT source, position FROM {PROGRESS_TABLE} WHERE sink = $1 AND target_table IN ($2, '') \
                     ORDER BY target_table DESC LIMIT 1"
                ),
                &[&self.plan.target.sink, &self.plan.config.table],
            )
            .await
            .map_err(|e| classify(&e, "reading the progress row"))?;
        self.applied = progress.and_then(|row| {
            let source: Option<String> = row.get(0);
            let position: Option<String> = row.get(1);
            Some((source?, lsn(&position?)?))
        });
        self.client = Some(client);
        Ok(())
    }
}

/// Creates the progress table, keyed by sink and target table, or brings one keyed by sink
/// alone (as first made) to that key; its rows get the table '' (not recorded).
async fn prepare_progress_table(client: &tokio_postgres::Client) -> Result<(), SinkFailure> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (sink text NOT NULL, target_table text NOT NULL DEFAULT '', \
             epoch bigint NOT NULL, source text, position text, updated_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (sink, target_table));
             ALTER TABLE {PROGRESS_TABLE} ADD COLUMN IF NOT EXISTS target_table text NOT NULL DEFAULT ''"
        ))
        .await
        .map_err(|e| classify(&e, "creating the progress table"))?;
    let key_columns: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                 AND a.attnum = ANY(i.indkey) WHERE i.indrelid = '{PROGRESS_TABLE}'::regclass AND i.indisprimary"
            ),
            &[],
        )
        .await
        .map_err(|e| classify(&e, "reading the progress table's key"))?
        .get(0);
    if key_columns == 1 {
        client
            .batch_execute(&format!(
                "ALTER TABLE {PROGRESS_TABLE} DROP CONSTRAINT {PROGRESS_TABLE}_pkey, \
                 ADD PRIMARY KEY (sink, target_table)"
            ))
            .await
            .map_err(|e| classify(&e, "keying the progress table by sink and table"))?;
    }
    Ok(())
}

impl Plan {
    /// Each written column's values of the given rows, as PostgreSQL text.
    fn text_columns(&self, epoch: &SinkEpoch, rows: &[usize], columns: &[usize]) -> Vec<Vec<Option<String>>> {
        columns
            .iter()
            .map(|&c| {
                let array = epoch.change.data.column(c);
                rows.iter()
                    .map(|&r| {
                        if array.is_null(r) {
                            return None;
                        }
                        if let Some(binary) = array.as_any().downcast_ref::<BinaryArray>() {
                            let hex: String = binary.value(r).iter().map(|b| format!("{b:02x}")).collect();
                            return Some(format!("\\x{hex}"));
                        }
                        if matches!(array.data_type(), DataType::List(_)) {
                            let element =
                                |values: &dyn Array, i: usize| array_value_to_string(values, i).unwrap_or_default();
                            return changeflow_sql::arrays::array_text(array.as_ref(), r, &element);
                        }
                        array_value_to_string(array.as_ref(), r).ok()
                    })
                    .collect()
            })
            .collect()
    }

    fn names(&self, columns: &[usize]) -> Vec<String> {
        columns.iter().map(|&i| quote_ident(self.target.schema.field(i).name())).collect()
    }

    fn type_of(&self, column: usize) -> &str {
        let at = self.config.columns.iter().position(|&c| c == column).unwrap_or(0);
        &self.types[at]
    }

    /// `SELECT a::type, b::type FROM unnest($1::text[], $2::text[]) AS u(a, b)`.
    fn unnest(&self, columns: &[usize], first_parameter: usize) -> String {
        let names = self.names(columns);
        let casts: Vec<String> =
            columns.iter().zip(&names).map(|(&c, n)| format!("{n}::{}", self.type_of(c))).collect();
        let parameters: Vec<String> = (0..columns.len()).map(|i| format!("${}::text[]", first_parameter + i)).collect();
        format!("SELECT {} FROM unnest({}) AS u({})", casts.join(", "), parameters.join(", "), names.join(", "))
    }

    fn delete_sql(&self) -> String {
        let key = self.names(&self.config.key);
        format!(
            "DELETE FROM {} WHERE ({}) IN ({})",
            self.config.table,
            key.join(", "),
            self.unnest(&self.config.key, 1)
        )
    }

    fn upsert_sql(&self) -> String {
        let names = self.names(&self.config.columns);
        let key = self.names(&self.config.key);
        let updates: Vec<String> =
            names.iter().filter(|n| !key.contains(n)).map(|n| format!("{n} = EXCLUDED.{n}")).collect();
        let action =
            if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
        format!(
            "INSERT INTO {} ({}) {} ON CONFLICT ({}) DO {action}",
            self.config.table,
            names.join(", "),
            self.unnest(&self.config.columns, 1),
            key.join(", ")
        )
    }

    /// Runs the deletes and upserts of the given rows.
    async fn apply(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        epoch: &SinkEpoch,
        deletes: &[usize],
        upserts: &[usize],
    ) -> Result<(), tokio_postgres::Error> {
        if !deletes.is_empty() {
            let values = self.text_columns(epoch, deletes, &self.config.key);
            let parameters: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            transaction.execute(&self.delete_sql(), &parameters).await?;
        }
        if upserts.len() >= COPY_THRESHOLD {
            self.upsert_by_copy(transaction, epoch, upserts).await?;
        } else if !upserts.is_empty() {
            let values = self.text_columns(epoch, upserts, &self.config.columns);
            let parameters: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            transaction.execute(&self.upsert_sql(), &parameters).await?;
        }
        Ok(())
    }

    /// Many rows: COPY them into a temporary staging table, then one upsert from it.
    async fn upsert_by_copy(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        epoch: &SinkEpoch,
        rows: &[usize],
    ) -> Result<(), tokio_postgres::Error> {
        use futures_util::SinkExt;
        let names = self.names(&self.config.columns);
        let key = self.names(&self.config.key);
        transaction
            .batch_execute(&format!(
                "CREATE TEMPORARY TABLE IF NOT EXISTS changeflow_stage AS SELECT {} FROM {} WITH NO DATA; \
                 TRUNCATE changeflow_stage",
                names.join(", "),
                self.config.table
            ))
            .await?;
        let values = self.text_columns(epoch, rows, &self.config.columns);
        let mut text = String::with_capacity(rows.len() * 16 * names.len());
        for row in 0..rows.len() {
            for (c, column) in values.iter().enumerate() {
                if c > 0 {
                    text.push('\t');
                }
                match &column[row] {
                    None => text.push_str("\\N"),
                    Some(value) => copy_escape(value, &mut text),
                }
            }
            text.push('\n');
        }
        let sink = transaction.copy_in(&format!("COPY changeflow_stage ({}) FROM STDIN", names.join(", "))).await?;
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(text)).await?;
        sink.close().await?;
        let updates: Vec<String> =
            names.iter().filter(|n| !key.contains(n)).map(|n| format!("{n} = EXCLUDED.{n}")).collect();
        let action =
            if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
        transaction
            .batch_execute(&format!(
                "INSERT INTO {} ({cols}) SELECT {cols} FROM changeflow_stage ON CONFLICT ({}) DO {action}",
                self.config.table,
                key.join(", "),
                cols = names.join(", ")
            ))
            .await
    }
}

#[async_trait]
impl SinkWriter for PostgresSinkWriter {
    async fn write_epoch(&mut self, epoch: &SinkEpoch, skip_rejected: bool) -> Result<Vec<Rejected>, SinkFailure> {
        let origin = epoch.origin.as_ref().and_then(|o| Some((o.source.clone(), lsn(&o.progress.0)?)));
        if let (Some((source, position)), Some((applied_source, applied))) = (&origin, &self.applied)
            && source == applied_source
            && position <= applied
        {
            // Applied before a restart (the progress row says so).
            return Ok(Vec::new());
        }
        // The final state of each key in the epoch: deleted, or this row.
        let keys = key_rows(epoch, &self.plan.config.key)?;
        let mut last: std::collections::HashMap<&[u8], (usize, bool)> = std::collections::HashMap::new();
        let mut order: Vec<&[u8]> = Vec::new();
        for event in events(epoch, &self.plan.target.key) {
            let key = keys[event.row()].as_ref();
            if last.insert(key, (event.row(), event.after.is_some())).is_none() {
                order.push(key);
            }
        }
        let last: Vec<(usize, bool)> = order.iter().filter_map(|k| last.get(k).copied()).collect();
        let deletes: Vec<usize> = last.iter().filter(|(_, upsert)| !upsert).map(|(r, _)| *r).collect();
        let upserts: Vec<usize> = last.iter().filter(|(_, upsert)| *upsert).map(|(r, _)| *r).collect();
        self.connect().await?;
        let progress_sql = format!(
            "INSERT INTO {PROGRESS_TABLE} (sink, target_table, epoch, source, position) VALUES ($1, $5, $2, $3, $4) \
             ON CONFLICT (sink, target_table) DO UPDATE SET epoch = EXCLUDED.epoch, source = EXCLUDED.source, \
             position = EXCLUDED.position, updated_at = now()"
        );
        let epoch_number = epoch.epoch as i64;
        let source = epoch.origin.as_ref().map(|o| o.source.clone());
        let position = epoch.origin.as_ref().map(|o| o.progress.0.clone());
        let client = self.client.as_mut().ok_or_else(|| SinkFailure::Transient("not connected".into()))?;
        let transaction = client.transaction().await.map_err(|e| classify(&e, "starting a transaction"))?;
        let this = &self.plan;
        if self.start_over {
            transaction
                .batch_execute(&format!("DELETE FROM {}", this.config.table))
                .await
                .map_err(|e| classify(&e, "emptying the table to start over"))?;
        }
        let mut rejected = Vec::new();
        if let Err(error) = this.apply(&transaction, epoch, &deletes, &upserts).await {
            if !refused(&error) {
                return Err(classify(&error, "writing an epoch"));
            }
            // Find the refused rows one by one, each under a savepoint.
            let _ = transaction.rollback().await;
            let client = self.client.as_mut().ok_or_else(|| SinkFailure::Transient("not connected".into()))?;
            let mut transaction = client.transaction().await.map_err(|e| classify(&e, "starting a transaction"))?;
            if self.start_over {
                transaction
                    .batch_execute(&format!("DELETE FROM {}", this.config.table))
                    .await
                    .map_err(|e| classify(&e, "emptying the table to start over"))?;
            }
            for (row, upsert) in deletes.iter().map(|r| (*r, false)).chain(upserts.iter().map(|r| (*r, true))) {
                let savepoint = transaction.savepoint("row").await.map_err(|e| classify(&e, "a savepoint"))?;
                let (d, u) = if upsert { (vec![], vec![row]) } else { (vec![row], vec![]) };
                match this.apply(&savepoint, epoch, &d, &u).await {
                    Ok(()) => savepoint.commit().await.map_err(|e| classify(&e, "releasing a savepoint"))?,
                    Err(error) if refused(&error) => {
                        let _ = savepoint.rollback().await;
                        let message = error.as_db_error().map_or(error.to_string(), |db| {
                            format!("{} (SQLSTATE {})", db.message(), db.code().code())
                        });
                        rejected
                            .push(Rejected { row, error: format!("{} refused the row: {message}", this.config.table) });
                    }
                    Err(error) => return Err(classify(&error, "writing a row")),
                }
            }
            if !skip_rejected {
                let _ = transaction.rollback().await;
                return Err(SinkFailure::Rejected(rejected));
            }
            transaction
                .execute(&progress_sql, &[&this.target.sink, &epoch_number, &source, &position, &this.config.table])
                .await
                .map_err(|e| classify(&e, "recording progress"))?;
            transaction.commit().await.map_err(|e| classify(&e, "committing"))?;
        } else {
            transaction
                .execute(&progress_sql, &[&this.target.sink, &epoch_number, &source, &position, &this.config.table])
                .await
                .map_err(|e| classify(&e, "recording progress"))?;
            transaction.commit().await.map_err(|e| classify(&e, "committing"))?;
        }
        if let Some(origin) = origin {
            self.applied = Some(origin);
        }
        self.start_over = false;
        Ok(rejected)
    }

    async fn flush(&mut self) -> Result<Option<String>, SinkFailure> {
        // Every epoch is committed as it is written; the position only says a checkpoint
        // holds this sink (a restart resumes rather than starts over).
        Ok(Some("committed".into()))
    }
}
