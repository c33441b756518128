//! Benchmarks of `changeflow serve` over the Postgres wire protocol, with PostgreSQL on the
//! same machine in the same run as the anchor.
//!
//! - *point queries*: `SELECT id, grp, v FROM ... WHERE id = $1` (a prepared statement, random
//!   ids) on a 1M-row materialized view, from 1, 8 and 64 clients for a few seconds each,
//!   while a writer updates random rows (10-row transactions at 1,000 rows/s). PostgreSQL
//!   answers the same query from the same table (primary-key index) under the same writes.
//! - *subscribe*: time from sending a one-row UPDATE (autocommit) to a SUBSCRIBE client
//!   receiving the change, p50 / p99.
//!
//! Run with `cargo bench -p changeflow --bench serve [-- quick]`; results go in BENCHMARKS.md.

#[allow(dead_code)]
#[path = "../tests/it/pg_cluster.rs"]
mod pg_cluster;
#[path = "../tests/it/scratch.rs"]
mod scratch;
#[allow(dead_code)]
#[path = "../tests/it/serve_server.rs"]
mod serve_server;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pg_cluster::PostgresCluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serve_server::Server;

const ROWS: i32 = 1_000_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Updates random rows in 10-row transactions at about `rows_per_second`, until stopped.
async fn writer(url: String, table: &'static str, rows_per_second: u64, stop: Arc<AtomicBool>) -> u64 {
    let client = connect(&url).await;
    let mut rng = StdRng::seed_from_u64(7);
    let mut ticker = tokio::time::interval(Duration::from_millis(10 * 1000 / rows_per_second));
    let mut written = 0;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let mut sql = String::from("BEGIN;");
        for _ in 0..10 {
            sql.push_str(&format!("UPDATE {table} SET v = v + 1 WHERE id = {};", rng.random_range(1..=ROWS)));
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.expect("write");
        written += 10;
    }
    written
}

/// Runs `clients` readers for `seconds`; returns queries per second and sorted latencies.
async fn readers(url: &str, query: &str, clients: usize, seconds: f64) -> (f64, Vec<Duration>) {
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    for c in 0..clients {
        let client = connect(url).await;
        let query = query.to_string();
        tasks.push(tokio::spawn(async move {
            let statement = client.prepare(&query).await.expect("prepare");
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let id: i32 = rng.random_range(1..=ROWS);
                let started = Instant::now();
                let rows = client.query(&statement, &[&id]).await.expect("point query");
                latencies.push(started.elapsed());
                assert_eq!(rows.len(), 1, "id {id} not found");
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("reader"));
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds);
    all.sort();
    (all.len() as f64 / elapsed, all)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let seconds = if quick { 2.0 } else { 5.0 };

    let cluster = PostgresCluster::start();
    let pg_url = cluster.url();
    let pg = connect(&pg_url).await;
    pg.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, grp int, v bigint);
         INSERT INTO items SELECT i, i % 1000, i FROM generate_series(1, {ROWS}) i;"
    ))
    .await
    .expect("load PostgreSQL");
    pg.batch_execute("VACUUM ANALYZE items").await.expect("vacuum");

    let server = Server::start_with(&[], &[], &[]);
    let cf_url = server.url("bench");
    let cf = connect(&cf_url).await;
    cf.batch_execute(
        "CREATE TABLE items (id INT PRIMARY KEY, grp INT, v BIGINT);
         CREATE MATERIALIZED VIEW item_view AS SELECT id, grp, v FROM items WHERE v >= 0;",
    )
    .await
    .expect("schema");
    let load_started = Instant::now();
    for chunk in 0..(ROWS / 10_000) {
        let mut sql = String::from("INSERT INTO items VALUES ");
        for i in 1..=10_000 {
            let id = chunk * 10_000 + i;
            if i > 1 {
                sql.push(',');
            }
            sql.push_str(&format!("({id},{},{id})", id % 1000));
        }
        cf.batch_execute(&sql).await.expect("load changeflow");
    }
    println!("loaded {ROWS} rows into changeflow over pgwire in {:.1} s", load_started.elapsed().as_secs_f64());

    for clients in [1usize, 8, 64] {
        let mut results = Vec::new();
        for (name, url, query, table) in [
            ("changeflow", &cf_url, "SELECT id, grp, v FROM item_view WHERE id = $1", "items"),
            ("PostgreSQL", &pg_url, "SELECT id, grp, v FROM items WHERE id = $1", "items"),
        ] {
            let stop = Arc::new(AtomicBool::new(false));
            let writes = tokio::spawn(writer(url.clone(), table, 1000, Arc::clone(&stop)));
            let (qps, latencies) = readers(url, query, clients, seconds).await;
            stop.store(true, Ordering::Relaxed);
            let written = writes.await.expect("writer");
            println!(
                "point query {clients:>2} clients | {name:<10} {qps:>8.0} queries/s  p50 {:>7.0} us  p99 {:>7.0} us  ({written} rows updated meanwhile)",
                percentile(&latencies, 0.5).as_secs_f64() * 1e6,
                percentile(&latencies, 0.99).as_secs_f64() * 1e6,
            );
            results.push(qps);
        }
        println!("point query {clients:>2} clients | ratio changeflow / PostgreSQL {:.2}", results[0] / results[1]);
    }

    // SUBSCRIBE delivery latency.
    let subscriber = connect(&cf_url).await;
    let stream = subscriber
        .query_raw("SUBSCRIBE TO item_view WITH (snapshot = false)", std::iter::empty::<i32>())
        .await
        .expect("subscribe");
    let mut stream = pin!(stream);
    let samples = if quick { 200 } else { 1000 };
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples {
        let marker = 10_000_000 + n as i64;
        let started = Instant::now();
        cf.execute("UPDATE items SET v = $1 WHERE id = 1", &[&marker]).await.expect("update");
        loop {
            let row = stream.next().await.expect("stream open").expect("row");
            if row.get::<_, i64>("weight") == 1 && row.get::<_, i64>("v") == marker {
                break;
            }
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "subscribe: {samples} one-row updates, send-to-delivery p50 {:.0} us, p99 {:.0} us",
        percentile(&latencies, 0.5).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6
    );
}
