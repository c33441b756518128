//! Benchmarks of incremental view maintenance (run by hand, results in BENCHMARKS.md):
//!
//!   cargo bench -p changeflow-engine --bench incremental [-- quick | profile [epoch=N] | load] [calendar | join+agg] [ROWS]
//!
//! `profile` runs only 10k-change epochs (`epoch=N`: N-change epochs), 2M changes in all, to
//! profile the epoch path (`perf record` over the whole run sees little else but the initial
//! load). `load` only loads the table and creates the view over it, five times, and prints
//! each view load's rate beside the time EXPLAIN takes to plan the view (a view's fixed
//! cost, which dominates a load of 10k rows).
//!
//! 1. Single-row UPDATE transactions through the session-calendar view (GROUP BY experience,
//!    day with count, sum, min, max) at 10k, 100k and 1M sessions: p50 / p99 latency.
//! 2. Initial load rate, and throughput of 2k- and 10k-change epochs (mixed inserts, updates,
//!    deletes) through the calendar view and through a join + aggregate view (planned with a
//!    partial aggregate of the sessions below the join, see `sql/src/eager_aggregation.rs`).
//! 3. DataFusion recomputing the view from scratch, beside one incremental epoch.
//! 4. Memory: heap bytes of the view's operator state, of its stored rows and of the table's
//!    stored rows per input row (as `/metrics` reports them, see `changeflow_engine::heap_bytes`),
//!    beside the Arrow size of a row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use changeflow_engine::connector::ConnectorRegistry;
use changeflow_engine::{ChangeBatch, Engine};
use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EXPERIENCES: i32 = 1000;
const DAY: i64 = 86_400_000_000;
const BASE: i64 = 1_796_083_200_000_000;

const CALENDAR: &str = "CREATE MATERIALIZED VIEW calendar AS SELECT experience_id, date_trunc('day', starts_at) AS day, \
    count(*) AS sessions, sum(capacity - sold) AS seats_left, min(starts_at) AS first_start, max(starts_at) AS last_start \
    FROM sessions GROUP BY 1, 2";
const CITY: &str = "CREATE MATERIALIZED VIEW by_city AS SELECT e.city, count(*) AS sessions, sum(s.capacity - s.sold) AS seats_left \
    FROM sessions s JOIN experiences e ON s.experience_id = e.id GROUP BY e.city";

#[derive(Clone, Copy)]
struct Session {
    experience: i32,
    starts: i64,
    capacity: i32,
    sold: i32,
}

struct Data {
    schema: SchemaRef,
    rows: Vec<Option<Session>>,
    rng: StdRng,
}

