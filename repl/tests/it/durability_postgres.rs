//! Exactly once from PostgreSQL across restarts, against the real binary: upstream
//! transactions run continuously while changeflow is killed with `kill -9` at random moments
//! (during the initial snapshot, while streaming, while checkpoints are written) and
//! PostgreSQL itself crashes with a transaction held open; at quiescence every view equals
//! PostgreSQL's answer to its query, and the slot has no lag. A source whose upstream is down
//! when changeflow starts keeps retrying and resumes when it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::durability::{data_dir, start};
use crate::serve_server::{Server, sql_file};
use crate::support::{PostgresCluster, postgres_rows};
use crate::workload::{SCHEMA, VIEWS, Workload};

pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

async fn connect(config: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(config, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(client)
}

/// Random workload transactions until stopped, reconnecting while PostgreSQL restarts.
pub async fn write_continuously(config: String, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut workload = Workload::new(seed);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut committed = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(connected) = client.as_ref().filter(|c| !c.is_closed()) else {
            client = connect(&config).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let body: Vec<String> = (0..workload.range(1, 4)).map(|_| workload.statement()).collect();
        match connected.batch_execute(&format!("BEGIN; {}; COMMIT", body.join("; "))).await {
            Ok(()) => committed += 1,
            Err(_) => {
                let _ = connected.batch_execute("ROLLBACK").await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    committed
}

/// The end of the last WAL record before an insert position (see postgres_source.rs).
pub fn wal_end(insert_lsn: u64) -> u64 {
    let offset = insert_lsn % 8192;
    if offset <= 40 { insert_lsn - offset } else { insert_lsn }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_from_postgres_are_exact_across_kill_9_and_a_postgres_crash() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client.batch_execute(SCHEMA).await.expect("schema");
    // Enough rows that the initial snapshot takes a moment, so a kill can land inside it.
    client
        .batch_execute(
            "INSERT INTO orders SELECT g, g % 60 + 1, g % 4 + 1, 'archived' FROM generate_series(1000, 150000) g",
        )
        .await
        .expect("bulk rows");
    let views: Vec<String> =
        VIEWS.iter().map(|(name, query)| format!("CREATE MATERIALIZED VIEW {name} AS {query};")).collect();
    let pipeline = sql_file(
        "durability_postgres.sql",
        &format!(
            "CREATE SOURCE core FROM POSTGRES WITH (url = '{}', slot = 'durable_slot', publication = 'durable_pub') \
             FOR TABLES (public.experiences, public.sessions, orders);\n{}",
            cluster.url(),
            views.join("\n")
        ),
    );
    let dir = data_dir("postgres");
    let args = ["--data-dir", dir.to_str().expect("path"), "--checkpoint-interval", "1"];
    let config = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", cluster.port);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_continuously(config.clone(), 51, Arc::clone(&stop)));
    let mut rng = StdRng::seed_from_u64(52);

    // kill -9 during the snapshot, then at random moments while streaming and checkpointing.
    let server = Server::spawn_with(&[&pipeline], &args, &[]);
    tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
    server.kill();
    for _ in 0..4 {
        let server = start(&[&pipeline], &dir);
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..3000))).await;
        server.kill();
    }

    // PostgreSQL crashes while a transaction is held open; changeflow rides it out, and is
    // then killed once more.
    let server = start(&[&pipeline], &dir);
    let holder = cluster.connect().await;
    holder.batch_execute("BEGIN; INSERT INTO orders VALUES (999999, 1, 1, 'held')").await.expect("held open");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.stop_server("immediate");
    drop(holder);
    cluster.start_server();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill();

    // The newest checkpoint is damaged: the one before it must do, and the slot still has
    // everything after it (it is confirmed only up to the older kept checkpoint).
    let mut checkpoints: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .expect("checkpoints")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cfck"))
        .collect();
    checkpoints.sort();
    let newest = checkpoints.last().expect("a checkpoint");
    let mut bytes = std::fs::read(newest).expect("read");
    let at = bytes.len() / 3;
    bytes[at] ^= 0x5A;
    std::fs::write(newest, bytes).expect("damage");

    let server = start(&[&pipeline], &dir);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let committed = writer.await.expect("writer");
    assert!(committed > 100, "only {committed} upstream transactions committed");

    // Quiescence: everything PostgreSQL wrote is applied, and every view is its answer.
    let client = cluster.connect().await;
    let changeflow = server.client().await;
    let row = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("lsn");
    let target = wal_end(parse_lsn(row.get::<_, &str>(0)).expect("lsn"));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let sources = changeflow.simple_query("SHOW SOURCES").await.expect("show sources");
        let progress = sources.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("core") => {
                Some((row.get(3).unwrap_or_default().to_string(), row.get(6).and_then(parse_lsn)))
            }
            _ => None,
        });
        let (state, applied) = progress.expect("core in SHOW SOURCES");
        assert!(!state.starts_with("failed"), "source failed: {state}\n{}", server.log());
        if applied.is_some_and(|a| a >= target) {
            break;
        }
        assert!(Instant::now() < deadline, "the source did not catch up to {target:X}: {state}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, query) in VIEWS {
        let query = query.replace("FROM calendar", &format!("FROM ({}) AS calendar", VIEWS[0].1));
        let expected = postgres_rows(&client, &query).await;
        let actual = postgres_rows(&changeflow, &format!("SELECT * FROM {name}")).await;
        assert!(
            actual == expected,
            "view {name} differs from PostgreSQL's answer after the restarts:\n  changeflow: {} rows\n  PostgreSQL: {} rows\n{}",
            actual.len(),
            expected.len(),
            server.log()
        );
    }
    let log = server.log();
    assert!(log.contains("falling back to an older one"), "{log}");
    assert!(
        log.contains("resuming from the checkpoint") && !log.contains("created replication slot"),
        "a restart from a checkpoint must not take a new snapshot:\n{log}"
    );
    let orders = postgres_rows(&changeflow, "SELECT count(*) FROM orders").await;
    assert_eq!(orders, postgres_rows(&client, "SELECT count(*) FROM orders").await, "orders, row for row");

    // The slot catches up: confirmed only through checkpoints, so within a few of them
    // (seconds; the bound is generous for a machine busy with the rest of the suite).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let row = client
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'durable_slot'",
                &[],
            )
            .await
            .expect("slot");
        let confirmed = row.get::<_, Option<&str>>(0).and_then(parse_lsn).unwrap_or(0);
        if confirmed >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot still lags: confirmed {confirmed:X}, written {target:X}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_upstream_is_down_at_start_resumes_when_it_is_back() {
    use changeflow_engine::{Database, DurabilityOptions};

    use crate::support::{execute, execute_ok, output_rows};
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 1)").await.expect("t");
    let dir = data_dir("upstream-down");
    let open = || Database::open(changeflow_connectors::registry(), DurabilityOptions::new(&dir));
    let state = |rows: Vec<Vec<Option<String>>>| rows[0][3].clone().unwrap_or_default();
    let (database, _) = open().await.expect("open");
    execute_ok(&database, &format!("CREATE SOURCE up FROM POSTGRES WITH (url = '{}') FOR TABLES (t)", cluster.url()))
        .await;
    execute_ok(&database, "CREATE MATERIALIZED VIEW total AS SELECT sum(v) AS v FROM t").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while view_column(&database, "SELECT v FROM total").await != vec![Some("1".to_string())] {
        assert!(Instant::now() < deadline, "the snapshot did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    database.shutdown().await;
    drop(database);

    // PostgreSQL is down while changeflow starts: the source waits, retrying.
    drop(client);
    cluster.stop_server("fast");
    let (database, _) = open().await.expect("opens without its upstream");
    let shown = output_rows(&execute(&database, "SHOW SOURCES").await.expect("show")[0]);
    assert!(state(shown.clone()).starts_with("retrying"), "{shown:?}");
    assert_eq!(view_column(&database, "SELECT v FROM total").await, vec![Some("1".to_string())]);
    cluster.start_server();
    let client = cluster.connect().await;
    client.batch_execute("INSERT INTO t VALUES (2, 10)").await.expect("insert");
    let deadline = Instant::now() + Duration::from_secs(60);
    while view_column(&database, "SELECT v FROM total").await != vec![Some("11".to_string())] {
        let shown = output_rows(&execute(&database, "SHOW SOURCES").await.expect("show")[0]);
        assert!(Instant::now() < deadline, "the source did not resume: {shown:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    database.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first column of a query's rows, as text.
async fn view_column(database: &changeflow_engine::Database, query: &str) -> Vec<Option<String>> {
    let output = crate::support::execute(database, query).await.expect("query");
    crate::support::output_rows(&output[0]).into_iter().map(|mut row| row.remove(0)).collect()
}
