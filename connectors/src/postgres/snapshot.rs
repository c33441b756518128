//! The initial snapshot: every captured table copied (COPY, text format) inside the snapshot
//! the replication slot exported, so that streaming from the slot's consistent point then
//! continues exactly where the copy ends. Tables are copied in parallel, in chunks that flow
//! to the engine through a bounded channel while the copy goes on: memory holds a few chunks,
//! not the tables, and the engine applies them as one epoch (the snapshot appears whole).
//! Progress (rows copied out of `pg_class.reltuples`' estimate) is reported while it runs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use changeflow_engine::ChangeBatch;
use changeflow_engine::connector::{SourceChanges, SourceMonitor, TransactionParts};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{PostgresConfig, quote_ident, quote_literal};
use super::decode::{TextColumns, declared_schema};
use super::error::PgError;
use super::upstream::UpstreamTable;

/// Rows gathered before they are converted to a batch and handed on.
const CHUNK_ROWS: usize = 65_536;
/// Connections copying at once.
const MAX_WORKERS: usize = 4;
/// Chunks waiting for the engine before the copy pauses.
const CHANNEL_CHUNKS: usize = 4;

type Chunk = Result<(usize, ChangeBatch), PgError>;

/// A running snapshot: its chunks, in the order they are copied.
pub struct SnapshotParts {
    chunks: mpsc::Receiver<Chunk>,
    tables: Arc<Vec<UpstreamTable>>,
    copied: Arc<Vec<AtomicU64>>,
    reporter: JoinHandle<()>,
    config: PostgresConfig,
    monitor: SourceMonitor,
    started: Instant,
}

/// Starts copying every table inside `snapshot`. Each copying connection joins the snapshot
/// before this returns, so the exporting replication connection may move on afterwards.
pub async fn start_copy(
    config: &PostgresConfig,
    snapshot: &str,
    tables: &[UpstreamTable],
    monitor: &SourceMonitor,
) -> Result<SnapshotParts, PgError> {
    let tables = Arc::new(tables.to_vec());
    let copied: Arc<Vec<AtomicU64>> = Arc::new(tables.iter().map(|_| AtomicU64::new(0)).collect());
    let queue = Arc::new(Mutex::new((0..tables.len()).collect::<VecDeque<usize>>()));
    let (sender, chunks) = mpsc::channel(CHANNEL_CHUNKS);
    for _ in 0..tables.len().min(MAX_WORKERS) {
        let client = config.connect().await?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(snapshot)
            ))
            .await?;
        let (tables, copied, queue, sender) =
            (Arc::clone(&tables), Arc::clone(&copied), Arc::clone(&queue), sender.clone());
        tokio::spawn(async move {
            let result = async {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some(index) = next else { break };
                    copy_table(&client, index, &tables[index], &copied[index], &sender).await?;
                }
                client.batch_execute("COMMIT").await?;
                Ok::<_, PgError>(())
            }
            .await;
            if let Err(error) = result {
                let _ = sender.send(Err(error)).await;
            }
        });
    }
    let reporter = {
        let (tables, copied, monitor, source) =
            (Arc::clone(&tables), Arc::clone(&copied), monitor.clone(), config.source.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(500));
            let mut last_log = Instant::now();
            loop {
                ticker.tick().await;
                let progress = describe_progress(&tables, &copied);
                monitor.set_detail(format!("snapshot: {progress}"));
                if last_log.elapsed() >= Duration::from_secs(5) {
                    tracing::info!(%source, "snapshot: {progress}");
                    last_log = Instant::now();
                }
            }
        })
    };
    Ok(SnapshotParts {
        chunks,
        tables,
        copied,
        reporter,
        config: config.clone(),
        monitor: monitor.clone(),
        started: Instant::now(),
    })
}

#[async_trait]
impl TransactionParts for SnapshotParts {
    async fn next_part(&mut self) -> changeflow_engine::Result<Option<Vec<(String, SourceChanges)>>> {
        match self.chunks.recv().await {
            Some(Ok((index, batch))) => {
                Ok(Some(vec![(self.tables[index].relation.clone(), SourceChanges::Weighted(batch))]))
            }
            Some(Err(error)) => Err(error.into()),
            None => {
                // Every worker finished (a failed one sent its error first).
                self.reporter.abort();
                let elapsed = self.started.elapsed().as_secs_f64();
                let progress = describe_progress(&self.tables, &self.copied);
                self.monitor.set_detail(format!("snapshot done in {elapsed:.1} s: {progress}"));
                tracing::info!(source = %self.config.source, "snapshot done in {elapsed:.1} s: {progress}");
                Ok(None)
            }
        }
    }
}

impl Drop for SnapshotParts {
    fn drop(&mut self) {
        self.reporter.abort();
    }
}

/// `public.sessions 5000/~10000 rows, public.orders 100/~100 rows`.
fn describe_progress(tables: &[UpstreamTable], copied: &[AtomicU64]) -> String {
    tables
        .iter()
        .zip(copied)
        .map(|(table, copied)| {
            let copied = copied.load(Ordering::Relaxed);
            // An estimate of 0 (a table never analyzed) tells nothing: the count alone.
            match table.estimated_rows {
                0 => format!("{} {copied} rows", table.display()),
                estimate => format!("{} {copied}/~{estimate} rows", table.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copies one table, handing on a chunk every [`CHUNK_ROWS`] rows.
async fn copy_table(
    client: &tokio_postgres::Client,
    index: usize,
    table: &UpstreamTable,
    copied: &AtomicU64,
    sender: &mpsc::Sender<Chunk>,
) -> Result<(), PgError> {
    // A declared column gone upstream reads as NULL.
    let columns: Vec<String> =
        table.columns.iter().map(|c| if c.missing { "NULL".to_string() } else { quote_ident(&c.name) }).collect();
    let sql = format!("COPY (SELECT {} FROM {}) TO STDOUT", columns.join(", "), table.qualified());
    let stream = client.copy_out(&sql).await?;
    let mut stream = std::pin::pin!(stream);
    let schema = declared_schema(table);
    let mut rows = TextColumns::new(table.columns.len());
    let mut partial: Vec<u8> = Vec::new();
    let send = |rows: &mut TextColumns| -> Result<Option<ChangeBatch>, PgError> {
        if rows.rows() == 0 {
            return Ok(None);
        }
        Ok(Some(ChangeBatch::inserts(rows.finish(table, &schema)?)))
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let mut data: &[u8] = &chunk;
        let mut lines = 0u64;
        // A line may straddle chunks: finish the carried-over part first.
        if !partial.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(end) => {
                    partial.extend_from_slice(&data[..end]);
                    rows.push_copy_line(&partial)?;
                    partial.clear();
                    lines += 1;
                    data = &data[end + 1..];
                }
                None => {
                    partial.extend_from_slice(data);
                    continue;
                }
            }
        }
        while let Some(end) = memchr::memchr(b'\n', data) {
            rows.push_copy_line(&data[..end])?;
            data = &data[end + 1..];
            lines += 1;
        }
        partial.extend_from_slice(data);
        copied.fetch_add(lines, Ordering::Relaxed);
        if rows.rows() >= CHUNK_ROWS
            && let Some(batch) = send(&mut rows)?
            && sender.send(Ok((index, batch))).await.is_err()
        {
            // The snapshot was abandoned (the source is being dropped).
            return Ok(());
        }
    }
    if !partial.is_empty() {
        rows.push_copy_line(&partial)?;
        copied.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(batch) = send(&mut rows)? {
        let _ = sender.send(Ok((index, batch))).await;
    }
    Ok(())
}
