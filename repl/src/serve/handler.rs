//! One client connection: its session (transaction block, variables) and the simple and
//! extended query protocols over it. SUBSCRIBE is streamed by [`super::subscribe`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use changeflow_engine::interrupt::Interrupt;
use changeflow_engine::{EngineError, Output, RowStream, Session, Streamed};
use changeflow_sql::parser::split_statements;
use datafusion::arrow::datatypes::SchemaRef;
use futures_util::{Sink, StreamExt, stream};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::Execute;
use pgwire::messages::simplequery::Query;
use tokio::sync::Mutex;

use super::Shared;
use super::cancel::{BackendKey, backend_key};
use super::encode;
use super::statement::{self, Command, Prepared, engine_error, user_error};
use super::subscribe;

/// The server's own answers to `SHOW variable` when the client did not SET it.
fn default_variable(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => changeflow_sql::postgres_functions::SERVER_VERSION,
        "server_version_num" => changeflow_sql::postgres_functions::SERVER_VERSION_NUM,
        "server_encoding" | "client_encoding" => "UTF8",
        "standard_conforming_strings" | "integer_datetimes" => "on",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "timezone" => "UTC",
        "transaction_isolation" | "transaction isolation level" | "default_transaction_isolation" => "serializable",
        "transaction_read_only" | "default_transaction_read_only" | "in_hot_standby" => "off",
        "search_path" => "public",
        "max_identifier_length" => "63",
        "lc_collate" | "lc_ctype" | "lc_messages" => "C",
        "application_name" => "",
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => "0",
        _ => return None,
    })
}

pub struct Connection {
    shared: Arc<Shared>,
    session: Mutex<Session>,
    /// Stops the session's running query (cancel requests, statement_timeout, the client
    /// going away), usable while the session is busy.
    interrupt: Arc<Interrupt>,
    /// The key cancel requests name this connection by, once known.
    backend_key: std::sync::OnceLock<BackendKey>,
    /// The user the client started up as (`current_user`), once known.
    user: std::sync::OnceLock<String>,
    /// Notices of the statement just run, sent before its answer.
    notices: std::sync::Mutex<Vec<String>>,
    variables: std::sync::Mutex<BTreeMap<String, String>>,
    parser: Arc<StatementParser>,
    /// Wakes the connection's supervisor to close the socket at once (a SUBSCRIBE client
    /// that stopped reading: nothing more can be written to it, not even an error).
    severed: tokio::sync::Notify,
    /// Statements run so far (the idle-in-transaction timer checks nothing ran since).
    statements: std::sync::atomic::AtomicU64,
    /// This connection, for timers that outlive a statement (set by [`Connection::start`]).
    myself: std::sync::OnceLock<std::sync::Weak<Connection>>,
}

impl Connection {
    fn new(shared: Arc<Shared>) -> Self {
        let session = Session::new(Arc::clone(&shared.database));
        let interrupt = session.interrupt();
        let parser = Arc::new(StatementParser { shared: Arc::clone(&shared) });
        Self {
            shared,
            session: Mutex::new(session),
            interrupt,
            backend_key: std::sync::OnceLock::new(),
            user: std::sync::OnceLock::new(),
            notices: Default::default(),
            variables: Default::default(),
            parser,
            severed: tokio::sync::Notify::new(),
            statements: std::sync::atomic::AtomicU64::new(0),
            myself: std::sync::OnceLock::new(),
        }
    }

    /// A new client's connection (its own timers can reach it).
    pub fn start(shared: Arc<Shared>) -> Arc<Self> {
        let connection = Arc::new(Self::new(shared));
        let _ = connection.myself.set(Arc::downgrade(&connection));
        connection
    }

    /// Asks for the connection to be closed without a goodbye (see `severed`).
    pub fn sever(&self) {
        self.severed.notify_one();
    }

