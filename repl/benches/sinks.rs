//! Benchmarks of sinks against a real PostgreSQL started in a temp dir.
//!
//! - *file*: N row changes from a POSTGRES source (100-row upstream transactions, read from a
//!   slot created before them) through `changes(items)` into a FILE sink in `debezium-json`,
//!   until the file has every event; beside `pg_recvlogical` draining the same WAL
//!   (pgoutput) to /dev/null.
//! - *postgres*: N rows of a local table into a POSTGRES sink (`create_table`), until the
//!   target has them all; beside `psql \copy` of the same rows (CSV) into a table.
//!
//! Run with `cargo bench -p changeflow --bench sinks` (add `-- quick` for 100k rows);
//! results go in BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../tests/it/pg_cluster.rs"]
mod pg_cluster;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use changeflow_engine::Database;
use pg_cluster::PostgresCluster;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rows: i64 = if quick { 100_000 } else { 1_000_000 };
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    let dir = std::env::temp_dir().join(format!("changeflow-bench-sinks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");

    // File sink from a PostgreSQL source, beside pg_recvlogical.
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, v int, label text, price numeric(10,2), at timestamptz);
             CREATE PUBLICATION bench FOR TABLE items;
             CREATE PROCEDURE fill(transactions int, per int) LANGUAGE plpgsql AS $$
             BEGIN
               FOR t IN 0 .. transactions - 1 LOOP
                 INSERT INTO items SELECT t::bigint * per + i, i, 'item ' || i, i / 100.0, now()
                   FROM generate_series(1, per) i;
                 COMMIT;
               END LOOP;
             END $$;",
        )
        .await
        .expect("schema");
    for slot in ["recv_slot", "cf_slot"] {
        client
            .batch_execute(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"))
            .await
            .expect("slot");
    }
    client.batch_execute(&format!("CALL fill({}, 100)", rows / 100)).await.expect("fill");
    let end: String = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("lsn").get(0);
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
    let output = dir.join("items.jsonl");
    let database = Database::new(changeflow_connectors::registry());
    let started = Instant::now();
    execute(
        &database,
        &format!(
            "CREATE SOURCE s FROM POSTGRES WITH (url = '{}', slot = 'cf_slot', publication = 'bench', snapshot = 'never') \
             FOR TABLES (items);
             CREATE SINK out FROM changes(items) INTO FILE WITH (path = '{}', format = 'debezium-json', rotate_bytes = '1000000000000')",
            cluster.url(),
            output.display()
        ),
    )
    .await;
    wait_until(|| count_lines(&output) >= rows as usize).await;
    let ours = started.elapsed();
    database.shutdown().await;
    drop(database);
    let rate = |d: Duration| rows as f64 / d.as_secs_f64() / 1000.0;
    println!(
        "changes(...) to a file sink, debezium-json, {rows} changes in 100-row transactions: changeflow {:.1} k events/s ({:.2} s) | pg_recvlogical to /dev/null {:.1} k changes/s ({:.2} s) | ratio {:.2}",
        rate(ours),
        ours.as_secs_f64(),
        rate(theirs),
        theirs.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );

    // PostgreSQL sink from a local table, beside psql \copy.
    let csv = dir.join("rows.csv");
    let row = |i: i64| (i, i % 100, format!("item {i}"), format!("{}.{:02}", i / 100, i % 100));
    let text: String = (1..=rows).map(row).map(|(id, v, label, price)| format!("{id},{v},{label},{price}\n")).collect();
    std::fs::write(&csv, text).expect("csv");
    client
        .batch_execute("CREATE TABLE copied (id bigint PRIMARY KEY, v int, label text, price numeric(10,2))")
        .await
        .expect("table");
    let started = Instant::now();
    let status = Command::new(cluster.bin_path("psql"))
        .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres", "-d", "postgres", "-q"])
        .args(["-c", &format!("\\copy copied FROM '{}' (FORMAT csv)", csv.display())])
        .status()
        .expect("psql");
    assert!(status.success(), "\\copy failed");
    let theirs = started.elapsed();
    let database = Database::new(changeflow_connectors::registry());
    execute(&database, "CREATE TABLE source_rows (id bigint PRIMARY KEY, v int, label text, price numeric(10,2))")
        .await;
    let mut inserted = 0;
    while inserted < rows {
        let values: Vec<String> = (inserted + 1..=(inserted + 10_000).min(rows))
            .map(row)
            .map(|(id, v, label, price)| format!("({id}, {v}, '{label}', {price})"))
            .collect();
        inserted += values.len() as i64;
        execute(&database, &format!("INSERT INTO source_rows VALUES {}", values.join(", "))).await;
    }
    let started = Instant::now();
    execute(
        &database,
        &format!(
            "CREATE SINK replica FROM source_rows INTO POSTGRES WITH (url = '{}', table = 'replica', create_table = 'true')",
            cluster.url()
        ),
    )
    .await;
    loop {
        let count: Option<i64> =
            client.query_opt("SELECT count(*) FROM replica", &[]).await.ok().flatten().map(|row| row.get(0));
        if count == Some(rows) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ours = started.elapsed();
    database.shutdown().await;
    println!(
        "postgres sink, {rows} rows (one epoch): changeflow {:.1} k rows/s ({:.2} s) | psql \\copy {:.1} k rows/s ({:.2} s) | ratio {:.2}",
        rate(ours),
        ours.as_secs_f64(),
        rate(theirs),
        theirs.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn execute(database: &Database, sql: &str) {
    for statement in changeflow_sql::parse_sql(sql).expect("parses") {
        database.execute(&statement).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

fn count_lines(path: &std::path::Path) -> usize {
    std::fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
