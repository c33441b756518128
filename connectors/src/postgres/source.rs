//! The POSTGRES source: checks the upstream setup, creates the publication and slot it needs
//! (remembering which, so DROP SOURCE removes only those), copies a consistent snapshot,
//! then streams pgoutput from the slot. Each upstream transaction is applied whole; small
//! transactions already buffered are coalesced into one event. The slot's confirmed
//! position advances only to what the engine has applied, and when the captured tables
//! are idle, to the server's position, so the slot does not hold WAL for nothing. A lost
//! connection is retried with capped exponential backoff, resuming from the slot without
//! gaps or duplicates (transactions at or below the last emitted commit are dropped).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use changeflow_engine::Result;
use changeflow_engine::connector::{
    Progress, SourceConnector, SourceEvent, SourceMonitor, SourceReader, SourceRelationDef, SourceResume,
    UpstreamTransaction,
};
use changeflow_engine::keyed::RowOp;
use changeflow_sql::parser::CreateSource;
use tokio::task::JoinHandle;

use super::config::{PostgresConfig, quote_ident};
use super::decode::declared_schema;
use super::endpoint::HostCredentials;
use super::error::PgError;
use super::pgoutput::{
    LogicalMessage, OldTuple, StreamMessage, format_lsn, parse_logical_message, parse_lsn, parse_stream_message,
};
use super::protocol::ReplicationConnection;
use super::slot::{Resume, drop_slot, open_slot};
use super::snapshot::start_copy;
use super::spill::Spill;
use super::transaction::{CapturedTable, PendingChanges};
use super::upstream::{check_server, describe_tables, ensure_publication, keep_declared_columns};

/// Buffered transactions are coalesced into one event up to this many operations.
const COALESCE_OPERATIONS: usize = 100_000;
/// How often the confirmed position is reported (and a keepalive asked for).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct PostgresConnector {
    host_credentials: HostCredentials,
}

impl PostgresConnector {
    pub fn new(host_credentials: HostCredentials) -> Self {
        Self { host_credentials }
    }
}

#[async_trait]
impl SourceConnector for PostgresConnector {
    async fn describe(&self, create: &CreateSource) -> Result<Vec<SourceRelationDef>> {
        let config = PostgresConfig::from_statement(create, self.host_credentials)?;
        let client = config.connect().await?;
        check_server(&client, &config).await?;
        let tables = describe_tables(&client, &config).await?;
        let database: String =
            client.query_one("SELECT current_database()::text", &[]).await.map_err(PgError::from)?.get(0);
        Ok(tables
            .iter()
            .map(|t| SourceRelationDef {
                name: t.relation.clone(),
                schema: declared_schema(t),
                primary_key: t.key.clone(),
                expected_rows: t.estimated_rows as u64,
                upstream: Some(changeflow_engine::connector::UpstreamTable {
                    database: database.clone(),
                    schema: t.schema.clone(),
                    table: t.name.clone(),
                }),
            })
            .collect())
    }

    async fn open(
        &self,
        create: &CreateSource,
        resume: SourceResume,
        relations: &[SourceRelationDef],
        monitor: SourceMonitor,
    ) -> Result<Box<dyn SourceReader>> {
        let config = PostgresConfig::from_statement(create, self.host_credentials)?;
        Ok(Box::new(PostgresReader::open(config, monitor, resume, relations).await?))
    }
}

/// Positions shared with the task that measures lag and retained WAL.
#[derive(Default)]
struct Positions {
    received: AtomicU64,
    confirmed: AtomicU64,
    streaming: AtomicBool,
    /// Schema changes seen upstream, appended to SHOW SOURCES' detail.
    warnings: std::sync::Mutex<String>,
}

impl Positions {
    fn set_warnings(&self, warnings: &[String]) {
        if let Ok(mut text) = self.warnings.lock() {
            *text = warnings.join("; ");
        }
    }
}

