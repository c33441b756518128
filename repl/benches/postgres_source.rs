//! Benchmarks of the POSTGRES source against a real PostgreSQL started in a temp dir.
//!
//! - *streaming*: the same WAL decoded by `pg_recvlogical` (pgoutput, same publication, to
//!   /dev/null) and by changeflow into a view (`count(*)`, `sum(v)`), each from its own slot
//!   created before the workload, in three shapes: one big transaction, 100-row
//!   transactions, single-row transactions.
//! - *snapshot*: the initial copy of a table into the source's state beside
//!   `COPY t TO STDOUT (FORMAT binary)` to /dev/null.
//! - *freshness*: commit-to-visible latency of single-row updates at 1,000 transactions/s.
//!
//! Run with `cargo bench -p changeflow --bench postgres_source` (add `-- quick` for a smaller
//! run, and `streaming`, `snapshot` or `freshness` for one part, or `large rows=5000000` for
//! one big transaction of that size); results go in BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../tests/it/pg_cluster.rs"]
mod pg_cluster;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use changeflow_engine::{Database, Output};
use datafusion::arrow::array::{Array, Int64Array};
use pg_cluster::PostgresCluster;

struct Sizes {
    big_transaction: i64,
    hundred_row_transactions: i64,
    single_row_transactions: i64,
    snapshot_rows: i64,
    freshness_seconds: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // CHANGEFLOW_LOG=info shows the source's own timings (snapshot copy, spills).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CHANGEFLOW_LOG").unwrap_or_else(|_| "off".into()))
        .with_writer(std::io::stderr)
        .init();
    let quick = std::env::args().any(|a| a == "quick");
    // `streaming`, `snapshot` or `freshness` runs only that part; `large` only the one big
    // transaction, of `rows=N` rows when given.
    let only: Option<String> =
        std::env::args().skip(1).find(|a| ["streaming", "snapshot", "freshness", "large"].contains(&a.as_str()));
    let rows_override: Option<i64> = std::env::args().find_map(|a| a.strip_prefix("rows=")?.parse().ok());
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let sizes = if quick {
        Sizes {
            big_transaction: 100_000,
            hundred_row_transactions: 1_000,
            single_row_transactions: 20_000,
            snapshot_rows: 500_000,
            freshness_seconds: 3,
        }
    } else {
        Sizes {
            big_transaction: 1_000_000,
            hundred_row_transactions: 10_000,
            single_row_transactions: 200_000,
            snapshot_rows: 5_000_000,
            freshness_seconds: 10,
        }
    };
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, v int, label text);
             CREATE PUBLICATION bench FOR TABLE items;
             CREATE PROCEDURE fill(transactions int, per int) LANGUAGE plpgsql AS $$
             BEGIN
               FOR t IN 0 .. transactions - 1 LOOP
                 INSERT INTO items SELECT t::bigint * per + i, i, 'item ' || i FROM generate_series(1, per) i;
                 COMMIT;
               END LOOP;
             END $$;",
        )
        .await
        .expect("schema");

    if runs("streaming") || only.as_deref() == Some("large") {
        let n = rows_override.unwrap_or(sizes.big_transaction);
        streaming(&cluster, &client, "1 transaction", n, &format!("CALL fill(1, {n})")).await;
    }
    if runs("streaming") {
        let t = sizes.hundred_row_transactions;
        streaming(&cluster, &client, "100-row transactions", t * 100, &format!("CALL fill({t}, 100)")).await;
        let t = sizes.single_row_transactions;
        streaming(&cluster, &client, "1-row transactions", t, &format!("CALL fill({t}, 1)")).await;
    }
    if runs("snapshot") {
        snapshot(&cluster, &client, sizes.snapshot_rows).await;
    }
    if runs("freshness") {
        freshness(&cluster, &client, sizes.freshness_seconds).await;
    }
}

async fn lsn(client: &tokio_postgres::Client) -> String {
    client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("lsn").get(0)
}

