//! SUBSCRIBE: a stream of one relation's changes (a materialized view, a table or a source
//! relation), epoch by epoch, optionally preceded by its contents at the epoch it starts from.
//!
//! Subscribers hang off the engine; every epoch publishes each changed relation's
//! consolidated change to them, in epoch order. A subscriber that falls more than
//! [`SUBSCRIPTION_BUFFER`] epochs, or more than its byte budget (see
//! [`Engine::set_subscription_buffer_bytes`]), behind is dropped with an error rather than
//! slowing the engine down or growing its buffer without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use changeflow_sql::RelationKind;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokio::sync::mpsc;

use crate::change::ChangeBatch;
use crate::engine::Engine;
use crate::error::{EngineError, Result};

/// Epochs a subscriber may have buffered before it is dropped.
pub const SUBSCRIPTION_BUFFER: usize = 4096;

/// Bytes of changes a subscriber may have buffered before it is dropped, unless set.
pub const DEFAULT_SUBSCRIPTION_BUFFER_BYTES: usize = 64 << 20;

/// What a subscription receives after its snapshot.
#[derive(Debug, Clone)]
pub enum ViewUpdate {
    /// The relation's consolidated change in one epoch (a large transaction applied in
    /// parts may send several with the same epoch).
    Changes { epoch: u64, change: ChangeBatch },
    /// The relation stopped: dropped, or maintaining it failed. Nothing follows.
    Ended(String),
}

/// A live subscription: the contents it starts from, then updates as epochs are applied.
pub struct Subscription {
    pub relation: String,
    /// The columns sent: `epoch`, `weight`, then the relation's.
    pub schema: SchemaRef,
    /// The epoch the subscription starts after, and the relation's rows at that epoch
    /// (absent with `snapshot = false`).
    pub start_epoch: u64,
    pub snapshot: Option<RecordBatch>,
    updates: mpsc::Receiver<ViewUpdate>,
    overflowed: Arc<AtomicBool>,
    /// Bytes of the changes sent and not yet taken.
    buffered: Arc<AtomicUsize>,
    budget: usize,
}

impl Subscription {
    /// Whether the engine dropped the subscription because its client fell too far behind
    /// (what was buffered can still be taken; nothing more comes).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// The next update; an error when the subscriber fell too far behind.
    pub async fn next(&mut self) -> Result<ViewUpdate> {
        match self.updates.recv().await {
            Some(update) => {
                if let ViewUpdate::Changes { change, .. } = &update {
                    self.buffered.fetch_sub(change_bytes(change), Ordering::Relaxed);
                }
                Ok(update)
            }
            None if self.overflowed.load(Ordering::Relaxed) => Err(EngineError::State(format!(
                "the subscription to \"{}\" fell more than {SUBSCRIPTION_BUFFER} epochs or {} MiB of changes behind \
                 (the client did not read them) and was dropped; subscribe again",
                self.relation,
                self.budget >> 20
            ))),
            None => Ok(ViewUpdate::Ended(format!("\"{}\" is gone", self.relation))),
        }
    }
}

/// The engine's side of one subscription.
pub(crate) struct Subscriber {
    sender: mpsc::Sender<ViewUpdate>,
    overflowed: Arc<AtomicBool>,
    buffered: Arc<AtomicUsize>,
    budget: usize,
}

/// The bytes a change holds (its columns and weights), as a subscriber's buffer counts them.
fn change_bytes(change: &ChangeBatch) -> usize {
    change.data.get_array_memory_size() + change.weights.len() * std::mem::size_of::<i64>()
}

impl Engine {
    /// Starts a subscription to a materialized view, table or source relation.
    pub fn subscribe(&mut self, relation: &str, snapshot: bool) -> Result<Subscription> {
        let schema = self.subscription_schema(relation)?;
        if let Some(error) = self.view_error(relation) {
            return Err(EngineError::State(format!("materialized view \"{relation}\" {error}")));
        }
        let snapshot = if snapshot { Some(self.committed_snapshot(relation)?) } else { None };
        let (sender, updates) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let overflowed = Arc::new(AtomicBool::new(false));
        let buffered = Arc::new(AtomicUsize::new(0));
        let budget = self.subscription_buffer_bytes;
        self.subscribers.entry(relation.to_string()).or_default().push(Subscriber {
            sender,
            overflowed: Arc::clone(&overflowed),
            buffered: Arc::clone(&buffered),
            budget,
        });
        Ok(Subscription {
            relation: relation.to_string(),
            schema,
            start_epoch: self.epoch,
            snapshot,
            updates,
            overflowed,
            buffered,
            budget,
        })
    }