struct PostgresReader {
    config: PostgresConfig,
    monitor: SourceMonitor,
    tables: Vec<CapturedTable>,
    by_oid: HashMap<u32, usize>,
    connection: Option<ReplicationConnection>,
    /// The exported snapshot still to copy, and the slot's consistent point.
    snapshot: Option<(String, u64)>,
    streaming: bool,
    created_slot: bool,
    created_publication: bool,
    pending: PendingChanges,
    /// Parts of a large transaction already written to disk.
    spill: Option<Spill>,
    /// Columns dropped upstream, to report to the engine before anything else.
    dropped: Vec<(String, Vec<String>)>,
    /// Schema changes seen, for SHOW SOURCES.
    schema_warnings: Vec<String>,
    /// Inside a transaction: whether it is skipped (already applied).
    in_transaction: Option<bool>,
    pending_end: Option<u64>,
    /// The transaction being read (from its Begin message).
    current_transaction: Option<UpstreamTransaction>,
    /// Transactions gathered since the last event, and the newest of them.
    gathered_transactions: usize,
    last_transaction: Option<UpstreamTransaction>,
    /// Transactions whose commit LSN is below this are gathered already (or were applied
    /// before a restart), and below the second one, emitted: the end LSN of the newest.
    gathered_end: u64,
    emitted_end: u64,
    confirmed: u64,
    positions: Arc<Positions>,
    status_timer: tokio::time::Interval,
    last_status: Instant,
    backoff: Duration,
    poller: Option<JoinHandle<()>>,
}

impl PostgresReader {
    async fn open(
        config: PostgresConfig,
        monitor: SourceMonitor,
        resume: SourceResume,
        relations: &[SourceRelationDef],
    ) -> Result<Self, PgError> {
        let client = config.connect().await?;
        check_server(&client, &config).await?;
        let (tables, schema_changes) =
            keep_declared_columns(describe_tables(&client, &config).await?, relations, &config)?;
        for warning in &schema_changes.warnings {
            tracing::warn!(source = %config.source, "{warning}");
        }
        let resume = Resume::parse(&config, &resume)?;
        let created_publication = ensure_publication(&client, &config, &tables).await? || resume.created_publication;
        let result = open_slot(&config, &client, &resume).await;
        let (connection, snapshot, created_slot, start) = match result {
            Ok(opened) => opened,
            Err(error) => {
                if created_publication {
                    let _ =
                        client.batch_execute(&format!("DROP PUBLICATION {}", quote_ident(&config.publication))).await;
                }
                return Err(error);
            }
        };
        let positions = Arc::new(Positions::default());
        positions.confirmed.store(start, Ordering::Relaxed);
        positions.set_warnings(&schema_changes.warnings);
        let poller = tokio::spawn(poll_server(config.clone(), monitor.clone(), Arc::clone(&positions)));
        let count = tables.len();
        Ok(Self {
            config,
            monitor,
            tables: tables.into_iter().map(CapturedTable::new).collect(),
            by_oid: HashMap::new(),
            connection: Some(connection),
            snapshot,
            streaming: false,
            created_slot,
            created_publication,
            pending: PendingChanges::new(count),
            spill: None,
            dropped: schema_changes.dropped,
            schema_warnings: schema_changes.warnings,
            in_transaction: None,
            pending_end: None,
            current_transaction: None,
            gathered_transactions: 0,
            last_transaction: None,
            gathered_end: start,
            emitted_end: start,
            confirmed: start,
            positions,
            status_timer: tokio::time::interval(STATUS_INTERVAL),
            last_status: Instant::now(),
            backoff: Duration::from_millis(250),
            poller: Some(poller),
        })
    }

