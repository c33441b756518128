//! The initial snapshot: every captured table copied (COPY, text format) inside the snapshot
//! the replication slot exported, so that streaming from the slot's consistent point then
//! continues exactly where the copy ends. Tables are copied in parallel; progress (rows
//! copied out of `pg_class.reltuples`' estimate) is reported while it runs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use changeflow_engine::connector::SourceMonitor;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use futures_util::StreamExt;
use tokio::task::JoinSet;

use super::config::{PostgresConfig, quote_ident, quote_literal};
use super::decode::{TextColumns, declared_schema};
use super::error::PgError;
use super::upstream::UpstreamTable;

/// Rows gathered before they are converted to a batch.
const BATCH_ROWS: usize = 65_536;
/// Connections copying at once.
const MAX_WORKERS: usize = 4;

/// Copies every table inside `snapshot`; returns one batch per table, in `tables`' order.
pub async fn copy_tables(
    config: &PostgresConfig,
    snapshot: &str,
    tables: &[UpstreamTable],
    monitor: &SourceMonitor,
) -> Result<Vec<RecordBatch>, PgError> {
    let tables = Arc::new(tables.to_vec());
    let copied: Arc<Vec<AtomicU64>> = Arc::new(tables.iter().map(|_| AtomicU64::new(0)).collect());
    let queue = Arc::new(Mutex::new((0..tables.len()).collect::<VecDeque<usize>>()));
    let mut workers = JoinSet::new();
    for _ in 0..tables.len().min(MAX_WORKERS) {
        let client = config.connect().await?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(snapshot)
            ))
            .await?;
        let (tables, copied, queue) = (Arc::clone(&tables), Arc::clone(&copied), Arc::clone(&queue));
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(index) = next else { break };
                let batch = copy_table(&client, &tables[index], &copied[index]).await?;
                done.push((index, batch));
            }
            client.batch_execute("COMMIT").await?;
            Ok::<_, PgError>(done)
        });
    }
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut results: Vec<Option<RecordBatch>> = vec![None; tables.len()];
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            finished = workers.join_next() => match finished {
                None => break,
                Some(Ok(Ok(done))) => {
                    for (index, batch) in done {
                        results[index] = Some(batch);
                    }
                }
                Some(Ok(Err(error))) => return Err(error),
                Some(Err(error)) => return Err(PgError::protocol(format!("snapshot worker failed: {error}"))),
            },
            _ = ticker.tick() => {
                let progress = describe_progress(&tables, &copied);
                monitor.set_detail(format!("snapshot: {progress}"));
                if last_log.elapsed() >= Duration::from_secs(5) {
                    tracing::info!(source = %config.source, "snapshot: {progress}");
                    last_log = Instant::now();
                }
            }
        }
    }
    let progress = describe_progress(&tables, &copied);
    monitor.set_detail(format!("snapshot done in {:.1} s: {progress}", started.elapsed().as_secs_f64()));
    tracing::info!(source = %config.source, "snapshot done in {:.1} s: {progress}", started.elapsed().as_secs_f64());
    results
        .into_iter()
        .zip(tables.iter())
        .map(|(batch, table)| batch.ok_or_else(|| PgError::protocol(format!("{} was not copied", table.display()))))
        .collect()
}

/// `public.sessions 5000/10000 rows, public.orders 100/~100 rows`.
fn describe_progress(tables: &[UpstreamTable], copied: &[AtomicU64]) -> String {
    tables
        .iter()
        .zip(copied)
        .map(|(table, copied)| {
            format!("{} {}/~{} rows", table.display(), copied.load(Ordering::Relaxed), table.estimated_rows)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn copy_table(
    client: &tokio_postgres::Client,
    table: &UpstreamTable,
    copied: &AtomicU64,
) -> Result<RecordBatch, PgError> {
    let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let sql = format!("COPY (SELECT {} FROM {}) TO STDOUT", columns.join(", "), table.qualified());
    let stream = client.copy_out(&sql).await?;
    let mut stream = std::pin::pin!(stream);
    let schema = declared_schema(table);
    let mut rows = TextColumns::new(table.columns.len());
    let mut batches = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let mut data: &[u8] = &chunk;
        // A line may straddle chunks: finish the carried-over part first.
        if !partial.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(end) => {
                    partial.extend_from_slice(&data[..end]);
                    rows.push_copy_line(&partial)?;
                    partial.clear();
                    copied.fetch_add(1, Ordering::Relaxed);
                    data = &data[end + 1..];
                }
                None => {
                    partial.extend_from_slice(data);
                    continue;
                }
            }
        }
        let mut lines = 0u64;
        while let Some(end) = memchr::memchr(b'\n', data) {
            rows.push_copy_line(&data[..end])?;
            data = &data[end + 1..];
            lines += 1;
        }
        partial.extend_from_slice(data);
        copied.fetch_add(lines, Ordering::Relaxed);
        if rows.rows() >= BATCH_ROWS {
            batches.push(rows.finish(table, &schema)?);
        }
    }
    if !partial.is_empty() {
        rows.push_copy_line(&partial)?;
    }
    batches.push(rows.finish(table, &schema)?);
    Ok(concat_batches(&schema, &batches)?)
}