    /// Resolves once [`Connection::sever`] was called.
    pub async fn severed(&self) {
        self.severed.notified().await
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn interrupt(&self) -> Arc<Interrupt> {
        Arc::clone(&self.interrupt)
    }

    /// Makes the connection reachable by cancel requests (its key is known once the client
    /// has started up) and notes who the client is.
    fn register_client<C: ClientInfo>(&self, client: &C) {
        if self.user.get().is_none()
            && let Some(user) = client.metadata().get(pgwire::api::METADATA_USER)
        {
            let _ = self.user.set(user.clone());
        }
        if self.backend_key.get().is_none() {
            let (pid, secret) = client.pid_and_secret_key();
            let key = backend_key(pid, &secret);
            self.shared.cancels.register(key.clone(), &self.interrupt);
            let _ = self.backend_key.set(key);
        }
    }

    /// Rolls back an open transaction block when the client goes away.
    pub async fn close(&self) {
        if let Some(key) = self.backend_key.get() {
            self.shared.cancels.unregister(key);
        }
        self.session.lock().await.close().await;
    }

    fn variable(&self, name: &str) -> Option<String> {
        let set = self.variables.lock().ok().and_then(|v| v.get(name).cloned());
        set.or_else(|| self.shared.variable_defaults.get(name).cloned())
            .or_else(|| default_variable(name).map(str::to_string))
    }

    fn duration_variable(&self, name: &str) -> Option<std::time::Duration> {
        self.variable(name).and_then(|t| parse_timeout(&t))
    }

    /// Sends the notices of the statement just run (PostgreSQL sends them before its answer).
    async fn send_notices<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let notices = self.notices.lock().map(|mut n| std::mem::take(&mut *n)).unwrap_or_default();
        for notice in notices {
            let info = pgwire::error::ErrorInfo::new("NOTICE".into(), "00000".into(), notice);
            futures_util::SinkExt::feed(client, PgWireBackendMessage::NoticeResponse(info.into())).await?;
        }
        Ok(())
    }

    /// Runs one command; rows are encoded in `format`.
    async fn run(&self, command: Command, format: &Format) -> PgWireResult<Response> {
        self.interrupt.set_timeout(self.duration_variable("statement_timeout"));
        self.interrupt.set_lock_timeout(self.duration_variable("lock_timeout"));
        let statement = self.statements.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let started = Instant::now();
        let result = self.run_command(command, format).await;
        self.shared.metrics.query_finished(started.elapsed(), result.is_ok());
        self.watch_idle_in_transaction(statement).await;
        result
    }

    /// With `idle_in_transaction_session_timeout`, closes the connection (rolling its
    /// transaction back) when the session is still inside a transaction block and has run
    /// nothing since `statement` once the timeout is up, as PostgreSQL does.
    async fn watch_idle_in_transaction(&self, statement: u64) {
        let Some(timeout) = self.duration_variable("idle_in_transaction_session_timeout").filter(|t| !t.is_zero())
        else {
            return;
        };
        if !self.session.lock().await.in_transaction() {
            return;
        }
        let Some(connection) = self.myself.get().and_then(std::sync::Weak::upgrade) else { return };
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let idle = connection.statements.load(std::sync::atomic::Ordering::Relaxed) == statement;
            if idle && connection.session.lock().await.in_transaction() {
                tracing::warn!(
                    timeout_ms = timeout.as_millis() as u64,
                    "closing a connection idle in a transaction block (idle_in_transaction_session_timeout); \
                     its transaction is rolled back"
                );
                connection.sever();
            }
        });
    }

    async fn run_command(&self, command: Command, format: &Format) -> PgWireResult<Response> {
        match command {
            Command::Engine(statement) => {
                let (statement, copy) = match super::copy::copy_out(&statement)? {
                    Some((query, format)) => (query, Some(format)),
                    None => (statement, None),
                };
                let mut session = self.session.lock().await;
                if let Some(user) = self.user.get() {
                    session.set_user(user);
                }
                let streamed = match session.execute_streaming(&statement).await {
                    // Drivers deallocate their protocol-level statements by name too.
                    Err(EngineError::Prepared { sqlstate: "26000", .. }) if is_deallocate(&statement) => {
                        Streamed::Output(Output::Command("DEALLOCATE".into()))
                    }
                    result => result.map_err(engine_error)?,
                };
                drop(session);
                match streamed {
                    Streamed::Output(output) => {
                        let (notices, output) = output.into_parts();
                        if let Ok(mut pending) = self.notices.lock() {
                            pending.extend(notices);
                        }
                        response(output, format)
                    }
                    Streamed::Rows { schema, rows } => match copy {
                        Some(copy) => super::copy::response(&schema, rows, copy).await,
                        None => streamed_response(&schema, rows, format).await,
                    },
                }
            }
            Command::Set { name, value } => {
                let duration = matches!(
                    name.as_str(),
                    "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout"
                );
                if duration && parse_timeout(&value).is_none() {
                    return Err(user_error("22023", format!("invalid value for parameter \"{name}\": \"{value}\"")));
                }
                if let Ok(mut variables) = self.variables.lock() {
                    variables.insert(name, value);
                }
                Ok(Response::Execution(Tag::new("SET")))
            }
            Command::ShowVariable(name) => {
                let Some(value) = self.variable(&name) else {
                    return Err(user_error("42704", format!("unrecognized configuration parameter \"{name}\"")));
                };
                let schema = statement::variable_schema(&name);
                let fields = Arc::new(encode::fields(&schema, format));
                let batch = datafusion::arrow::array::RecordBatch::try_new(
                    schema,
                    vec![Arc::new(datafusion::arrow::array::StringArray::from(vec![value]))],
                )
                .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
                let rows = encode::rows(&fields, &[batch])?;
                Ok(Response::Query(QueryResponse::new(fields, stream::iter(rows.into_iter().map(Ok)))))
            }
            Command::Acknowledge(tag) => Ok(Response::Execution(Tag::new(tag))),
            Command::Subscribe { .. } => {
                Err(user_error("0A000", "SUBSCRIBE must be the only statement of its query message".into()))
            }
        }
    }
}