impl Data {
    fn new() -> Self {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("experience_id", DataType::Int32, true),
            Field::new("starts_at", ts, true),
            Field::new("capacity", DataType::Int32, true),
            Field::new("sold", DataType::Int32, true),
        ]));
        Self { schema, rows: Vec::new(), rng: StdRng::seed_from_u64(42) }
    }

    fn random_session(&mut self) -> Session {
        Session {
            experience: self.rng.random_range(1..=EXPERIENCES),
            starts: BASE + self.rng.random_range(0..30) * DAY + self.rng.random_range(8..22) * 3_600_000_000,
            capacity: self.rng.random_range(4..40),
            sold: 0,
        }
    }

    fn batch(&self, rows: &[(i64, Session, i64)]) -> ChangeBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1.experience))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1.starts))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1.capacity))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1.sold))),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns).expect("batch");
        ChangeBatch::new(batch, rows.iter().map(|r| r.2).collect()).expect("change")
    }

    fn inserts(&mut self, count: usize) -> ChangeBatch {
        let rows: Vec<(i64, Session, i64)> = (0..count)
            .map(|_| {
                let session = self.random_session();
                self.rows.push(Some(session));
                (self.rows.len() as i64, session, 1)
            })
            .collect();
        self.batch(&rows)
    }

    fn live_id(&mut self) -> i64 {
        loop {
            let id = self.rng.random_range(1..=self.rows.len() as i64);
            if self.rows[id as usize - 1].is_some() {
                return id;
            }
        }
    }

    /// One sold seat on a random session: a retraction and an insertion.
    fn one_update(&mut self) -> ChangeBatch {
        let id = self.live_id();
        let old = self.rows[id as usize - 1].expect("live");
        let mut new = old;
        new.sold = (new.sold + 1) % (new.capacity + 1);
        self.rows[id as usize - 1] = Some(new);
        self.batch(&[(id, old, -1), (id, new, 1)])
    }

    /// A mixed epoch: a third inserts, a third updates, a third deletes.
    fn mixed(&mut self, changes: usize) -> (ChangeBatch, usize) {
        let mut rows = Vec::with_capacity(changes + changes / 3);
        let mut touched = std::collections::HashSet::new();
        for i in 0..changes {
            match i % 3 {
                0 => {
                    let session = self.random_session();
                    self.rows.push(Some(session));
                    rows.push((self.rows.len() as i64, session, 1));
                }
                1 => {
                    let id = self.live_id();
                    if !touched.insert(id) {
                        continue;
                    }
                    let old = self.rows[id as usize - 1].expect("live");
                    let mut new = old;
                    new.sold = (new.sold + 1) % (new.capacity + 1);
                    self.rows[id as usize - 1] = Some(new);
                    rows.push((id, old, -1));
                    rows.push((id, new, 1));
                }
                _ => {
                    let id = self.live_id();
                    if !touched.insert(id) {
                        continue;
                    }
                    let old = self.rows[id as usize - 1].take().expect("live");
                    rows.push((id, old, -1));
                }
            }
        }
        let count = rows.len();
        (self.batch(&rows), count)
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn engine_with_table(data: &mut Data, rows: usize) -> (Engine, f64) {
    let mut engine = Engine::new(ConnectorRegistry::default());
    engine
        .execute_sql_text(
            "CREATE TABLE sessions (id BIGINT PRIMARY KEY, experience_id INT, starts_at TIMESTAMP, capacity INT, sold INT);\
             CREATE TABLE experiences (id INT PRIMARY KEY, city TEXT)",
        )
        .await
        .expect("schema");
    let cities = ["Berlin", "Lisbon", "Oslo", "Rome", "Vienna", "Paris", "Madrid", "Prague"];
    let experiences = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false), Field::new("city", DataType::Utf8, true)])),
        vec![
            Arc::new(Int32Array::from_iter_values(1..=EXPERIENCES)),
            Arc::new(StringArray::from_iter_values((1..=EXPERIENCES).map(|i| cities[i as usize % cities.len()]))),
        ],
    )
    .expect("experiences");
    engine.write_table("experiences", ChangeBatch::inserts(experiences)).expect("load experiences");
    let started = Instant::now();
    let mut loaded = 0;
    while loaded < rows {
        let chunk = (rows - loaded).min(100_000);
        engine.write_table("sessions", data.inserts(chunk)).expect("load");
        loaded += chunk;
    }
    (engine, rows as f64 / started.elapsed().as_secs_f64())
}

/// How much of the benchmark runs.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Full,
    Quick,
    /// Epochs of this many changes only.
    Profile(usize),
    /// The initial load only.
    Load,
}

