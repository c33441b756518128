//! Stopping a running query: a cancel request, the client going away, or its statement
//! timeout. DataFusion stops a query when its stream is dropped, but only once an operator
//! yields, and a join that filters everything out may not yield for minutes. So the
//! physical plan gets a check between every pair of operators: each batch that passes one
//! looks at the query's [`Interrupt`] and ends the query with 57014 once it is set.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
    ReplaceChildrenOptions,
};
use futures_util::StreamExt;

use crate::error::EngineError;

const RUNNING: u8 = 0;
const CANCELED: u8 = 1;
/// The client went away: every statement from now on stops.
const GONE: u8 = 2;

/// A session's handle on its running statement: cancel it from anywhere, or give it a
/// deadline.
#[derive(Debug, Default)]
pub struct Interrupt {
    state: AtomicU8,
    timeout: Mutex<Option<Duration>>,
    deadline: Mutex<Option<Instant>>,
    /// The longest a statement waits for another session's write (`lock_timeout`).
    lock_timeout: Mutex<Option<Duration>>,
}

impl Interrupt {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Stops the running statement (a cancel request, or the client went away).
    pub fn cancel(&self) {
        self.state.store(CANCELED, Ordering::Relaxed);
    }

    /// The client went away: the running statement and any later one stop.
    pub fn client_gone(&self) {
        self.state.store(GONE, Ordering::Relaxed);
    }

    /// The longest a statement may run from now on (`statement_timeout`); `None` or zero
    /// for no limit.
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        if let Ok(mut current) = self.timeout.lock() {
            *current = timeout.filter(|t| !t.is_zero());
        }
    }

    /// The longest a statement may wait for the write lease another session holds
    /// (`lock_timeout`); `None` or zero for no limit.
    pub fn set_lock_timeout(&self, timeout: Option<Duration>) {
        if let Ok(mut current) = self.lock_timeout.lock() {
            *current = timeout.filter(|t| !t.is_zero());
        }
    }

    /// How long the running statement may wait for a lock.
    pub(crate) fn lock_timeout(&self) -> Option<Duration> {
        self.lock_timeout.lock().ok().and_then(|t| *t)
    }

    /// A statement starts: an earlier cancel no longer applies, and its deadline is set.
    pub fn start(&self) {
        let _ = self.state.compare_exchange(CANCELED, RUNNING, Ordering::Relaxed, Ordering::Relaxed);
        let timeout = self.timeout.lock().ok().and_then(|t| *t);
        if let Ok(mut deadline) = self.deadline.lock() {
            *deadline = timeout.map(|t| Instant::now() + t);
        }
    }

    /// Why the running statement must stop, if it must.
    pub fn check(&self) -> Result<(), EngineError> {
        match self.state.load(Ordering::Relaxed) {
            RUNNING => {}
            CANCELED => return Err(EngineError::Canceled("canceling statement due to user request".into())),
            _ => return Err(EngineError::Canceled("canceling statement because the client went away".into())),
        }
        let past_deadline = self.deadline.lock().ok().and_then(|d| *d).is_some_and(|d| Instant::now() >= d);
        if past_deadline {
            return Err(EngineError::Canceled("canceling statement due to statement timeout".into()));
        }
        Ok(())
    }
}

/// The plan with a check of `interrupt` above every operator.
pub(crate) fn interruptible(
    plan: Arc<dyn ExecutionPlan>,
    interrupt: &Arc<Interrupt>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    let checked = plan
        .transform_up(|node| {
            if node.children().is_empty() {
                return Ok(Transformed::no(node));
            }
            let children = node.children().into_iter().map(|child| Checked::wrap(child, interrupt)).collect();
            // The checks have their inputs' properties: nothing needs recomputing.
            let keep = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
            Ok(Transformed::yes(node.replace_children(children, keep)?))
        })?
        .data;
    Ok(Checked::wrap(&checked, interrupt))
}

/// Passes its input's batches on, checking the interrupt before each.
#[derive(Debug)]
struct Checked {
    input: Arc<dyn ExecutionPlan>,
    interrupt: Arc<Interrupt>,
}

impl Checked {
    fn wrap(input: &Arc<dyn ExecutionPlan>, interrupt: &Arc<Interrupt>) -> Arc<dyn ExecutionPlan> {
        Arc::new(Self { input: Arc::clone(input), interrupt: Arc::clone(interrupt) })
    }
}

impl DisplayAs for Checked {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InterruptCheck")
    }
}

impl ExecutionPlan for Checked {
    fn name(&self) -> &str {
        "InterruptCheck"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        match children.len() {
            1 => Ok(Checked::wrap(&children.swap_remove(0), &self.interrupt)),
            n => Err(DataFusionError::Internal(format!("an interrupt check takes one input, not {n}"))),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        self.interrupt.check().map_err(|e| DataFusionError::External(Box::new(e)))?;
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let interrupt = Arc::clone(&self.interrupt);
        let checked = input.map(move |batch| {
            interrupt.check().map_err(|e| DataFusionError::External(Box::new(e)))?;
            batch
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, checked)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_applies_to_the_running_statement_only() {
        let interrupt = Interrupt::new();
        interrupt.start();
        assert!(interrupt.check().is_ok());
        interrupt.cancel();
        assert!(interrupt.check().expect_err("canceled").to_string().contains("user request"));
        interrupt.start();
        assert!(interrupt.check().is_ok(), "the next statement runs");
        interrupt.client_gone();
        interrupt.start();
        assert!(interrupt.check().expect_err("gone").to_string().contains("went away"), "for good");
    }

    #[test]
    fn a_statement_past_its_timeout_stops() {
        let interrupt = Interrupt::new();
        interrupt.set_timeout(Some(Duration::from_millis(20)));
        interrupt.start();
        assert!(interrupt.check().is_ok());
        std::thread::sleep(Duration::from_millis(30));
        assert!(interrupt.check().expect_err("timed out").to_string().contains("statement timeout"));
        interrupt.set_timeout(Some(Duration::ZERO));
        interrupt.start();
        std::thread::sleep(Duration::from_millis(30));
        assert!(interrupt.check().is_ok(), "zero means no limit");
    }
}