/// A `statement_timeout` as PostgreSQL reads it: a number of milliseconds, or a number with
/// a unit (`ms`, `s`, `min`, `h`, `d`); 0 means none.
pub(super) fn parse_timeout(value: &str) -> Option<std::time::Duration> {
    let value = value.trim().trim_matches('\'').trim();
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let millis_per_unit = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    let millis = number * millis_per_unit;
    (millis <= i32::MAX as f64).then(|| std::time::Duration::from_millis(millis as u64))
}

fn is_deallocate(statement: &changeflow_sql::parser::ParsedStatement) -> bool {
    matches!(&statement.statement, changeflow_sql::parser::Statement::Sql(sql)
        if matches!(sql.as_ref(), datafusion::sql::sqlparser::ast::Statement::Deallocate { .. }))
}

/// The wire response to an engine output.
fn response(output: Output, format: &Format) -> PgWireResult<Response> {
    match output {
        Output::Rows { schema, batches } => {
            let fields = Arc::new(encode::fields(&schema, format));
            let rows = encode::rows(&fields, &batches)?;
            Ok(Response::Query(QueryResponse::new(fields, stream::iter(rows.into_iter().map(Ok)))))
        }
        Output::Noticed { output, .. } => response(*output, format),
        Output::Command(tag) => Ok(match tag.as_str() {
            "BEGIN" => Response::TransactionStart(Tag::new("BEGIN")),
            "COMMIT" | "ROLLBACK" => Response::TransactionEnd(Tag::new(&tag)),
            _ => Response::Execution(command_tag(&tag)),
        }),
    }
}

/// The wire response to a query's rows, encoded batch by batch as the client reads them.
/// An error before the first batch (a cancel, a timeout) answers the query alone, with its
/// SQLSTATE; one after rows were sent ends them, as in PostgreSQL.
async fn streamed_response(schema: &SchemaRef, rows: RowStream, format: &Format) -> PgWireResult<Response> {
    let fields = Arc::new(encode::fields(schema, format));
    let batches = batches_once_started(rows).await?;
    let encode_fields = Arc::clone(&fields);
    let data_rows = batches.flat_map(move |batch| {
        let encoded = batch.map_err(engine_error).and_then(|batch| encode::rows(&encode_fields, &[batch]));
        stream::iter(match encoded {
            Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(error) => vec![Err(error)],
        })
    });
    Ok(Response::Query(QueryResponse::new(fields, data_rows)))
}

/// A query's batches as a stream, once the first has come: an error before it (a cancel, a
/// timeout, a failing plan) is the statement's error, not part of its answer.
pub async fn batches_once_started(
    mut rows: RowStream,
) -> PgWireResult<impl futures_util::Stream<Item = changeflow_engine::Result<datafusion::arrow::array::RecordBatch>>> {
    let first = match rows.next().await {
        Some(Err(error)) => return Err(engine_error(error)),
        first => first,
    };
    Ok(stream::unfold((first, rows), |(mut pending, mut rows)| async move {
        let batch = match pending.take() {
            Some(batch) => batch,
            None => rows.next().await?,
        };
        Some((batch, (None, rows)))
    }))
}

