//! A sink's queue: the epochs waiting for its task, in order, and (with a data directory) the
//! epochs it took since its writers' last flush, with the position that flush reported.
//! A checkpoint saves the position and every epoch after it ([`SinkQueue::saved`]) without
//! waiting for the sink, so a slow or stuck sink never holds up checkpoints, and a restart
//! delivers exactly what the sink had not made durable.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::connector::SinkEpoch;

pub(crate) enum SinkItem {
    Epoch(SinkEpoch),
    /// A checkpoint was taken: flush, so the next one finds a recent position.
    Flush,
}

/// Where a sink's writer last made its output durable.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Flushed {
    /// The position its writers reported (see `position_text`); `None` before the first flush.
    pub position: Option<String>,
    /// The newest epoch that position covers.
    pub epoch: u64,
}

/// A sink as a checkpoint keeps it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SavedSink {
    pub flushed: Flushed,
    /// Why the sink failed; a failed sink stays failed across restarts.
    pub failed: Option<String>,
    /// Every epoch after `flushed.epoch` that the sink had not made durable, in order.
    pub backlog: Vec<SinkEpoch>,
}

#[derive(Default)]
struct Contents {
    waiting: VecDeque<SinkItem>,
    /// Taken by the task since the writers' last flush (kept only with a data directory).
    unflushed: VecDeque<SinkEpoch>,
    flushed: Flushed,
}

/// What waits for a sink's task. `backlog` counts the waiting items of every sink of the
/// engine (sources pause, and local writes wait, while it is too large).
pub(crate) struct SinkQueue {
    contents: Mutex<Contents>,
    notify: Notify,
    closed: AtomicBool,
    backlog: Arc<AtomicUsize>,
    /// Whether delivered epochs are kept until flushed (with a data directory).
    durable: bool,
}

impl SinkQueue {
    pub(crate) fn new(backlog: Arc<AtomicUsize>, durable: bool, flushed: Flushed) -> Self {
        let contents = Contents { flushed, ..Contents::default() };
        Self { contents: Mutex::new(contents), notify: Notify::new(), closed: false.into(), backlog, durable }
    }

    fn lock(&self) -> MutexGuard<'_, Contents> {
        // A poisoned lock only means a panic elsewhere; the queue's data is still whole.
        self.contents.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn push(&self, item: SinkItem) {
        if self.is_closed() {
            return;
        }
        self.lock().waiting.push_back(item);
        self.backlog.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// The next item, or `None` after `idle` without one (the task may flush meanwhile);
    /// `Err(())` once the queue is closed.
    pub(crate) async fn pop(&self, idle: Duration) -> Result<Option<SinkItem>, ()> {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            let notified = self.notify.notified();
            if self.is_closed() {
                return Err(());
            }
            if let Some(item) = self.take() {
                return Ok(Some(item));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// The first waiting item. An epoch is kept from the moment it is taken: a checkpoint
    /// taken while it is being written still holds it.
    fn take(&self) -> Option<SinkItem> {
        let mut contents = self.lock();
        let item = contents.waiting.pop_front()?;
        if let (true, SinkItem::Epoch(epoch)) = (self.durable, &item) {
            contents.unflushed.push_back(epoch.clone());
        }
        self.backlog.fetch_sub(1, Ordering::Relaxed);
        Some(item)
    }

    /// How many taken epochs wait for a flush.
    pub(crate) fn unflushed(&self) -> usize {
        self.lock().unflushed.len()
    }

    /// The writers flushed: everything taken so far is durable at `position` (the task
    /// flushes only between epochs).
    pub(crate) fn flushed(&self, position: String, epoch: u64) {
        let mut contents = self.lock();
        contents.unflushed.clear();
        contents.flushed = Flushed { position: Some(position), epoch: epoch.max(contents.flushed.epoch) };
    }

    pub(crate) fn has_waiting_epochs(&self) -> bool {
        self.lock().waiting.iter().any(|item| matches!(item, SinkItem::Epoch(_)))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Stops the queue: what waits is dropped (a failed or dropped sink).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut contents = self.lock();
        self.backlog.fetch_sub(contents.waiting.len(), Ordering::Relaxed);
        contents.waiting.clear();
        contents.unflushed.clear();
        drop(contents);
        self.notify.notify_one();
    }

    /// The sink as a checkpoint keeps it: its last flushed position and every epoch after it.
    pub(crate) fn saved(&self, failed: Option<String>) -> SavedSink {
        let contents = self.lock();
        if failed.is_some() {
            return SavedSink { flushed: contents.flushed.clone(), failed, backlog: Vec::new() };
        }
        let waiting = contents.waiting.iter().filter_map(|item| match item {
            SinkItem::Epoch(epoch) => Some(epoch.clone()),
            SinkItem::Flush => None,
        });
        SavedSink {
            flushed: contents.flushed.clone(),
            failed: None,
            backlog: contents.unflushed.iter().cloned().chain(waiting).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ChangeBatch;
    use datafusion::arrow::array::{Int32Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn epoch(number: u64) -> SinkEpoch {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, false)]));
        let data = RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![number as i32]))]).expect("batch");
        SinkEpoch { epoch: number, change: ChangeBatch::inserts(data), snapshot: false, origin: None, errors: None }
    }

    fn epochs(saved: &SavedSink) -> Vec<u64> {
        saved.backlog.iter().map(|e| e.epoch).collect()
    }

    #[tokio::test]
    async fn a_checkpoint_keeps_what_was_not_flushed_and_what_waits() {
        let backlog = Arc::new(AtomicUsize::new(0));
        let queue = SinkQueue::new(Arc::clone(&backlog), true, Flushed::default());
        for n in 1..=4 {
            queue.push(SinkItem::Epoch(epoch(n)));
        }
        queue.push(SinkItem::Flush);
        assert_eq!(backlog.load(Ordering::Relaxed), 5);
        for _ in 0..2 {
            let Ok(Some(SinkItem::Epoch(_))) = queue.pop(Duration::from_millis(10)).await else { panic!("an epoch") };
        }
        assert_eq!(epochs(&queue.saved(None)), vec![1, 2, 3, 4], "taken but not flushed: kept");
        queue.flushed("at 2".into(), 2);
        let saved = queue.saved(None);
        assert_eq!(
            (epochs(&saved), saved.flushed.position.as_deref(), saved.flushed.epoch),
            (vec![3, 4], Some("at 2"), 2)
        );
        let failed = queue.saved(Some("failed: no".into()));
        assert!(failed.backlog.is_empty() && failed.failed.is_some());
        queue.close();
        assert_eq!(backlog.load(Ordering::Relaxed), 0);
        assert!(queue.pop(Duration::from_millis(10)).await.is_err());
    }

    #[tokio::test]
    async fn without_a_data_directory_nothing_delivered_is_kept() {
        let queue = SinkQueue::new(Arc::new(AtomicUsize::new(0)), false, Flushed::default());
        queue.push(SinkItem::Epoch(epoch(1)));
        let Ok(Some(SinkItem::Epoch(_))) = queue.pop(Duration::from_millis(10)).await else { panic!("an epoch") };
        assert_eq!(queue.unflushed(), 0);
        assert!(matches!(queue.pop(Duration::from_millis(10)).await, Ok(None)), "idle");
    }
}
