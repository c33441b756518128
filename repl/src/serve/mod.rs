//! `changeflow serve`: runs SQL files, then serves the engine over the Postgres wire protocol
//! (psql, drivers, BI tools) and `/metrics` + `/health` over HTTP, until SIGINT or SIGTERM.

mod admission;
mod auth;
mod cancel;
mod copy;
mod encode;
mod handler;
mod metrics;
mod params;
mod statement;
mod subscribe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use changeflow_engine::{Database, Session};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ConnectionManager, PgWireServerHandlers};
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::auth::{Startup, Users};
use self::handler::Connection;
use self::metrics::Metrics;

#[derive(Debug, clap::Args)]
pub struct ServeOptions {
    /// Address of the Postgres wire protocol.
    #[arg(long, default_value = "127.0.0.1:6875")]
    pub listen: SocketAddr,
    /// Address of the HTTP server with /metrics and /health.
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub metrics_listen: SocketAddr,
    /// Require SCRAM-SHA-256 passwords from this file of `user:password` lines. The
    /// CHANGEFLOW_USERS environment variable, in the same form, is read when this is absent.
    #[arg(long)]
    pub users: Option<PathBuf>,
    /// PEM certificate for TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Refuse clients that do not use TLS (28000), so no password or row crosses the
    /// network in the clear. Needs --tls-cert and --tls-key.
    #[arg(long, requires = "tls_cert")]
    pub tls_required: bool,
    /// Most client connections open at once; a client past it is refused with SQLSTATE
    /// 53300 ("too many clients").
    #[arg(long, default_value_t = 100)]
    pub max_connections: usize,
    /// Longest statement text (a query message or a statement to prepare) accepted, in
    /// bytes; a longer one is refused with SQLSTATE 54000 before it is parsed.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_statement_bytes: usize,
    /// Most memory, in MiB, the operators of one query (joins, sorts, aggregates) may hold;
    /// a query past it fails with SQLSTATE 53200. 0 for no limit.
    #[arg(long, default_value_t = 2048)]
    pub query_memory_mb: usize,
    /// Most MiB of changes a SUBSCRIBE may have waiting for a client that does not read;
    /// past it the subscription ends with an error.
    #[arg(long, default_value_t = 64)]
    pub subscribe_buffer_mb: usize,
    /// Allow trust authentication (no --users) on an address other than loopback: anyone
    /// who can reach the port may then read and write everything.
    #[arg(long)]
    pub allow_trust_remote: bool,
    /// Default `statement_timeout` of sessions (PostgreSQL's form: `5s`, `250ms`; 0 for none).
    #[arg(long, default_value = "0", value_parser = parse_duration_option)]
    pub statement_timeout: String,
    /// Default `lock_timeout`: how long a write waits for another session's transaction
    /// before failing with 55P03 (0 for no limit).
    #[arg(long, default_value = "0", value_parser = parse_duration_option)]
    pub lock_timeout: String,
    /// Default `idle_in_transaction_session_timeout`: a session idle that long inside a
    /// transaction block is closed and its transaction rolled back (0 for never).
    #[arg(long, default_value = "0", value_parser = parse_duration_option)]
    pub idle_in_transaction_session_timeout: String,
    /// SQL files run in order before serving (sources, views, tables).
    pub files: Vec<PathBuf>,
}

/// What every connection shares.
pub struct Shared {
    database: Arc<Database>,
    /// Defaults of the session variables set by server options (`--lock-timeout`, ...).
    variable_defaults: std::collections::BTreeMap<&'static str, String>,
    metrics: Arc<Metrics>,
    /// Longest statement text accepted (`--max-statement-bytes`).
    max_statement_bytes: usize,
    /// The open connections' interrupts, for cancel requests.
    cancels: Arc<cancel::CancelRegistry>,
}

impl Shared {
    /// Refuses a statement text longer than `--max-statement-bytes` (54000), before it is
    /// parsed.
    fn check_statement_size(&self, text: &str) -> pgwire::error::PgWireResult<()> {
        if text.len() <= self.max_statement_bytes {
            return Ok(());
        }
        Err(statement::user_error(
            "54000",
            format!(
                "statement is {} bytes, more than the limit of {} bytes (--max-statement-bytes)",
                text.len(),
                self.max_statement_bytes
            ),
        ))
    }
}