/// `INSERT 0 3` -> tag INSERT with oid 0 and 3 rows; `UPDATE 2` -> UPDATE with 2 rows.
fn command_tag(text: &str) -> Tag {
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        ["INSERT", oid, rows] => match (oid.parse(), rows.parse()) {
            (Ok(oid), Ok(rows)) => Tag::new("INSERT").with_oid(oid).with_rows(rows),
            _ => Tag::new(text),
        },
        [command, rows] if matches!(*command, "UPDATE" | "DELETE" | "SELECT") => match rows.parse() {
            Ok(rows) => Tag::new(command).with_rows(rows),
            Err(_) => Tag::new(text),
        },
        _ => Tag::new(text),
    }
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.register_client(client);
        self.shared.check_statement_size(&query.query)?;
        if let Some(target) = subscribe::target(&query.query)? {
            return subscribe::simple(client, self, target).await;
        }
        self._on_query(client, query).await
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = match split_statements(query) {
            Ok(statements) => statements,
            Err(error) => return Ok(vec![error_response(engine_error(error.into()))]),
        };
        let mut responses = Vec::with_capacity(statements.len());
        for source in &statements {
            let result = match statement::command(source) {
                Ok(command) => self.run(command, &Format::UnifiedText).await,
                Err(error) => Err(error),
            };
            self.send_notices(client).await?;
            match result {
                Ok(response) => responses.push(response),
                Err(error) => {
                    // Like PostgreSQL: the rest of the message is not run.
                    responses.push(error_response(error));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

fn error_response(error: PgWireError) -> Response {
    Response::Error(Box::new(error.into()))
}

/// Parses and describes statements of the extended protocol against the engine.
pub struct StatementParser {
    shared: Arc<Shared>,
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        self.shared.check_statement_size(sql)?;
        statement::prepare(&self.shared.database, sql, types).await.map(Some)
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(statement.parameters.clone())
    }

    fn get_result_schema(&self, statement: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &statement.columns {
            Some(schema) => encode::fields(schema, format.unwrap_or(&Format::UnifiedBinary)),
            None => Vec::new(),
        })
    }
}

#[async_trait]
impl ExtendedQueryHandler for Connection {
    type Statement = Prepared;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        Arc::clone(&self.parser)
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.register_client(client);
        let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
        if let Some(pgwire::api::store::Entry::Value(portal)) = client.portal_store().get_portal(name)
            && let Command::Subscribe { relation, snapshot } = &portal.statement.statement.command
        {
            let fields = Arc::new(encode::fields(
                portal
                    .statement
                    .statement
                    .columns
                    .as_deref()
                    .ok_or_else(|| PgWireError::ApiError("a SUBSCRIBE statement without columns".into()))?,
                &portal.result_column_format,
            ));
            return subscribe::extended(client, self, relation, *snapshot, fields).await;
        }
        self._on_execute(client, message).await
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let mut command = prepared.command.clone();
        if let Command::Engine(statement) = &mut command {
            super::params::bind(statement, portal, &prepared.parameters)?;
        }
        let response = self.run(command, &portal.result_column_format).await;
        self.send_notices(client).await?;
        response
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Prepared>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &target.statement;
        let fields = self.parser.get_result_schema(prepared, None)?;
        Ok(DescribeStatementResponse::new(prepared.parameters.clone(), fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        target: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self.parser.get_result_schema(&target.statement.statement, Some(&target.result_column_format))?;
        Ok(DescribePortalResponse::new(fields))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_timeout;

    #[test]
    fn statement_timeouts_read_as_postgresql_reads_them() {
        for (text, millis) in
            [("0", 0), ("1500", 1500), ("'2s'", 2000), ("1min", 60_000), ("250ms", 250), ("1.5s", 1500)]
        {
            assert_eq!(parse_timeout(text), Some(Duration::from_millis(millis)), "{text}");
        }
        for bad in ["", "x", "-1", "5 parsecs", "1e99", "9999999999"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }
}
