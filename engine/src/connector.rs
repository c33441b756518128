//! The contracts between the engine and connectors. The engine never names a concrete
//! connector: the binary hands it a [`ConnectorRegistry`].
//!
//! A source, in order: [`SourceConnector::describe`] validates the statement's options and
//! tables and declares the relations the source feeds (reading the upstream catalog when the
//! schemas live there; it changes nothing upstream, and `changeflow check` runs it);
//! [`SourceConnector::open`] prepares the upstream side (slots, subscriptions) and returns a
//! reader, resuming after `resume` when given (a restart from the data directory); the
//! engine then calls [`SourceReader::next`] in a loop on one task. Each
//! [`SourceEvent::Transaction`] is applied as one unit (a view never shows part of it).
//! [`SourceReader::commit`] is called only for positions whose changes are applied (and,
//! with a data directory, in a checkpoint): a reader may then let the upstream system
//! discard them. [`SourceReader::close`] ends the reader; with `drop_upstream` (DROP
//! SOURCE) it also removes what `open` created upstream, and nothing it did not create.
//! Readers report their state for `SHOW SOURCES` through the [`SourceMonitor`] they are given.
//!
//! A sink: [`SinkConnector::validate`] checks its options against the relation it delivers;
//! [`SinkConnector::open`] prepares the target and returns a writer, which receives whole
//! epochs in order ([`SinkWriter::write_epoch`]) and, at each checkpoint, makes them durable
//! and reports a position ([`SinkWriter::flush`]); a restart reopens it at that position and
//! delivers what came after it again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use changeflow_sql::parser::CreateSource;
use datafusion::arrow::datatypes::SchemaRef;

use crate::change::ChangeBatch;
use crate::error::Result;
use crate::keyed::KeyedChanges;

/// A relation a source feeds.
#[derive(Debug, Clone)]
pub struct SourceRelationDef {
    pub name: String,
    pub schema: SchemaRef,
    pub primary_key: Vec<usize>,
    /// Rows the relation is expected to start with (0 when unknown): its store is sized for
    /// them up front instead of growing through the initial load.
    pub expected_rows: u64,
    /// The upstream table it mirrors, when there is one (Debezium's `source.db`, `schema`
    /// and `table` in what sinks write).
    pub upstream: Option<UpstreamTable>,
}

/// A table of an upstream database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTable {
    pub database: String,
    pub schema: String,
    pub table: String,
}

/// An opaque upstream position (an LSN, offsets, sequence numbers): only its source reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress(pub String);

/// [`SourceResume::upstream`] of a source whose first `open` may have been interrupted by a
/// crash: it may have created things upstream before it could say so.
pub const OPENING: &str = "opening";

/// Where a reopened source resumes: the position of the last transaction applied (and, with
/// a data directory, durable), and what it had created upstream (see
/// [`SourceReader::upstream_state`]), so DROP SOURCE still removes exactly that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceResume {
    pub progress: Option<Progress>,
    pub upstream: Option<String>,
}

/// The changes of one relation within a source transaction.
#[derive(Debug, Clone)]
pub enum SourceChanges {
    /// Rows with weights, ready to apply.
    Weighted(ChangeBatch),
    /// Operations by primary key, resolved against the relation's stored rows. A transaction
    /// carries at most one keyed entry per relation.
    Keyed(KeyedChanges),
}

impl SourceChanges {
    pub fn len(&self) -> usize {
        match self {
            SourceChanges::Weighted(batch) => batch.len(),
            SourceChanges::Keyed(keyed) => keyed.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The upstream transaction an event holds, when it holds exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTransaction {
    /// The upstream's transaction id (PostgreSQL's xid).
    pub id: i64,
    /// When it committed upstream, in microseconds since the Unix epoch.
    pub commit_micros: i64,
}

/// Where an epoch came from: the source, its position after the epoch, and the upstream
/// transaction when the epoch is exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    pub progress: Progress,
    pub transaction: Option<UpstreamTransaction>,
}

#[derive(Debug)]
pub enum SourceEvent {
    /// One upstream transaction (or several whole ones, coalesced unless
    /// [`SourceMonitor::per_transaction`] asks otherwise): changes per relation, the position
    /// after it, and the transaction when there is exactly one.
    Transaction { changes: Vec<(String, SourceChanges)>, progress: Progress, transaction: Option<UpstreamTransaction> },
    /// A transaction too large to hold in memory (or the initial snapshot, `snapshot`): its
    /// parts are read one after another and applied within one epoch.
    LargeTransaction {
        parts: Box<dyn TransactionParts>,
        progress: Progress,
        snapshot: bool,
        transaction: Option<UpstreamTransaction>,
    },
    /// The upstream position moved without changes to the captured relations.
    Progress(Progress),
    /// Columns of a relation were dropped upstream: later changes carry NULL in them, and
    /// views reading them fail.
    ColumnsDropped { relation: String, columns: Vec<String> },
}

impl std::fmt::Debug for dyn TransactionParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransactionParts")
    }
}