/// The pgwire handlers of one connection.
struct Handlers {
    connection: Arc<Connection>,
    startup: Arc<Startup>,
    cancel: Arc<cancel::CancelRequests>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.connection)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.connection)
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// Runs the files, then serves until SIGINT / SIGTERM; sources are stopped on the way out.
pub async fn serve(options: ServeOptions, storage: &crate::storage::StorageOptions) -> anyhow::Result<()> {
    let users = match (&options.users, std::env::var("CHANGEFLOW_USERS")) {
        (Some(path), _) => Some(Arc::new(Users::load(path)?)),
        (None, Ok(text)) if !text.trim().is_empty() => {
            Some(Arc::new(Users::parse(&text.replace(',', "\n"), "CHANGEFLOW_USERS")?))
        }
        _ => None,
    };
    let tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(auth::tls_acceptor(cert, key)?),
        _ => None,
    };
    if users.is_none() && !options.listen.ip().is_loopback() && !options.allow_trust_remote {
        anyhow::bail!(
            "refusing to serve {} without passwords: on an address other than loopback anyone who reaches \
             the port could read and write everything. Give --users FILE (or CHANGEFLOW_USERS), listen on \
             127.0.0.1, or pass --allow-trust-remote to accept that",
            options.listen
        );
    }
    let database = Arc::new(storage.open(Some("changeflow-data"), true).await?);
    let query_memory = (options.query_memory_mb > 0).then(|| options.query_memory_mb.saturating_mul(1 << 20));
    database.set_query_memory_limit(query_memory).await;
    database.engine().await.set_subscription_buffer_bytes(options.subscribe_buffer_mb.saturating_mul(1 << 20));
    if let Err(error) = run_files(&database, &options.files).await {
        database.shutdown().await;
        return Err(error);
    }

    let listener =
        TcpListener::bind(options.listen).await.with_context(|| format!("cannot listen on {}", options.listen))?;
    let metrics_listener = TcpListener::bind(options.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {} for metrics", options.metrics_listen))?;
    let shared = Arc::new(Shared {
        database: Arc::clone(&database),
        variable_defaults: [
            ("statement_timeout", options.statement_timeout.clone()),
            ("lock_timeout", options.lock_timeout.clone()),
            ("idle_in_transaction_session_timeout", options.idle_in_transaction_session_timeout.clone()),
        ]
        .into_iter()
        .collect(),
        metrics: Arc::new(Metrics::default()),
        max_statement_bytes: options.max_statement_bytes,
        cancels: Arc::default(),
    });
    let (stop, stopped) = watch::channel(false);
    let metrics_task = tokio::spawn(metrics::serve(
        metrics_listener,
        Arc::clone(&database),
        Arc::clone(&shared.metrics),
        stopped.clone(),
    ));
    tracing::info!(
        listen = %options.listen,
        metrics = %options.metrics_listen,
        authentication = if users.is_some() { "scram-sha-256" } else { "trust" },
        tls = tls.is_some(),
        "serving"
    );
    eprintln!(
        "changeflow serving on {} (psql -h {} -p {}), metrics on http://{}/metrics",
        options.listen,
        options.listen.ip(),
        options.listen.port(),
        options.metrics_listen
    );
    let connections = Arc::new(ConnectionManager::new());
    let startup = Arc::new(Startup::new(users, Arc::clone(&connections), options.tls_required));
    let accept =
        accept_loop(listener, Arc::clone(&shared), startup, tls, connections, options.max_connections, stopped);
    tokio::select! {
        () = accept => {}
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down");
            eprintln!("changeflow: {signal}, shutting down");
        }
    }
    let _ = stop.send(true);
    let _ = metrics_task.await;
    database.shutdown().await;
    eprintln!("changeflow: stopped");
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    startup: Arc<Startup>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    connections: Arc<ConnectionManager>,
    max_connections: usize,
    mut stopped: watch::Receiver<bool>,
) {
    let cancel = Arc::new(cancel::CancelRequests::new(Arc::clone(&shared.cancels), connections));
    let mut backoff = admission::AcceptBackoff::default();
    let disconnects = cancel::DisconnectWatch::start();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => {
                backoff.accepted();
                accepted
            }
            Err(error) => {
                let wait = backoff.failed(&error);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                continue;
            }
        };
        if !shared.metrics.try_admit_connection(max_connections) {
            // Counted in changeflow_connections_refused_total; a log line each would let a
            // flood of clients flood the log.
            tracing::debug!(%peer, max_connections, "refused a connection: --max-connections are open");
            tokio::spawn(admission::refuse(socket, max_connections));
            continue;
        }
        let connection = Connection::start(Arc::clone(&shared));
        disconnects.watch(&socket, &connection.interrupt());
        let handlers = Handlers {
            connection: Arc::clone(&connection),
            startup: Arc::clone(&startup),
            cancel: Arc::clone(&cancel),
        };
        let tls = tls.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _live = shared.metrics.open_connection();
            tracing::debug!(%peer, "connection opened");
            // The protocol runs on a task of its own: a panic in it (a bug) ends that task
            // only; the session is rolled back and this connection alone is closed.
            let mut protocol = tokio::spawn(pgwire::tokio::process_socket(socket, tls, handlers));
            let finished = tokio::select! {
                finished = &mut protocol => finished,
                () = connection.severed() => {
                    // Dropping the task drops the socket: the client is disconnected.
                    protocol.abort();
                    protocol.await
                }
            };
            match finished {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "connection ended with an error"),
                Err(error) if error.is_panic() => {
                    let message = changeflow_engine::error::panic_message(&*error.into_panic());
                    tracing::error!(%peer, panic = %message, "a connection's task panicked; its session is rolled back");
                    shared.metrics.connection_panicked(&peer.to_string(), &message);
                }
                Err(error) => tracing::debug!(%peer, %error, "connection task cancelled"),
            }
            connection.close().await;
            tracing::debug!(%peer, "connection closed");
        });
    }
}

