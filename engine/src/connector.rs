//! The contracts between the engine and connectors. The engine never names a concrete
//! connector: the binary hands it a [`ConnectorRegistry`].
//!
//! A source, in order: [`SourceConnector::relations`] validates the `WITH (...)` options and
//! declares the relations the source feeds, without connecting anywhere (this is what
//! `changeflow check` runs); [`SourceConnector::open`] checks the options against the
//! upstream system and returns a reader, resuming after `resume` when given; the engine then
//! calls [`SourceReader::next`] in a loop on one task. Each [`SourceEvent::Transaction`] is
//! applied as one unit (a view never shows part of it). [`SourceReader::commit`] is called
//! only for positions whose changes are applied (and, with checkpoints, durable): a reader
//! may then let the upstream system discard them.
//!
//! A sink receives whole epochs in order: `begin_epoch`, any number of `write_batch`, then
//! `barrier`, which flushes (and makes durable when `is_checkpoint`). `abort` drops an
//! unfinished epoch. A sink that needs keys (upserts) says so in its documentation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;

use crate::change::ChangeBatch;
use crate::error::Result;

/// A relation a source feeds.
#[derive(Debug, Clone)]
pub struct SourceRelationDef {
    pub name: String,
    pub schema: SchemaRef,
    pub primary_key: Vec<usize>,
}

/// An opaque upstream position (an LSN, offsets, sequence numbers), ordered by the source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Progress(pub String);

#[derive(Debug)]
pub enum SourceEvent {
    /// One upstream transaction: changes per relation, and the position after it.
    Transaction { changes: Vec<(String, ChangeBatch)>, progress: Progress },
    /// The upstream position moved without changes to the captured relations.
    Progress(Progress),
}

#[async_trait]
pub trait SourceConnector: Send + Sync {
    /// Validates options and declares the relations, without connecting anywhere.
    fn relations(&self, source: &str, options: &BTreeMap<String, String>) -> Result<Vec<SourceRelationDef>>;

    /// Connects, validates against the upstream system, and starts reading.
    async fn open(
        &self,
        source: &str,
        options: &BTreeMap<String, String>,
        resume: Option<Progress>,
    ) -> Result<Box<dyn SourceReader>>;
}

#[async_trait]
pub trait SourceReader: Send {
    /// The next event; `None` when a finite source is exhausted.
    async fn next(&mut self) -> Result<Option<SourceEvent>>;

    /// Everything up to `upto` is applied: the upstream system may release it.
    async fn commit(&mut self, upto: &Progress) -> Result<()>;
}

#[async_trait]
pub trait SinkWriter: Send {
    async fn begin_epoch(&mut self, epoch: u64) -> Result<()>;
    async fn write_batch(&mut self, changes: &ChangeBatch) -> Result<()>;
    async fn barrier(&mut self, is_checkpoint: bool) -> Result<()>;
    async fn abort(&mut self) -> Result<()>;
}

/// Connectors by the name used in `CREATE SOURCE ... FROM NAME`.
#[derive(Default, Clone)]
pub struct ConnectorRegistry {
    sources: HashMap<String, Arc<dyn SourceConnector>>,
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
}