/// The parts of one large transaction, in order.
#[async_trait]
pub trait TransactionParts: Send {
    /// The next part; `None` after the last.
    async fn next_part(&mut self) -> Result<Option<Vec<(String, SourceChanges)>>>;
}

/// What a running source reports for `SHOW SOURCES`.
#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    /// `starting`, `snapshotting`, `streaming`, `retrying: why`, `failed: why`, `finished`.
    pub state: String,
    /// Connector-specific detail: snapshot progress, positions, lag, retained data.
    pub detail: String,
    /// Bytes the source is behind its upstream (a PostgreSQL slot's WAL lag), when known.
    pub lag_bytes: Option<u64>,
    /// Bytes the upstream retains for this source (a slot's retained WAL), when known.
    pub retained_bytes: Option<u64>,
}

/// A shared handle through which a reader reports its state, and learns whether each
/// upstream transaction must be an epoch of its own.
#[derive(Debug, Clone, Default)]
pub struct SourceMonitor {
    report: Arc<Mutex<SourceReport>>,
    per_transaction: Arc<AtomicBool>,
}

impl SourceMonitor {
    /// Whether something reads this source's events transaction by transaction (a
    /// `changes(...)` stream or a sink downstream of its relations): readers then emit each
    /// upstream transaction as its own event, with its id and commit time, instead of
    /// coalescing several into one.
    pub fn per_transaction(&self) -> bool {
        self.per_transaction.load(Ordering::Relaxed)
    }

    /// Set by the engine when streams and sinks are created or dropped.
    pub fn set_per_transaction(&self, per_transaction: bool) {
        self.per_transaction.store(per_transaction, Ordering::Relaxed);
    }

    pub fn set_state(&self, state: impl Into<String>) {
        if let Ok(mut report) = self.report.lock() {
            report.state = state.into();
        }
    }

    pub fn set_detail(&self, detail: impl Into<String>) {
        if let Ok(mut report) = self.report.lock() {
            report.detail = detail.into();
        }
    }

    /// Records how far behind the upstream the source is, and what it makes it retain.
    pub fn set_lag(&self, lag_bytes: u64, retained_bytes: u64) {
        if let Ok(mut report) = self.report.lock() {
            report.lag_bytes = Some(lag_bytes);
            report.retained_bytes = Some(retained_bytes);
        }
    }

    pub fn report(&self) -> SourceReport {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[async_trait]
pub trait SourceConnector: Send + Sync {
    /// Validates the statement and declares the relations; may read the upstream catalog,
    /// never changes anything upstream.
    async fn describe(&self, create: &CreateSource) -> Result<Vec<SourceRelationDef>>;

    /// Connects, prepares the upstream side, and starts reading: from the beginning (a
    /// snapshot, when the source takes one), or after `resume.progress` when given.
    /// `relations` are the relations the engine holds for the source, as [`Self::describe`]
    /// declared them when the source was created: the reader delivers rows of exactly these
    /// columns, whatever the upstream schema has become since (columns added upstream are
    /// not read, columns gone read as NULL, a column whose type changed is an error).
    async fn open(
        &self,
        create: &CreateSource,
        resume: SourceResume,
        relations: &[SourceRelationDef],
        monitor: SourceMonitor,
    ) -> Result<Box<dyn SourceReader>>;
}

#[async_trait]
pub trait SourceReader: Send {
    /// The next event; `None` when a finite source is exhausted.
    async fn next(&mut self) -> Result<Option<SourceEvent>>;

    /// Everything up to `upto` is applied (and durable, with a data directory): the
    /// upstream system may release it.
    async fn commit(&mut self, upto: &Progress) -> Result<()>;

    /// What `open` created upstream (a slot, a publication), as the reader wants it back in
    /// [`SourceResume::upstream`] after a restart; `None` when nothing.
    fn upstream_state(&self) -> Option<String> {
        None
    }

    /// Stops reading; with `drop_upstream`, removes what `open` created upstream.
    async fn close(&mut self, drop_upstream: bool) -> Result<()> {
        let _ = drop_upstream;
        Ok(())
    }
}

/// One epoch of a relation's changes, as a sink receives it.
#[derive(Debug, Clone)]
pub struct SinkEpoch {
    pub epoch: u64,
    /// The consolidated change (rows with weights +1 / -1).
    pub change: ChangeBatch,
    /// The relation's contents when the sink started (delivered as reads, op `r`).
    pub snapshot: bool,
    /// The source whose transaction made the epoch, its position and the upstream
    /// transaction; `None` for writes to local tables.
    pub origin: Option<Origin>,
    /// For a dead-letter sink: why each row could not be delivered where it was going.
    pub errors: Option<Vec<String>>,
}

/// A change the target refused (a constraint, a value it cannot store): the row of the
/// epoch's change, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub row: usize,
    pub error: String,
}

/// Why delivering an epoch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkFailure {
    /// Retrying may help (the target is unreachable, restarting, overloaded).
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help; the message says what is wrong.
    #[error("{0}")]
    Fatal(String),
    /// The target refused some of the epoch's rows and `write_epoch` was told not to
    /// deliver the rest without them: nothing of the epoch was delivered.
    #[error("{}", .0.first().map(|r| r.error.as_str()).unwrap_or("rows were rejected"))]
    Rejected(Vec<Rejected>),
}