async fn bench_view(size: usize, view: &str, name: &str, mode: Mode) {
    let mut data = Data::new();
    let (mut engine, table_rate) = engine_with_table(&mut data, size).await;
    // What a view costs before it reads a row: planning it, as EXPLAIN does (timed apart in
    // `load` mode only, so the other modes' loads plan from cold as a user's first view does).
    let planning = if mode == Mode::Load {
        let started = Instant::now();
        engine.execute_sql_text(&format!("EXPLAIN {view}")).await.expect("explain");
        Some(started.elapsed())
    } else {
        None
    };
    let started = Instant::now();
    engine.execute_sql_text(view).await.expect("view");
    let initial = started.elapsed();
    if let Some(planning) = planning {
        println!(
            "{name:9} {size:>8} rows | view load {:.2} M rows/s ({:.2} ms) | EXPLAIN of the view (its planning) {:.2} ms",
            size as f64 / initial.as_secs_f64() / 1e6,
            micros(initial) / 1e3,
            micros(planning) / 1e3
        );
        return;
    }
    let stats = engine.stats();
    let view_stats = stats.views.first().expect("the view's stats");
    let (state, stored) = (view_stats.state_bytes, view_stats.stored_bytes);
    let table = stats.tables.iter().find(|t| t.name == "sessions").expect("the table's stats").stored_bytes;
    let sample = data.inserts(1000);
    let arrow_row = sample.data.get_array_memory_size() as f64 / 1000.0;
    engine.write_table("sessions", sample).expect("sample rows");

    if let Mode::Profile(epoch_size) = mode {
        let mut elapsed = Duration::ZERO;
        let mut changes = 0;
        for _ in 0..2_000_000 / epoch_size {
            let (change, count) = data.mixed(epoch_size);
            let started = Instant::now();
            engine.write_table("sessions", change).expect("epoch");
            elapsed += started.elapsed();
            changes += count;
        }
        println!(
            "{name:9} {size:>8} rows | profile, {epoch_size}-change epochs: {:.2} M changes/s",
            changes as f64 / elapsed.as_secs_f64() / 1e6
        );
        return;
    }
    let updates = if mode == Mode::Quick { 2_000 } else { 20_000 };
    let mut samples = Vec::with_capacity(updates);
    for _ in 0..updates {
        let change = data.one_update();
        let started = Instant::now();
        engine.write_table("sessions", change).expect("update");
        samples.push(started.elapsed());
    }
    let p50 = percentile(&mut samples, 0.5);
    let p99 = percentile(&mut samples, 0.99);
    println!(
        "{name:9} {size:>8} rows | initial load {:>6.2} M rows/s (table writes {:.2} M rows/s) | 1-row update p50 {:>6.1} us p99 {:>7.1} us | state {:>4.0} B/row, view rows {:.0} B/row, table rows {:.0} B/row (Arrow row {:.0} B)",
        size as f64 / initial.as_secs_f64() / 1e6,
        table_rate / 1e6,
        micros(p50),
        micros(p99),
        state as f64 / size as f64,
        stored as f64 / size as f64,
        table as f64 / size as f64,
        arrow_row
    );

    for epoch_size in [2_000usize, 10_000] {
        let epochs = if mode == Mode::Quick { 5 } else { 30 };
        let mut changes = 0;
        let mut elapsed = Duration::ZERO;
        for _ in 0..epochs {
            let (change, count) = data.mixed(epoch_size);
            let started = Instant::now();
            engine.write_table("sessions", change).expect("epoch");
            elapsed += started.elapsed();
            changes += count;
        }
        let per_epoch = elapsed / epochs as u32;
        let query = view.split_once(" AS ").map(|(_, q)| q).expect("view query");
        let started = Instant::now();
        let runs = 3;
        for _ in 0..runs {
            engine.execute_sql_text(query).await.expect("recompute");
        }
        let recompute = started.elapsed() / runs;
        println!(
            "{name:9} {size:>8} rows | {epoch_size:>5}-change epochs: {:>6.2} M changes/s, {:>8.0} us/epoch | DataFusion recompute {:>9.0} us ({:.0}x the epoch)",
            changes as f64 / elapsed.as_secs_f64() / 1e6,
            micros(per_epoch),
            micros(recompute),
            recompute.as_secs_f64() / per_epoch.as_secs_f64()
        );
    }
}

fn main() {
    // As the changeflow binary does at start.
    changeflow_engine::memory::keep_freed_memory();
    let epoch_size = std::env::args().find_map(|a| a.strip_prefix("epoch=").and_then(|n| n.parse().ok()));
    let mode = if std::env::args().any(|a| a == "profile") {
        Mode::Profile(epoch_size.unwrap_or(10_000))
    } else if std::env::args().any(|a| a == "load") {
        Mode::Load
    } else if std::env::args().any(|a| a == "quick") {
        Mode::Quick
    } else {
        Mode::Full
    };
    // `calendar` or `join+agg` runs one view; a number runs one table size.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let view_filter = args.iter().find(|a| *a == "calendar" || *a == "join+agg").cloned();
    let size_filter: Option<usize> = args.iter().find_map(|a| a.parse().ok());
    let runs = |name: &str, size: usize| {
        view_filter.as_deref().is_none_or(|v| v == name) && size_filter.is_none_or(|s| s == size)
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        for size in [10_000, 100_000, 1_000_000] {
            if runs("calendar", size) {
                for _ in 0..if mode == Mode::Load { 5 } else { 1 } {
                    bench_view(size, CALENDAR, "calendar", mode).await;
                }
            }
        }
        for size in [100_000, 1_000_000] {
            if runs("join+agg", size) {
                for _ in 0..if mode == Mode::Load { 5 } else { 1 } {
                    bench_view(size, CITY, "join+agg", mode).await;
                }
            }
        }
    });
}