    /// Connects (when needed) and starts streaming from the confirmed position.
    async fn start_streaming(&mut self) -> Result<(), PgError> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self.connection.insert(ReplicationConnection::connect(&self.config.endpoint).await?),
        };
        let publication = quote_ident(&self.config.publication).replace('\'', "''");
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names '{publication}')",
            quote_ident(&self.config.slot),
            format_lsn(self.confirmed)
        );
        connection.start_replication(&command).await?;
        self.streaming = true;
        self.positions.streaming.store(true, Ordering::Relaxed);
        self.monitor.set_state("streaming");
        self.backoff = Duration::from_millis(250);
        Ok(())
    }

    /// Forgets the connection and anything not yet emitted; the slot sends it again.
    async fn retry_after(&mut self, error: &PgError) {
        tracing::warn!(source = %self.config.source, %error, "replication connection lost; retrying");
        self.monitor.set_state(format!("retrying: {error}"));
        self.connection = None;
        self.streaming = false;
        self.pending.clear();
        self.spill = None;
        self.pending_end = None;
        self.in_transaction = None;
        self.current_transaction = None;
        self.gathered_transactions = 0;
        self.last_transaction = None;
        self.gathered_end = self.emitted_end;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    async fn take_snapshot(&mut self, name: &str, consistent_point: u64) -> Result<SourceEvent, PgError> {
        self.monitor.set_state("snapshotting");
        let upstream: Vec<_> = self.tables.iter().map(|t| t.upstream.clone()).collect();
        let parts = start_copy(&self.config, name, &upstream, &self.monitor).await?;
        Ok(SourceEvent::LargeTransaction {
            parts: Box::new(parts),
            progress: Progress(format_lsn(consistent_point)),
            snapshot: true,
            transaction: None,
        })
    }

    /// Reads until an event is ready (or the stream needs attention).
    async fn read_event(&mut self) -> Result<Option<SourceEvent>, PgError> {
        if let Some((relation, columns)) = self.dropped.pop() {
            self.positions.set_warnings(&self.schema_warnings);
            return Ok(Some(SourceEvent::ColumnsDropped { relation, columns }));
        }
        let connection = self.connection.as_mut().ok_or_else(|| PgError::protocol("not connected"))?;
        // Whole transactions wait for company only while more is already buffered.
        if self.pending_end.is_some() && self.in_transaction.is_none() && !connection.has_buffered_message() {
            return self.emit().map(Some);
        }
        let payload = tokio::select! {
            payload = connection.next_copy_data() => payload?,
            _ = self.status_timer.tick() => {
                let idle = self.in_transaction.is_none() && self.pending_end.is_none();
                self.send_status(idle).await?;
                return Ok(None);
            }
        };
        let Some(payload) = payload else {
            return Err(PgError::Connect {
                target: self.config.display_url.clone(),
                message: "the server ended the replication stream".into(),
            });
        };
        match parse_stream_message(payload)? {
            StreamMessage::Keepalive { end, reply } => {
                self.positions.received.fetch_max(end, Ordering::Relaxed);
                let idle = self.in_transaction.is_none() && self.pending_end.is_none();
                if idle && end > self.confirmed {
                    // Nothing of ours is in flight below `end`: it may be confirmed once the
                    // engine has seen it, so the slot releases WAL of other tables.
                    return Ok(Some(SourceEvent::Progress(Progress(format_lsn(end)))));
                }
                if reply {
                    self.send_status(false).await?;
                }
                Ok(None)
            }
            StreamMessage::XLogData { end, message, .. } => {
                self.positions.received.fetch_max(end, Ordering::Relaxed);
                self.handle_message(message)
            }
        }
    }

    fn handle_message(&mut self, message: Bytes) -> Result<Option<SourceEvent>, PgError> {
        match parse_logical_message(message)? {
            LogicalMessage::Begin { final_lsn, commit_micros, xid } => {
                self.in_transaction = Some(final_lsn < self.gathered_end);
                self.current_transaction = Some(UpstreamTransaction { id: i64::from(xid), commit_micros });
            }
            LogicalMessage::Commit { end_lsn, .. } => {
                let skipped = self.in_transaction.take().unwrap_or(true);
                let transaction = self.current_transaction.take();
                if skipped {
                    return Ok(None);
                }
                self.gathered_end = end_lsn;
                self.pending_end = Some(end_lsn);
                self.gathered_transactions += 1;
                self.last_transaction = transaction;
                let more_buffered = self.connection.as_ref().is_some_and(|c| c.has_buffered_message());
                let coalesce =
                    more_buffered && self.pending.operations < COALESCE_OPERATIONS && !self.monitor.per_transaction();
                if self.spill.is_some() || !coalesce {
                    return self.emit().map(Some);
                }
            }
            LogicalMessage::Relation(relation) => {
                let found = self
                    .tables
                    .iter()
                    .position(|t| t.upstream.schema == relation.namespace && t.upstream.name == relation.name);
                if let Some(index) = found {
                    self.by_oid.insert(relation.oid, index);
                    let dropped = self.tables[index].apply_relation(&relation);
                    if !dropped.is_empty() {
                        let table = &self.tables[index].upstream;
                        let warning = format!(
                            "column(s) {} of {} were dropped upstream; relation \"{}\" reads them as NULL, and views \
                             reading them fail",
                            dropped.join(", "),
                            table.display(),
                            table.relation
                        );
                        tracing::warn!(source = %self.config.source, "{warning}");
                        self.schema_warnings.push(warning);
                        self.dropped.push((table.relation.clone(), dropped));
                    }
                }
            }
            LogicalMessage::Insert { relation, new } => {
                if let Some(index) = self.captured(relation) {
                    let table = &self.tables[index];
                    let row = self.pending.push_tuple(index, table, &new)?;
                    self.pending.push_op(index, table, RowOp::Insert(row));
                }
            }
            LogicalMessage::Update { relation, new, .. } if self.append_only(relation) => {
                if let Some(index) = self.captured(relation) {
                    let table = &self.tables[index];
                    let row = self.pending.push_tuple(index, table, &new)?;
                    self.pending.push_op(index, table, RowOp::Insert(row));
                }
            }
            LogicalMessage::Delete { relation, .. } if self.append_only(relation) => {}
            LogicalMessage::Update { relation, old, new } => {
                if let Some(index) = self.captured(relation) {
                    let table = &self.tables[index];
                    let old = match old {
                        Some((_, old)) => Some(self.pending.push_tuple(index, table, &old)?),
                        None => None,
                    };
                    let new = self.pending.push_tuple(index, table, &new)?;
                    self.pending.push_op(index, table, RowOp::Update { old, new });
                }
            }
            LogicalMessage::Delete { relation, old: (kind, old) } => {
                if let Some(index) = self.captured(relation) {
                    let table = &self.tables[index];
                    if kind == OldTuple::Key && table.upstream.key.is_empty() {
                        return Err(PgError::Setup(format!(
                            "a delete on {} carried only a key, and the table has none",
                            table.upstream.display()
                        )));
                    }
                    let row = self.pending.push_tuple(index, table, &old)?;
                    self.pending.push_op(index, table, RowOp::Delete(row));
                }
            }
            LogicalMessage::Truncate { relations } => {
                for relation in relations {
                    if self.append_only(relation) {
                        continue;
                    }
                    if let Some(index) = self.captured(relation) {
                        self.pending.push_op(index, &self.tables[index], RowOp::Truncate);
                    }
                }
            }
            LogicalMessage::Other => {}
        }
        if self.pending.operations >= self.config.spill_after_operations {
            self.spill_pending()?;
        }
        Ok(None)
    }

    /// Writes what is gathered so far to disk as one part of a large transaction.
    fn spill_pending(&mut self) -> Result<(), PgError> {
        let part = self.pending.take(&self.tables)?;
        let spill = match &mut self.spill {
            Some(spill) => spill,
            None => self.spill.insert(Spill::new(&self.config.source)?),
        };
        spill.write_part(part)?;
        tracing::debug!(source = %self.config.source, operations = spill.operations(), "spilled part of a large transaction");
        Ok(())
    }

    /// Whether a relation oid is an append-only relation of this source.
    fn append_only(&self, oid: u32) -> bool {
        self.by_oid.get(&oid).is_some_and(|&i| self.config.is_append_only(&self.tables[i].upstream.relation))
    }

    /// The captured table of a relation oid, within a transaction that is not skipped.
    fn captured(&self, oid: u32) -> Option<usize> {
        if self.in_transaction != Some(false) {
            return None;
        }
        self.by_oid.get(&oid).copied()
    }

    /// The gathered transactions as one event.
    fn emit(&mut self) -> Result<SourceEvent, PgError> {
        let end = self.pending_end.take().unwrap_or(self.confirmed);
        self.emitted_end = self.gathered_end;
        let changes = self.pending.take(&self.tables)?;
        let progress = Progress(format_lsn(end));
        // Events of exactly one transaction say which one.
        let transaction = if self.gathered_transactions == 1 { self.last_transaction } else { None };
        self.gathered_transactions = 0;
        self.last_transaction = None;
        if let Some(spill) = self.spill.take() {
            let spill = spill.finish(changes);
            tracing::info!(
                source = %self.config.source, operations = spill.operations(),
                "applying a large transaction spilled to disk"
            );
            return Ok(SourceEvent::LargeTransaction {
                parts: Box::new(spill),
                progress,
                snapshot: false,
                transaction,
            });
        }
        Ok(if changes.is_empty() {
            SourceEvent::Progress(progress)
        } else {
            SourceEvent::Transaction { changes, progress, transaction }
        })
    }

    async fn send_status(&mut self, ask_for_reply: bool) -> Result<(), PgError> {
        let received = self.positions.received.load(Ordering::Relaxed).max(self.confirmed);
        if let Some(connection) = self.connection.as_mut().filter(|_| self.streaming) {
            connection.send_status(received, self.confirmed, ask_for_reply).await?;
            self.last_status = Instant::now();
        }
        Ok(())
    }
}