/// What a sink writes: the relation, its schema and key (for pairing updates and upserts).
#[derive(Debug, Clone)]
pub struct SinkTarget {
    pub sink: String,
    pub relation: String,
    pub schema: SchemaRef,
    /// Column indexes of the key (empty when the relation has none).
    pub key: Vec<usize>,
    /// The upstream table behind the relation (or behind the relation whose `changes(...)`
    /// the sink delivers), when it is a source's.
    pub upstream: Option<UpstreamTable>,
}

#[async_trait]
pub trait SinkConnector: Send + Sync {
    /// Checks the options against the relation; touches nothing outside (`changeflow check`
    /// and CREATE SINK run it before anything starts).
    fn validate(&self, options: &BTreeMap<String, String>, target: &SinkTarget) -> Result<()>;

    /// Reaches the target as [`Self::open`] would (connects, looks the target up) and
    /// changes nothing, so that CREATE SINK fails at once on a target that is unreachable or
    /// missing. CREATE SINK skips it with `validate = 'false'` (to create a sink while its
    /// target is down); `changeflow check` never runs it.
    async fn check(&self, options: &BTreeMap<String, String>, target: &SinkTarget) -> Result<()> {
        let _ = (options, target);
        Ok(())
    }

    /// Connects and prepares the target; `resume` is the position [`SinkWriter::flush`]
    /// returned at the checkpoint being restored (output after it is to be written again).
    async fn open(
        &self,
        options: &BTreeMap<String, String>,
        target: &SinkTarget,
        resume: Option<String>,
    ) -> Result<Box<dyn SinkWriter>>;
}

#[async_trait]
pub trait SinkWriter: Send {
    /// Delivers one epoch. With `skip_rejected`, rows the target refuses are left out and
    /// returned (the rest is delivered); without it, a refused row fails the whole epoch
    /// with [`SinkFailure::Rejected`] and nothing of it is delivered.
    async fn write_epoch(&mut self, epoch: &SinkEpoch, skip_rejected: bool) -> Result<Vec<Rejected>, SinkFailure>;

    /// Makes everything written so far durable; returns the position to resume from.
    async fn flush(&mut self) -> Result<Option<String>, SinkFailure>;
}

/// Connectors by the name used in `CREATE SOURCE ... FROM NAME` and `CREATE SINK ... INTO
/// NAME`.
#[derive(Default, Clone)]
pub struct ConnectorRegistry {
    sources: HashMap<String, Arc<dyn SourceConnector>>,
    sinks: HashMap<String, Arc<dyn SinkConnector>>,
}

impl ConnectorRegistry {
    pub fn register_source(&mut self, name: &str, connector: Arc<dyn SourceConnector>) {
        self.sources.insert(name.to_ascii_lowercase(), connector);
    }

    pub fn source(&self, name: &str) -> Option<Arc<dyn SourceConnector>> {
        self.sources.get(&name.to_ascii_lowercase()).cloned()
    }

    pub fn source_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sources.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn register_sink(&mut self, name: &str, connector: Arc<dyn SinkConnector>) {
        self.sinks.insert(name.to_ascii_lowercase(), connector);
    }

    pub fn sink(&self, name: &str) -> Option<Arc<dyn SinkConnector>> {
        self.sinks.get(&name.to_ascii_lowercase()).cloned()
    }

    pub fn sink_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sinks.keys().cloned().collect();
        names.sort();
        names
    }
}