fn parse_lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').expect("an lsn");
    (u64::from_str_radix(high, 16).expect("hex") << 32) | u64::from_str_radix(low, 16).expect("hex")
}

/// The end of the last WAL record before an insert position (see the tests' `wal_end`).
fn wal_end(insert_lsn: u64) -> u64 {
    let offset = insert_lsn % 8192;
    if offset <= 40 { insert_lsn - offset } else { insert_lsn }
}

async fn streaming(cluster: &PostgresCluster, client: &tokio_postgres::Client, shape: &str, rows: i64, workload: &str) {
    client.batch_execute("TRUNCATE items").await.expect("truncate");
    for slot in ["recv_slot", "cf_slot"] {
        client
            .batch_execute(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"))
            .await
            .expect("slot");
    }
    client.batch_execute(workload).await.expect("workload");
    let end = lsn(client).await;

    let started = Instant::now();
    let status = Command::new(cluster.bin_path("pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["--slot", "recv_slot", "--start", "-o", "proto_version=1", "-o", "publication_names=bench"])
        .args(["--endpos", &end, "-f", "/dev/null", "--no-loop"])
        .stderr(Stdio::null())
        .status()
        .expect("pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed");
    let theirs = started.elapsed();

    let database = Database::new(changeflow_connectors::registry());
    let started = Instant::now();
    execute(
        &database,
        &format!(
            "CREATE SOURCE s FROM POSTGRES WITH (url = '{}', slot = 'cf_slot', publication = 'bench', snapshot = 'never') \
             FOR TABLES (items)",
            cluster.url()
        ),
    )
    .await;
    execute(&database, "CREATE MATERIALIZED VIEW total AS SELECT count(*) AS n, sum(v) AS s FROM items").await;
    wait_for_lsn(&database, wal_end(parse_lsn(&end))).await;
    let ours = started.elapsed();
    let counted = view_count(&database).await;
    assert_eq!(counted, rows, "the view counts every row");
    execute(&database, "DROP MATERIALIZED VIEW total").await;
    execute(&database, "DROP SOURCE s").await;
    drop(database);
    for slot in ["recv_slot", "cf_slot"] {
        client.batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')")).await.expect("drop slot");
    }
    let unit = if shape.starts_with("1-row") { "transactions/s" } else { "rows/s" };
    let peak = peak_resident_mib();
    let rate = |d: Duration| rows as f64 / d.as_secs_f64() / 1000.0;
    println!(
        "streaming {shape:>22}: {rows:>8} rows | changeflow {:>7.1} k {unit} ({:>6.2} s, peak RSS so far {peak} MiB) | pg_recvlogical {:>7.1} k {unit} ({:>6.2} s) | ratio {:.2}",
        rate(ours),
        ours.as_secs_f64(),
        rate(theirs),
        theirs.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

async fn snapshot(cluster: &PostgresCluster, client: &tokio_postgres::Client, rows: i64) {
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, v int, label text);
             INSERT INTO big SELECT i, i % 1000, 'label ' || i FROM generate_series(1, {rows}) i; ANALYZE big;"
        ))
        .await
        .expect("big table");
    let started = Instant::now();
    let status = Command::new(cluster.bin_path("psql"))
        .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-c", "COPY big TO STDOUT (FORMAT binary)"])
        .stdout(Stdio::null())
        .status()
        .expect("psql");
    assert!(status.success(), "COPY failed");
    let theirs = started.elapsed();

    let database = Database::new(changeflow_connectors::registry());
    let started = Instant::now();
    execute(&database, &format!("CREATE SOURCE s FROM POSTGRES WITH (url = '{}') FOR TABLES (big)", cluster.url()))
        .await;
    let setup = started.elapsed();
    // The snapshot is the source's first transaction.
    while source_transactions(&database).await < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ours = started.elapsed();
    assert_eq!(database.engine().await.contents("big").expect("relation").num_rows() as i64, rows);
    execute(&database, "DROP SOURCE s").await;
    let rate = |d: Duration| rows as f64 / d.as_secs_f64() / 1e6;
    println!(
        "snapshot {rows} rows: changeflow {:.2} M rows/s ({:.2} s, {:.2} s of it CREATE SOURCE, peak RSS so far {} MiB) | COPY binary to /dev/null {:.2} M rows/s ({:.2} s) | ratio {:.2}",
        rate(ours),
        ours.as_secs_f64(),
        setup.as_secs_f64(),
        peak_resident_mib(),
        rate(theirs),
        theirs.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

async fn freshness(cluster: &PostgresCluster, client: &tokio_postgres::Client, seconds: u64) {
    client
        .batch_execute("CREATE TABLE fresh (id int PRIMARY KEY, v bigint); INSERT INTO fresh VALUES (1, 0)")
        .await
        .expect("table");
    let database = std::sync::Arc::new(Database::new(changeflow_connectors::registry()));
    execute(&database, &format!("CREATE SOURCE f FROM POSTGRES WITH (url = '{}') FOR TABLES (fresh)", cluster.url()))
        .await;
    execute(&database, "CREATE MATERIALIZED VIEW latest AS SELECT max(v) AS v FROM fresh").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = seconds * 1000;
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let writer_client = cluster.connect().await;
    let writer = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        // Committed means flushed: the walsender sends only flushed WAL.
        writer_client.batch_execute("SET synchronous_commit = on").await.expect("synchronous commit");
        let update = writer_client.prepare("UPDATE fresh SET v = $1 WHERE id = 1").await.expect("prepare");
        for seq in 1..=total as i64 {
            ticker.tick().await;
            writer_client.execute(&update, &[&seq]).await.expect("update");
            let _ = sender.send((seq, Instant::now()));
        }
    });
    let mut latencies: Vec<Duration> = Vec::new();
    let mut waiting: std::collections::VecDeque<(i64, Instant)> = Default::default();
    while latencies.len() < total as usize {
        while let Ok(sent) = receiver.try_recv() {
            waiting.push_back(sent);
        }
        let seen = database
            .engine()
            .await
            .contents("latest")
            .ok()
            .and_then(|b| {
                b.column(0).as_any().downcast_ref::<Int64Array>().filter(|a| !a.is_empty()).map(|a| a.value(0))
            })
            .unwrap_or(0);
        let now = Instant::now();
        while waiting.front().is_some_and(|(seq, _)| *seq <= seen) {
            let (_, committed) = waiting.pop_front().expect("front");
            latencies.push(now - committed);
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    writer.await.expect("writer");
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "freshness at 1000 transactions/s for {seconds} s: commit-to-visible p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_resident_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

async fn execute(database: &Database, sql: &str) -> Vec<Output> {
    let mut outputs = Vec::new();
    for statement in changeflow_sql::parse_sql(sql).expect("parses") {
        outputs.push(database.execute(&statement).await.unwrap_or_else(|e| panic!("{sql}: {e}")));
    }
    outputs
}

/// A column of the first source's row in SHOW SOURCES.
async fn source_column(database: &Database, column: usize) -> Option<String> {
    let output = execute(database, "SHOW SOURCES").await;
    let Output::Rows { batches, .. } = &output[0] else { return None };
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    datafusion::arrow::util::display::array_value_to_string(batch.column(column), 0).ok()
}

async fn source_progress(database: &Database) -> Option<u64> {
    let progress = source_column(database, 6).await?;
    progress.split_once('/').map(|_| parse_lsn(&progress))
}

async fn source_transactions(database: &Database) -> u64 {
    source_column(database, 4).await.and_then(|t| t.parse().ok()).unwrap_or(0)
}

async fn wait_for_lsn(database: &Database, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while source_progress(database).await.is_none_or(|applied| applied < target) {
        assert!(Instant::now() < deadline, "the source did not catch up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn view_count(database: &Database) -> i64 {
    let batch = database.engine().await.contents("total").expect("view");
    batch.column(0).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)).unwrap_or(0)
}
