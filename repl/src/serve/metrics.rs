//! Monitoring endpoints of `changeflow serve`: `/metrics` in Prometheus text format (sources,
//! tables, views, connections, query latency) and `/health` for orchestration probes.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use changeflow_engine::Database;
use changeflow_engine::stats::{SourceStats, TableStats, ViewStats};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Upper bounds (seconds) of the query latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0];

/// Counters of the wire server, updated by connections as they work.
#[derive(Default)]
pub struct Metrics {
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    queries_failed: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_nanos: AtomicU64,
    subscriptions_open: AtomicI64,
    connection_panics: AtomicU64,
    /// The newest connection panic: peer and message, for `/health`.
    last_panic: std::sync::Mutex<Option<String>>,
}

/// Decrements a gauge when dropped (a connection or subscription ending).
pub struct Live<'a>(&'a AtomicI64);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a new connection as open unless `max` are open already; the connection's
    /// task then holds [`Metrics::open_connection`] until it ends.
    pub fn try_admit_connection(&self, max: usize) -> bool {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let admitted = self
            .connections_open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| (open < max).then_some(open + 1))
            .is_ok();
        if admitted {
            self.connections_total.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connections_refused.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// The open-connection count of an admitted connection, given back when dropped.
    pub fn open_connection(&self) -> Live<'_> {
        Live(&self.connections_open)
    }

    pub fn subscription_started(&self) -> Live<'_> {
        self.subscriptions_open.fetch_add(1, Ordering::Relaxed);
        Live(&self.subscriptions_open)
    }

    /// A connection's task panicked (a bug): counted, and `/health` reports it from then on.
    pub fn connection_panicked(&self, peer: &str, message: &str) {
        self.connection_panics.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_panic.lock() {
            *last = Some(format!("the task of connection {peer} panicked: {message}"));
        }
    }

    pub fn query_finished(&self, elapsed: Duration, ok: bool) {
        if !ok {
            self.queries_failed.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_nanos.fetch_add(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }
}

/// A label value, escaped as the exposition format requires.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family with one sample per labeled object (those without a value are left out).
fn labeled(out: &mut String, name: &str, kind: &str, help: &str, key: &str, samples: Vec<(&str, Option<String>)>) {
    family(out, name, kind, help);
    for (object, value) in samples {
        if let Some(value) = value {
            let _ = writeln!(out, "{name}{{{key}=\"{}\"}} {value}", label(object));
        }
    }
}

/// A metric family over some stats: its name, type, help, and each item's value (`None`:
/// no sample for that item).
type Series<T, V> = (&'static str, &'static str, &'static str, fn(&T) -> V);

/// Writes each family of `series` with a sample per item, labeled `key` = the item's name.
fn each_series<T, V: Into<Option<String>>>(
    out: &mut String,
    items: &[T],
    name_of: fn(&T) -> &str,
    key: &str,
    series: &[Series<T, V>],
) {
    for (name, kind, help, value) in series {
        let samples = items.iter().map(|item| (name_of(item), value(item).into())).collect();
        labeled(out, name, kind, help, key, samples);
    }
}

/// The whole exposition: engine state read under its lock, then the server's counters.
pub async fn render(database: &Database, metrics: &Metrics) -> String {
    let stats = database.engine().await.stats();
    let mut out = String::new();
    family(&mut out, "changeflow_epochs_total", "counter", "Epochs applied (transactions of tables and sources).");
    let _ = writeln!(out, "changeflow_epochs_total {}", stats.epoch);

    let source_series: [Series<SourceStats, Option<String>>; 4] = [
        ("changeflow_source_changes_total", "counter", "Row changes a source brought in.", |s| {
            Some(s.changes.to_string())
        }),
        ("changeflow_source_transactions_total", "counter", "Upstream transactions a source applied.", |s| {
            Some(s.transactions.to_string())
        }),
        ("changeflow_source_lag_bytes", "gauge", "Bytes of upstream log the source has not confirmed.", |s| {
            s.lag_bytes.map(|b| b.to_string())
        }),
        ("changeflow_source_retained_bytes", "gauge", "Bytes of log the upstream retains for the source.", |s| {
            s.retained_bytes.map(|b| b.to_string())
        }),
    ];
    each_series(&mut out, &stats.sources, |s| &s.name, "source", &source_series);
    family(&mut out, "changeflow_source_state", "gauge", "1 for the source's current state.");
    for s in &stats.sources {
        let state = s.state.split(':').next().unwrap_or("").trim();
        let _ = writeln!(
            out,
            "changeflow_source_state{{source=\"{}\",connector=\"{}\",state=\"{}\"}} 1",
            label(&s.name),
            label(&s.connector),
            label(state)
        );
    }
    let table_series: [Series<TableStats, String>; 2] = [
        ("changeflow_table_rows", "gauge", "Rows a table (or a relation a source feeds) holds.", |t| {
            t.rows.to_string()
        }),
        ("changeflow_table_stored_bytes", "gauge", "Heap bytes of the table's stored rows.", |t| {
            t.stored_bytes.to_string()
        }),
    ];
    each_series(&mut out, &stats.tables, |t| &t.name, "table", &table_series);
    let view_series: [Series<ViewStats, String>; 6] = [
        ("changeflow_view_rows", "gauge", "Rows a materialized view holds.", |v| v.rows.to_string()),
        ("changeflow_view_epochs_total", "counter", "Epochs a materialized view applied.", |v| v.epochs.to_string()),
        ("changeflow_view_last_apply_seconds", "gauge", "Time the view's last epoch took to apply.", |v| {
            v.last_apply_seconds.to_string()
        }),
        ("changeflow_view_failed", "gauge", "1 when maintaining the view failed.", |v| u8::from(v.failed).to_string()),
        ("changeflow_view_state_bytes", "gauge", "Heap bytes of the view's operator state.", |v| {
            v.state_bytes.to_string()
        }),
        ("changeflow_view_stored_bytes", "gauge", "Heap bytes of the view's stored rows.", |v| {
            v.stored_bytes.to_string()
        }),
    ];
    each_series(&mut out, &stats.views, |v| &v.name, "view", &view_series);

    let sinks = database.engine().await.sink_reports();
    type SinkValue<'a> = Box<dyn Fn(&changeflow_engine::sink::SinkReport) -> u64 + 'a>;
    let sink_series: [(&str, &str, &str, SinkValue); 6] = [
        (
            "changeflow_sink_delivered_epoch",
            "gauge",
            "The newest epoch a sink delivered.",
            Box::new(|r| r.delivered_epoch),
        ),
        (
            "changeflow_sink_lag_epochs",
            "gauge",
            "Epochs applied but not yet delivered by a sink.",
            Box::new(|r| r.lag_epochs),
        ),
        ("changeflow_sink_rows_total", "counter", "Rows a sink delivered.", Box::new(|r| r.rows)),
        ("changeflow_sink_retries_total", "counter", "Failed attempts a sink retried.", Box::new(|r| r.retries)),
        (
            "changeflow_sink_skipped_total",
            "counter",
            "Refused rows a sink skipped (ON ERROR SKIP).",
            Box::new(|r| r.skipped),
        ),
        (
            "changeflow_sink_dead_letters_total",
            "counter",
            "Refused rows sent to a dead-letter sink.",
            Box::new(|r| r.dead_letters),
        ),
    ];
    for (name, kind, help, value) in sink_series {
        let samples =
            sinks.iter().map(|(sink, _, _, report)| (sink.as_str(), Some(value(report).to_string()))).collect();
        labeled(&mut out, name, kind, help, "sink", samples);
    }
    family(&mut out, "changeflow_sink_state", "gauge", "1 for the sink's current state.");
    for (sink, relation, connector, report) in &sinks {
        let state = report.state.split(':').next().unwrap_or("").trim();
        let _ = writeln!(
            out,
            "changeflow_sink_state{{sink=\"{}\",relation=\"{}\",connector=\"{}\",state=\"{}\"}} 1",
            label(sink),
            label(relation),
            label(connector),
            label(state)
        );
    }
    if let Some(checkpoints) = database.checkpoint_stats() {
        let series: [(&str, &str, &str, String); 4] = [
            ("changeflow_checkpoints_total", "counter", "Checkpoints written.", checkpoints.checkpoints.to_string()),
            (
                "changeflow_checkpoint_bytes",
                "gauge",
                "Size of the last checkpoint.",
                checkpoints.last_bytes.to_string(),
            ),
            (
                "changeflow_checkpoint_duration_seconds",
                "gauge",
                "Time the last checkpoint took (capture, write, fsync).",
                checkpoints.last_duration.as_secs_f64().to_string(),
            ),
            (
                "changeflow_checkpoint_epoch",
                "gauge",
                "Epoch of the last checkpoint.",
                checkpoints.last_epoch.to_string(),
            ),
        ];
        for (name, kind, help, value) in series {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    family(&mut out, "changeflow_connections", "gauge", "Open client connections.");
    let _ = writeln!(out, "changeflow_connections {}", metrics.connections_open.load(Ordering::Relaxed));
    family(&mut out, "changeflow_connections_total", "counter", "Client connections accepted.");
    let _ = writeln!(out, "changeflow_connections_total {}", metrics.connections_total.load(Ordering::Relaxed));
    family(
        &mut out,
        "changeflow_connections_refused_total",
        "counter",
        "Client connections refused because --max-connections were open.",
    );
    let _ =
        writeln!(out, "changeflow_connections_refused_total {}", metrics.connections_refused.load(Ordering::Relaxed));
    family(&mut out, "changeflow_subscriptions", "gauge", "Open SUBSCRIBE streams.");
    let _ = writeln!(out, "changeflow_subscriptions {}", metrics.subscriptions_open.load(Ordering::Relaxed));
    family(
        &mut out,
        "changeflow_connection_panics_total",
        "counter",
        "Connections whose task panicked (each rolled back and closed alone).",
    );
    let _ = writeln!(out, "changeflow_connection_panics_total {}", metrics.connection_panics.load(Ordering::Relaxed));
    family(&mut out, "changeflow_queries_failed_total", "counter", "Statements that returned an error.");
    let _ = writeln!(out, "changeflow_queries_failed_total {}", metrics.queries_failed.load(Ordering::Relaxed));
    family(&mut out, "changeflow_query_duration_seconds", "histogram", "Time to run a statement.");
    for (bucket, bound) in metrics.latency_buckets.iter().zip(LATENCY_BUCKETS) {
        let _ = writeln!(
            out,
            "changeflow_query_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            bucket.load(Ordering::Relaxed)
        );
    }
    let count = metrics.latency_count.load(Ordering::Relaxed);
    let _ = writeln!(out, "changeflow_query_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
    let sum = metrics.latency_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let _ = writeln!(out, "changeflow_query_duration_seconds_sum {sum}");
    let _ = writeln!(out, "changeflow_query_duration_seconds_count {count}");
    out
}

/// What makes `/health` fail: failed sources, views and sinks, and a connection whose task
/// panicked (with the newest such panic), one line each.
async fn health_problems(database: &Database, metrics: &Metrics) -> Vec<String> {
    let mut problems = database.engine().await.problems();
    let panics = metrics.connection_panics.load(Ordering::Relaxed);
    if panics > 0 {
        let last = metrics.last_panic.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
        problems.push(format!("{panics} connection task(s) panicked; the newest: {last}"));
    }
    problems
}

async fn respond(
    request: Request<Incoming>,
    database: Arc<Database>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", render(&database, &metrics).await),
        "/health" => {
            let problems = health_problems(&database, &metrics).await;
            if problems.is_empty() {
                (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_string())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", problems.join("\n") + "\n")
            }
        }
        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found: try /metrics or /health\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// Serves `/metrics` and `/health` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    database: Arc<Database>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let Ok((socket, _)) = accepted else { continue };
        let database = Arc::clone(&database);
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, Arc::clone(&database), Arc::clone(&metrics)));
            if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(socket), service).await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}