/// Runs the SQL files in order, stopping at the first error (named by file, line, column).
/// Runs the startup files. With a data directory, restarting with the same files is safe:
/// DDL already there is a no-op, and INSERT / UPDATE / DELETE that took effect at an earlier
/// start are skipped (recorded once committed).
async fn run_files(database: &Arc<Database>, files: &[PathBuf]) -> anyhow::Result<()> {
    use datafusion::sql::sqlparser::ast;
    let mut session = Session::new(Arc::clone(database));
    let mut skipped = 0;
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let name = file.display().to_string();
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        // Writes of an open transaction block, recorded at its COMMIT.
        let mut in_block: Vec<String> = Vec::new();
        for source in changeflow_sql::parser::split_statements(&text)
            .map_err(|e| located(file, e.position().unwrap_or_default(), &e.to_string()))?
        {
            let statement = changeflow_sql::parser::parse_statement(&source)
                .map_err(|e| located(file, e.position().unwrap_or(source.position), &e.to_string()))?;
            let sql = match &statement.statement {
                changeflow_sql::parser::Statement::Sql(sql) => Some(sql.as_ref()),
                _ => None,
            };
            let key = match sql {
                Some(ast::Statement::Insert(_) | ast::Statement::Update(_) | ast::Statement::Delete(_)) => {
                    let occurrence = seen.entry(statement.text.clone()).or_insert(0);
                    *occurrence += 1;
                    Some(Database::startup_key(&name, &statement.text, *occurrence))
                }
                _ => None,
            };
            if let Some(key) = &key
                && database.startup_applied(key).await
            {
                skipped += 1;
                continue;
            }
            session.execute(&statement).await.map_err(|e| located(file, statement.position, &e.to_string()))?;
            match (key, sql) {
                (Some(key), _) if session.in_transaction() => in_block.push(key),
                (Some(key), _) => database.record_startup(vec![key]).await?,
                (None, Some(ast::Statement::Commit { .. })) => {
                    database.record_startup(std::mem::take(&mut in_block)).await?
                }
                (None, Some(ast::Statement::Rollback { .. })) => in_block.clear(),
                _ => {}
            }
        }
    }
    session.close().await;
    if skipped > 0 {
        eprintln!(
            "changeflow: {skipped} write{} of the startup files took effect at an earlier start; skipped",
            if skipped == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn located(file: &std::path::Path, position: changeflow_sql::error::Position, message: &str) -> anyhow::Error {
    let message = changeflow_engine::redact::redact_credentials(message);
    anyhow::anyhow!("{}:{}:{}: {message}", file.display(), position.line, position.column)
}

/// Resolves with the name of the signal that asks the server to stop.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// A duration option in PostgreSQL's form (see [`handler::parse_timeout`]).
fn parse_duration_option(value: &str) -> Result<String, String> {
    handler::parse_timeout(value)
        .map(|_| value.to_string())
        .ok_or_else(|| format!("'{value}' is not a duration: milliseconds, or a number with ms, s, min, h or d"))
}