    /// The columns a subscription to `relation` returns: `epoch`, `weight`, then the
    /// relation's own. Refuses what cannot be subscribed to.
    pub fn subscription_schema(&self, relation: &str) -> Result<SchemaRef> {
        let found = self.catalog.require_relation(relation)?;
        if found.kind == RelationKind::View {
            return Err(EngineError::State(format!(
                "\"{relation}\" is a view, which is not maintained; SUBSCRIBE works on materialized views, tables and source relations (CREATE MATERIALIZED VIEW ...)"
            )));
        }
        let mut fields =
            vec![Field::new("epoch", DataType::Int64, false), Field::new("weight", DataType::Int64, false)];
        fields.extend(found.schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)));
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Sends an epoch's change of a relation to its subscribers, dropping those that left
    /// or fell too far behind.
    pub(crate) fn publish(&mut self, relation: &str, change: &ChangeBatch) {
        let Some(subscribers) = self.subscribers.get_mut(relation) else { return };
        let epoch = self.epoch;
        let bytes = change_bytes(change);
        subscribers.retain(|s| {
            // Past its byte budget (a change larger than the budget still goes to a
            // subscriber that has nothing buffered).
            let buffered = s.buffered.load(Ordering::Relaxed);
            if buffered > 0 && buffered + bytes > s.budget {
                s.overflowed.store(true, Ordering::Relaxed);
                return false;
            }
            match s.sender.try_send(ViewUpdate::Changes { epoch, change: change.clone() }) {
                Ok(()) => {
                    s.buffered.fetch_add(bytes, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.overflowed.store(true, Ordering::Relaxed);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if subscribers.is_empty() {
            self.subscribers.remove(relation);
        }
    }

    /// Ends the subscriptions to a relation (it was dropped or failed), telling them why.
    pub(crate) fn end_subscriptions(&mut self, relation: &str, reason: &str) {
        for subscriber in self.subscribers.remove(relation).unwrap_or_default() {
            let _ = subscriber.sender.try_send(ViewUpdate::Ended(reason.to_string()));
        }
    }

    /// Bytes of changes a subscription may have waiting for its client before it is
    /// dropped (default [`DEFAULT_SUBSCRIPTION_BUFFER_BYTES`]).
    pub fn set_subscription_buffer_bytes(&mut self, bytes: usize) {
        self.subscription_buffer_bytes = bytes.max(1);
    }

    /// Number of live subscriptions (for metrics).
    pub fn subscription_count(&self) -> usize {
        self.subscribers.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::connector::ConnectorRegistry;
    use crate::{Database, ViewUpdate};

    async fn run(database: &Database, sql: &str) {
        for statement in changeflow_sql::parse_sql(sql).expect("parse") {
            database.execute(&statement).await.expect(sql);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_does_not_read_is_dropped_past_its_byte_budget() {
        let database = Arc::new(Database::new(ConnectorRegistry::default()));
        run(&database, "CREATE TABLE t (id INT PRIMARY KEY, body TEXT)").await;
        database.engine().await.set_subscription_buffer_bytes(200_000);
        let mut subscription = database.subscribe("t", false).await.expect("subscribe");
        let body = "x".repeat(20_000);
        for id in 0..40 {
            run(&database, &format!("INSERT INTO t VALUES ({id}, '{body}')")).await;
        }
        assert_eq!(database.engine().await.subscription_count(), 0, "the subscriber was dropped");
        // What was buffered within the budget comes first, then why it ended.
        let mut delivered = 0;
        let error = loop {
            match subscription.next().await {
                Ok(ViewUpdate::Changes { .. }) => delivered += 1,
                Ok(ViewUpdate::Ended(reason)) => panic!("ended: {reason}"),
                Err(error) => break error.to_string(),
            }
        };
        assert!((1..40).contains(&delivered), "{delivered} epochs delivered");
        assert!(error.contains("MiB of changes behind"), "{error}");

        // A subscriber that keeps reading is never dropped.
        let mut reader = database.subscribe("t", false).await.expect("subscribe");
        for id in 100..140 {
            run(&database, &format!("INSERT INTO t VALUES ({id}, '{body}')")).await;
            assert!(matches!(reader.next().await, Ok(ViewUpdate::Changes { .. })));
        }
        assert_eq!(database.engine().await.subscription_count(), 1);
    }
}