#[async_trait]
impl SourceReader for PostgresReader {
    async fn next(&mut self) -> Result<Option<SourceEvent>> {
        if let Some((name, point)) = self.snapshot.take() {
            return Ok(Some(self.take_snapshot(&name, point).await?));
        }
        loop {
            if !self.streaming
                && let Err(error) = self.start_streaming().await
            {
                if !error.is_transient() {
                    return Err(error.into());
                }
                self.retry_after(&error).await;
                continue;
            }
            match self.read_event().await {
                Ok(Some(event)) => return Ok(Some(event)),
                Ok(None) => {}
                Err(error) if error.is_transient() => self.retry_after(&error).await,
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn commit(&mut self, upto: &Progress) -> Result<()> {
        let Some(lsn) = parse_lsn(&upto.0) else { return Ok(()) };
        if lsn <= self.confirmed {
            return Ok(());
        }
        self.confirmed = lsn;
        self.positions.confirmed.store(lsn, Ordering::Relaxed);
        if self.last_status.elapsed() >= Duration::from_millis(100) && self.send_status(false).await.is_err() {
            // A lost connection shows up on the next read, which retries.
            self.streaming = false;
            self.connection = None;
        }
        Ok(())
    }

    fn upstream_state(&self) -> Option<String> {
        Resume::upstream_state(self.created_slot, self.created_publication)
    }

    async fn close(&mut self, drop_upstream: bool) -> Result<()> {
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
        if let Some(connection) = self.connection.take() {
            connection.terminate().await;
        }
        self.streaming = false;
        if !drop_upstream || !(self.created_slot || self.created_publication) {
            return Ok(());
        }
        let client = self.config.connect().await?;
        if self.created_slot {
            drop_slot(&client, &self.config.slot).await?;
        }
        if self.created_publication {
            client
                .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&self.config.publication)))
                .await
                .map_err(PgError::from)?;
        }
        Ok(())
    }
}

