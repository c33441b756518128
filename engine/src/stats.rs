//! Counters of the engine for monitoring (`/metrics` of `changeflow serve`): per source what
//! it brought in and how far behind it is, per table its size, per materialized view its size
//! and epoch work.

use changeflow_sql::catalog::RelationKind;

use crate::engine::Engine;

#[derive(Debug, Clone)]
pub struct SourceStats {
    pub name: String,
    pub connector: String,
    pub state: String,
    pub transactions: u64,
    pub changes: u64,
    pub lag_bytes: Option<u64>,
    pub retained_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ViewStats {
    pub name: String,
    pub rows: i64,
    pub epochs: u64,
    pub last_apply_seconds: f64,
    pub failed: bool,
    /// Heap bytes of the view's operator state (arrangements, accumulators).
    pub state_bytes: usize,
    /// Heap bytes of the view's stored rows.
    pub stored_bytes: usize,
}

/// A stored base relation: a table, or a relation a source feeds.
#[derive(Debug, Clone)]
pub struct TableStats {
    pub name: String,
    pub rows: i64,
    /// Heap bytes of its stored rows (its primary-key index, or its row counts without a key).
    pub stored_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct EngineStats {
    pub epoch: u64,
    pub sources: Vec<SourceStats>,
    pub tables: Vec<TableStats>,
    pub views: Vec<ViewStats>,
    pub subscriptions: usize,
}

impl Engine {
    pub fn stats(&self) -> EngineStats {
        let sources = self
            .catalog
            .sources()
            .map(|source| {
                let status = self.sources.get(&source.name).cloned().unwrap_or_default();
                let report = status.monitor.report();
                SourceStats {
                    name: source.name.clone(),
                    connector: source.connector.clone(),
                    state: report.state,
                    transactions: status.transactions,
                    changes: status.changes,
                    lag_bytes: report.lag_bytes,
                    retained_bytes: report.retained_bytes,
                }
            })
            .collect();
        let tables = self
            .catalog
            .relations()
            .filter(|relation| matches!(relation.kind, RelationKind::Table | RelationKind::SourceRelation))
            .filter_map(|relation| {
                let store = self.stores.get(&relation.name)?;
                Some(TableStats { name: relation.name.clone(), rows: store.len(), stored_bytes: store.heap_bytes() })
            })
            .collect();
        let views = self
            .views
            .iter()
            .map(|view| ViewStats {
                name: view.name.clone(),
                rows: self.stores.get(&view.name).map(|s| s.len()).unwrap_or(0),
                epochs: view.epochs,
                last_apply_seconds: view.last_apply.as_secs_f64(),
                failed: view.error.is_some(),
                state_bytes: view.dataflow.as_ref().map_or(0, |dataflow| dataflow.state_bytes()),
                stored_bytes: self.stores.get(&view.name).map_or(0, |s| s.heap_bytes()),
            })
            .collect();
        EngineStats { epoch: self.epoch, sources, tables, views, subscriptions: self.subscription_count() }
    }
}

impl Engine {
    /// What keeps the engine from being healthy, one line each naming the object: failed
    /// sources, failed materialized views and failed sinks (`/health` answers 503 with them).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for source in self.catalog.sources() {
            let state = self.sources.get(&source.name).map(|s| s.monitor.report().state).unwrap_or_default();
            if state.starts_with("failed") {
                problems.push(format!("source \"{}\" {state}", source.name));
            }
        }
        for view in &self.views {
            if let Some(error) = &view.error {
                problems.push(format!("materialized view \"{}\": {error}", view.name));
            }
        }
        for (name, _, _, report) in self.sink_reports() {
            if report.state.starts_with("failed") {
                problems.push(format!("sink \"{name}\" {}", report.state));
            }
        }
        problems
    }
}
