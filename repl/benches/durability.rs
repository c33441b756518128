//! Benchmarks of the data directory against a real PostgreSQL started in a temp dir: a
//! POSTGRES source over one table of N rows (1M by default) with a materialized view holding
//! every row (`replica`) and an aggregate over it.
//!
//! - *fresh*: an empty data directory, CREATE SOURCE (initial snapshot) and the views, until
//!   the view holds every row: what a start costs without a checkpoint.
//! - *checkpoint*: the time to capture and write one checkpoint (fsynced) and its size.
//! - *restart*: a new process state from that data directory until the view answers with
//!   every row (checkpoint loaded, views loaded from their checkpointed state, source
//!   resumed from its slot without a snapshot).
//! - *rebuild*: the same restart from a checkpoint without view state (as an older version
//!   wrote it): the views are recomputed from the restored source relation.
//!
//! Run with `cargo bench -p changeflow --bench durability` (add `-- quick` for 200k rows);
//! results go in BENCHMARKS.md.

#[path = "../tests/it/checkpoint_file.rs"]
mod checkpoint_file;
#[allow(dead_code)]
#[path = "../tests/it/pg_cluster.rs"]
mod pg_cluster;

use std::time::{Duration, Instant};

use changeflow_engine::{Database, DurabilityOptions, Output};
use pg_cluster::PostgresCluster;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CHANGEFLOW_LOG").unwrap_or_else(|_| "off".into()))
        .with_writer(std::io::stderr)
        .init();
    let quick = std::env::args().any(|a| a == "quick");
    let rows: i64 = if quick { 200_000 } else { 1_000_000 };
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, v int, label text);
             INSERT INTO big SELECT i, i % 1000, 'label ' || i FROM generate_series(1, {rows}) i; ANALYZE big;"
        ))
        .await
        .expect("table");
    let dir = std::env::temp_dir().join(format!("changeflow-bench-durability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = DurabilityOptions {
        data_dir: dir.clone(),
        // Checkpoints only when asked, so the timings are of one each.
        checkpoint_interval: Duration::from_secs(24 * 3600),
        checkpoint_epochs: u64::MAX,
    };

    let started = Instant::now();
    let (database, _) = Database::open(changeflow_connectors::registry(), options.clone()).await.expect("open");
    execute(&database, &format!("CREATE SOURCE s FROM POSTGRES WITH (url = '{}') FOR TABLES (big)", cluster.url()))
        .await;
    execute(&database, "CREATE MATERIALIZED VIEW replica AS SELECT id, v, label FROM big WHERE v >= 0").await;
    execute(&database, "CREATE MATERIALIZED VIEW per_v AS SELECT v, count(*) AS n FROM big GROUP BY v").await;
    wait_for_rows(&database, rows).await;
    let fresh = started.elapsed();

    let started = Instant::now();
    database.checkpoint().await.expect("checkpoint");
    let checkpoint = started.elapsed();
    let stats = database.checkpoint_stats().expect("stats");
    database.shutdown().await;
    drop(database);

    let (restarted, load) = restart(&options, rows, (2, 0)).await;
    checkpoint_file::strip_view_state(&dir);
    let (rebuild, rebuild_load) = restart(&options, rows, (0, 2)).await;
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "{rows} rows: fresh start with snapshot {:.2} s | checkpoint {:.2} s, {:.1} MiB ({:.0} bytes/row) | restart from it {:.2} s (load {:.2} s) | fresh / restart {:.1}x | restart rebuilding the views {:.2} s (load {:.2} s)",
        fresh.as_secs_f64(),
        checkpoint.as_secs_f64(),
        stats.last_bytes as f64 / (1024.0 * 1024.0),
        stats.last_bytes as f64 / rows as f64,
        restarted.as_secs_f64(),
        load.as_secs_f64(),
        fresh.as_secs_f64() / restarted.as_secs_f64(),
        rebuild.as_secs_f64(),
        rebuild_load.as_secs_f64(),
    );
}

/// Opens the data directory until the view answers with every row, then stops cleanly;
/// returns that time and the restore's. `views` is (loaded, rebuilt) as expected.
async fn restart(options: &DurabilityOptions, rows: i64, views: (usize, usize)) -> (Duration, Duration) {
    let started = Instant::now();
    let (database, report) = Database::open(changeflow_connectors::registry(), options.clone()).await.expect("reopen");
    wait_for_rows(&database, rows).await;
    let elapsed = started.elapsed();
    assert_eq!(report.rows, rows as u64, "the checkpoint holds the source relation");
    assert_eq!((report.views_loaded, report.views_rebuilt), views, "{:?}", report.views_warning);
    database.shutdown().await;
    (elapsed, report.elapsed)
}

async fn execute(database: &Database, sql: &str) -> Vec<Output> {
    let mut outputs = Vec::new();
    for statement in changeflow_sql::parse_sql(sql).expect("parses") {
        outputs.push(database.execute(&statement).await.unwrap_or_else(|e| panic!("{sql}: {e}")));
    }
    outputs
}

/// Waits until the replica view answers with every row.
async fn wait_for_rows(database: &Database, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let held = database.engine().await.contents("replica").map(|b| b.num_rows() as i64).unwrap_or(0);
        if held == rows {
            return;
        }
        assert!(Instant::now() < deadline, "the view did not fill: {held} of {rows} rows");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