impl Drop for PostgresReader {
    fn drop(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
    }
}

/// Once a second: the server's WAL position and the WAL the slot retains, for `SHOW
/// SOURCES`, with a warning when the retained WAL passes the configured threshold.
async fn poll_server(config: PostgresConfig, monitor: SourceMonitor, positions: Arc<Positions>) {
    let retained = AtomicI64::new(-1);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut warned = false;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = config.connect().await.ok();
        }
        let Some(connected) = &client else { continue };
        let row = connected
            .query_opt(
                "SELECT pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&config.slot],
            )
            .await;
        let Ok(Some(row)) = row else { continue };
        let current = row.get::<_, Option<String>>(0).as_deref().and_then(parse_lsn).unwrap_or(0);
        let retained_bytes = row.get::<_, Option<i64>>(1).unwrap_or(0);
        retained.store(retained_bytes, Ordering::Relaxed);
        if retained_bytes as u64 > config.retained_wal_warning && !warned {
            tracing::warn!(
                source = %config.source, slot = %config.slot, retained_bytes,
                "the replication slot retains more WAL than retained_wal_warning_bytes; the database's disk may fill"
            );
            warned = true;
        } else if (retained_bytes as u64) < config.retained_wal_warning / 2 {
            warned = false;
        }
        if positions.streaming.load(Ordering::Relaxed) {
            let confirmed = positions.confirmed.load(Ordering::Relaxed);
            let received = positions.received.load(Ordering::Relaxed).max(confirmed);
            let warnings = positions.warnings.lock().map(|w| w.clone()).unwrap_or_default();
            monitor.set_lag(current.saturating_sub(confirmed), retained_bytes.max(0) as u64);
            monitor.set_detail(format!(
                "received {}, confirmed {}, lag {} bytes, retained WAL {} bytes{}{warnings}",
                format_lsn(received),
                format_lsn(confirmed),
                current.saturating_sub(confirmed),
                retained_bytes,
                if warnings.is_empty() { "" } else { "; " },
            ));
        }
    }
}
