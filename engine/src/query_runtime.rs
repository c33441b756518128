//! Where ad-hoc queries run: a runtime of their own. A query keeps its threads busy
//! (DataFusion runs its partitions in parallel, and an operator may compute for long between
//! yields); on the runtime that serves connections it would hold up accepting clients,
//! cancel requests and everyone else's statements until it ended. A query's rows are either
//! collected whole, or handed over batch by batch through a small bounded channel, so a
//! client reading a large result holds a few batches in memory, not the whole result, and
//! a client that stops reading pauses its query.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::error::{EngineError, Result};
use crate::interrupt::Interrupt;

/// Batches computed ahead of the reader.
const BATCHES_AHEAD: usize = 2;

fn query_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("changeflow-query")
                .thread_stack_size(16 << 20)
                .enable_time()
                .build();
            match built {
                Ok(runtime) => Some(runtime),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the query runtime; queries run beside the server's work");
                    None
                }
            }
        })
        .as_ref()
}

/// Aborts a task when dropped: the query stops when whoever waits for it goes away.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Spawns on the query runtime (or, without one, beside the caller).
fn spawn<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match query_runtime() {
        Some(runtime) => runtime.spawn(work),
        None => tokio::spawn(work),
    }
}

/// Runs a physical plan to completion on the query runtime; dropping the returned future
/// (the client canceled) stops it there too.
pub(crate) async fn collect(
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    let task = spawn(datafusion::physical_plan::collect(plan, context));
    let _abort = AbortOnDrop(task.abort_handle());
    match task.await {
        Ok(result) => result,
        Err(error) if error.is_panic() => Err(DataFusionError::Execution(format!(
            "the query panicked: {}",
            crate::error::panic_message(&*error.into_panic())
        ))),
        Err(error) => Err(DataFusionError::Execution(format!("the query was stopped: {error}"))),
    }
}

/// A query's rows as they are computed, batch by batch. Dropping it stops the query.
pub struct RowStream {
    receiver: mpsc::Receiver<Result<RecordBatch>>,
    _task: Option<AbortOnDrop>,
}

impl RowStream {
    /// Rows already at hand.
    pub(crate) fn ready(batches: Vec<RecordBatch>) -> Self {
        let (sender, receiver) = mpsc::channel(batches.len().max(1));
        for batch in batches {
            let _ = sender.try_send(Ok(batch));
        }
        Self { receiver, _task: None }
    }

    /// Starts the plan on the query runtime; its batches (with `schema`) come through a
    /// bounded channel. An error ends the stream; one caused by `interrupt` says why.
    pub(crate) fn start(
        plan: Arc<dyn ExecutionPlan>,
        context: Arc<TaskContext>,
        schema: SchemaRef,
        interrupt: Option<Arc<Interrupt>>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(BATCHES_AHEAD);
        let stopped = move |error: DataFusionError| -> EngineError {
            match interrupt.as_ref().map(|i| i.check()) {
                Some(Err(why)) => why,
                _ => error.into(),
            }
        };
        let task = spawn(async move {
            let mut batches = match datafusion::physical_plan::execute_stream(plan, context) {
                Ok(batches) => batches,
                Err(error) => {
                    let _ = sender.send(Err(stopped(error))).await;
                    return;
                }
            };
            while let Some(batch) = batches.next().await {
                let item = match batch {
                    Ok(batch) => crate::exec_query::with_schema(&schema, &batch).map_err(EngineError::from),
                    Err(error) => Err(stopped(error)),
                };
                let failed = item.is_err();
                // The reader went away, or the query failed: stop.
                if sender.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Self { receiver, _task: Some(AbortOnDrop(task.abort_handle())) }
    }

    /// The next batch; `None` once the query has delivered everything.
    pub async fn next(&mut self) -> Option<Result<RecordBatch>> {
        self.receiver.recv().await
    }
}
