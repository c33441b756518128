//! Sinks against the real binary: a FILE sink receives every committed change exactly once,
//! in commit order, across `kill -9` and restarts (its file is cut back to the checkpoint's
//! position and what followed is written again), with size rotation; a POSTGRES sink keeps
//! a replica table equal to a source table's projection across `kill -9`, and rows its
//! target refuses go to a dead-letter sink with their error while the rest flows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use std::sync::atomic::AtomicBool;

use crate::durability::{data_dir, start};
use crate::durability_postgres::{parse_lsn, wal_end, write_continuously};
use crate::serve_server::sql_file;
use crate::support::{PostgresCluster, normalize_value, postgres_rows};
use crate::workload::SCHEMA;

/// Every line of a rotated file set, oldest first: `path.1`, `path.2`, ..., then `path`.
fn lines(path: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> =
        (1..).map(|n| PathBuf::from(format!("{}.{n}", path.display()))).take_while(|p| p.exists()).collect();
    files.push(path.to_path_buf());
    files
        .iter()
        .filter(|p| p.exists())
        .flat_map(|p| std::fs::read_to_string(p).expect("read").lines().map(str::to_string).collect::<Vec<_>>())
        .map(|line| serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// Inserts rows 1, 2, 3, ... one transaction each until the server goes away.
async fn insert_until_killed(client: tokio_postgres::Client, next: Arc<AtomicI64>) {
    loop {
        let id = next.load(Ordering::SeqCst);
        if client
            .batch_execute(&format!("INSERT INTO events VALUES ({id}, 'kind {}', {})", id % 3, id * 10))
            .await
            .is_err()
        {
            return;
        }
        next.store(id + 1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sink_gets_each_change_once_in_order_across_kill_9() {
    let dir = data_dir("file-sink");
    std::fs::create_dir_all(&dir).expect("dir");
    // Under the sink directory `serve` gives FILE sinks by default: the data directory's sinks/.
    let output = dir.join("sinks").join("out").join("events.jsonl");
    let pipeline = sql_file(
        "sink_file.sql",
        &format!(
            "CREATE TABLE events (id INT PRIMARY KEY, kind TEXT, n INT);\n\
             CREATE SINK events_out FROM events INTO FILE WITH (path = '{}', format = 'json', rotate_bytes = '4000');",
            output.display()
        ),
    );
    let next = Arc::new(AtomicI64::new(1));
    let mut rng = StdRng::seed_from_u64(21);
    for _ in 0..4 {
        let server = start(&[&pipeline], &dir);
        let writer = tokio::spawn(insert_until_killed(server.client().await, Arc::clone(&next)));
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..2500))).await;
        server.kill();
        writer.await.expect("writer");
    }
    let mut server = start(&[&pipeline], &dir);
    let client = server.client().await;
    let rows: i64 = client.query_one("SELECT count(*) FROM events", &[]).await.expect("count").get(0);
    let acknowledged = next.load(Ordering::SeqCst) - 1;
    assert!(rows == acknowledged || rows == acknowledged + 1, "{rows} rows, {acknowledged} acknowledged");
    assert!(rows > 50, "only {rows} rows were written");
    // The sink catches up with the table.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (lines(&output).len() as i64) < rows {
        assert!(Instant::now() < deadline, "the sink has {} of {rows} rows:\n{}", lines(&output).len(), server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.terminate(Duration::from_secs(30)).success());
    let ids: Vec<i64> = lines(&output).iter().map(|m| m["id"].as_i64().expect("id")).collect();
    let expected: Vec<i64> = (1..=rows).collect();
    assert_eq!(ids, expected, "every insert exactly once, in commit order");
    let first = &lines(&output)[0];
    assert_eq!(first["kind"], "kind 1");
    assert_eq!(first["n"], 10);
    assert_eq!(first["__deleted"], false);
    assert!(PathBuf::from(format!("{}.1", output.display())).exists(), "the file was rotated");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rows of a query against a database of the cluster, normalized and sorted.
async fn rows_in(cluster: &PostgresCluster, database: &str, query: &str) -> Vec<String> {
    postgres_rows(&connect_to(cluster, database).await, query).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_sink_replicates_a_table_across_kill_9_and_dead_letters_refused_rows() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client.batch_execute(SCHEMA).await.expect("schema");
    client.batch_execute("CREATE DATABASE replica").await.expect("replica database");
    // Enough rows that the sinks' first epoch goes through COPY and a staging table.
    client
        .batch_execute(
            "INSERT INTO sessions SELECT g, g % 8 + 1, '2026-12-02 10:00', g % 30 + 1, 0, 12.50 \
             FROM generate_series(10000, 13000) g",
        )
        .await
        .expect("bulk rows");
    let target = format!("postgres://postgres@127.0.0.1:{}/replica", cluster.port);
    connect_to(&cluster, "replica")
        .await
        .batch_execute("CREATE TABLE guarded (id int PRIMARY KEY, capacity int CHECK (capacity <= 25), sold int)")
        .await
        .expect("guarded table");
    let dir = data_dir("postgres-sink");
    std::fs::create_dir_all(&dir).expect("dir");
    let dead_letters = dir.join("sinks").join("dead.jsonl");
    let pipeline = sql_file(
        "sink_postgres.sql",
        &format!(
            "CREATE SOURCE core FROM POSTGRES WITH (url = '{source}', slot = 'sink_slot', publication = 'sink_pub') \
             FOR TABLES (public.sessions);\n\
             CREATE SINK replica FROM sessions INTO POSTGRES WITH (url = '{target}', table = 'session_replica', \
             columns = 'id, experience_id, starts_at, capacity', create_table = 'true');\n\
             CREATE SINK guarded FROM sessions INTO POSTGRES WITH (url = '{target}', table = 'guarded', \
             columns = 'id, capacity, sold') ON ERROR DEAD LETTER INTO FILE WITH (path = '{dead}', format = 'json');",
            source = cluster.url(),
            dead = dead_letters.display()
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let config = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", cluster.port);
    let writer = tokio::spawn(write_continuously(config, 61, Arc::clone(&stop)));
    let mut rng = StdRng::seed_from_u64(62);
    for _ in 0..3 {
        let server = start(&[&pipeline], &dir);
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        server.kill();
    }
    let server = start(&[&pipeline], &dir);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.expect("writer") > 50, "too few upstream transactions");

    // Quiescence: the replica is the source's projection, and its progress row names a
    // position past the last change to the captured table (its commit, or a snapshot taken
    // after it).
    let row = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("lsn");
    let written = wal_end(parse_lsn(row.get::<_, &str>(0)).expect("lsn"));
    client
        .batch_execute("INSERT INTO sessions VALUES (100000, 1, '2026-12-01 10:00', 5, 0, 10.00)")
        .await
        .expect("last change");
    let expected = postgres_rows(&client, "SELECT id, experience_id, starts_at, capacity FROM sessions").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let actual =
            rows_in(&cluster, "replica", "SELECT id, experience_id, starts_at, capacity FROM session_replica").await;
        let progress =
            rows_in(&cluster, "replica", "SELECT position FROM changeflow_sink_progress WHERE sink = 'replica'").await;
        let caught_up = progress.first().and_then(|p| parse_lsn(p)).is_some_and(|p| p > written);
        if actual == expected && caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica differs from the source after the restarts (equal: {}, {} rows vs {}; progress {progress:?} \
             of {written:X}):\n{}",
            actual == expected,
            actual.len(),
            expected.len(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Refused rows went to the dead-letter file with their error; the sink kept going.
    let changeflow = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sinks = changeflow.simple_query("SHOW SINKS").await.expect("show sinks");
        let lagging: Vec<String> = sinks
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) if row.get(5) != Some("0") => {
                    Some(format!("{:?} lags {:?} epochs ({:?})", row.get(0), row.get(5), row.get(3)))
                }
                _ => None,
            })
            .collect();
        if lagging.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sinks did not catch up: {lagging:?}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let letters = lines(&dead_letters);
    assert!(!letters.is_empty(), "no row was refused (capacities above 25 are):\n{}", server.log());
    for letter in &letters {
        let error = letter["__error"].as_str().unwrap_or_default();
        assert!(error.contains("guarded_capacity_check") && error.contains("23514"), "{letter}");
        assert!(letter["capacity"].as_i64().is_some_and(|c| c > 25), "{letter}");
    }
    let sinks = changeflow.simple_query("SHOW SINKS").await.expect("show sinks");
    for message in &sinks {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            assert_eq!(row.get(3), Some("running"), "sink {:?} is not running", row.get(0));
        }
    }
    let (_, metrics) = server.http_get("/metrics");
    let dead_letters = metrics
        .lines()
        .find_map(|l| l.strip_prefix("changeflow_sink_dead_letters_total{sink=\"guarded\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    // Counted since this process started (the file holds those of earlier runs too).
    assert!(dead_letters.is_some_and(|n| n > 0 && n <= letters.len() as u64), "{metrics}");
    assert!(
        metrics.contains(
            "changeflow_sink_state{sink=\"replica\",relation=\"sessions\",connector=\"postgres\",state=\"running\"} 1"
        ),
        "{metrics}"
    );
    let guarded = rows_in(&cluster, "replica", "SELECT count(*) FROM guarded WHERE capacity > 25").await;
    assert_eq!(guarded, vec![normalize_value(Some("0"))]);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn connect_to(cluster: &PostgresCluster, database: &str) -> tokio_postgres::Client {
    let config = format!("host=127.0.0.1 port={} user=postgres dbname={database}", cluster.port);
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_deleted_in_their_transaction_reach_a_file_once_in_commit_order() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client
        .batch_execute(
            "CREATE TABLE outbox (id bigserial PRIMARY KEY, aggregate_id text NOT NULL, event_type text NOT NULL, \
             payload jsonb NOT NULL)",
        )
        .await
        .expect("outbox table");
    let dir = data_dir("outbox");
    std::fs::create_dir_all(&dir).expect("dir");
    let events = dir.join("sinks").join("events.jsonl");
    let pipeline = sql_file(
        "sink_outbox.sql",
        &format!(
            "CREATE SOURCE app FROM POSTGRES WITH (url = '{}', slot = 'outbox_slot', publication = 'outbox_pub', \
             append_only = 'outbox') FOR TABLES (public.outbox);\n\
             CREATE SINK events FROM outbox INTO FILE WITH (path = '{}', format = 'outbox', \
             payload_column = 'payload', key_column = 'aggregate_id', type_column = 'event_type');",
            cluster.url(),
            events.display()
        ),
    );
    // The application writes each event and deletes it in the same transaction, while
    // changeflow is killed once and restarted.
    let total = 300;
    let write = |from: i64, to: i64| {
        let config = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", cluster.port);
        async move {
            let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(async move {
                let _ = connection.await;
            });
            for i in from..=to {
                client
                    .batch_execute(&format!(
                        "BEGIN; INSERT INTO outbox (aggregate_id, event_type, payload) VALUES \
                         ('order-{i}', 'OrderPlaced', '{{\"order\": {i}, \"items\": [1, 2]}}'); \
                         DELETE FROM outbox WHERE aggregate_id = 'order-{i}'; COMMIT"
                    ))
                    .await
                    .expect("event");
            }
        }
    };
    let server = start(&[&pipeline], &dir);
    write(1, total / 2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.kill();
    write(total / 2 + 1, total).await;
    let mut server = start(&[&pipeline], &dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (lines(&events).len() as i64) < total {
        assert!(Instant::now() < deadline, "{} of {total} events:\n{}", lines(&events).len(), server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.terminate(Duration::from_secs(30)).success());
    let delivered = lines(&events);
    let orders: Vec<i64> = delivered.iter().map(|e| e["payload"]["order"].as_i64().expect("order")).collect();
    assert_eq!(orders, (1..=total).collect::<Vec<_>>(), "each event once, in commit order");
    assert_eq!(
        delivered[0],
        serde_json::json!({"key": "order-1", "type": "OrderPlaced", "payload": {"order": 1, "items": [1, 2]}})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until a file has at least `count` lines; returns them.
async fn wait_for_lines(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = lines(path);
        if found.len() >= count {
            return found;
        }
        assert!(Instant::now() < deadline, "{} has {} of {count} lines: {found:?}", path.display(), found.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn keys(value: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_transaction_and_changes_formats_from_a_postgres_source() {
    use crate::support::execute_ok;
    let cluster = PostgresCluster::start();
    let mut client = cluster.connect().await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2), note text);
             INSERT INTO orders VALUES (1, 'new', 10.50, NULL), (2, 'new', 3.00, 'gift');",
        )
        .await
        .expect("schema");
    let dir = data_dir("formats");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = |name: &str| dir.join(name);
    let database = changeflow_engine::Database::new(changeflow_connectors::registry());
    execute_ok(
        &database,
        &format!(
            "CREATE SOURCE core FROM POSTGRES WITH (url = '{}') FOR TABLES (public.orders);
             CREATE SINK dbz FROM orders INTO FILE WITH (path = '{}', format = 'debezium-json');
             CREATE SINK tx FROM orders INTO FILE WITH (path = '{}', format = 'transaction-json');
             CREATE MATERIALIZED VIEW status_changes AS SELECT after.id AS id, before.status AS old_status,
               after.status AS new_status, source.lsn AS lsn, source.tx_id AS tx_id,
               extract(epoch FROM source.commit_ts) AS committed
               FROM changes(orders) WHERE op = 'u' AND before.status IS DISTINCT FROM after.status;
             CREATE SINK events FROM status_changes INTO FILE WITH (path = '{}', format = 'json');
             CREATE SINK stream FROM changes(orders) INTO FILE WITH (path = '{}', format = 'debezium-json');",
            cluster.url(),
            file("dbz.jsonl").display(),
            file("tx.jsonl").display(),
            file("events.jsonl").display(),
            file("stream.jsonl").display()
        ),
    )
    .await;
    // The snapshot reaches the sinks as reads.
    let reads = wait_for_lines(&file("dbz.jsonl"), 2).await;
    assert!(reads.iter().all(|m| m["op"] == "r" && m["source"]["snapshot"] == "true"), "{reads:?}");
    // The transaction's id and commit time, as PostgreSQL knows them.
    let transaction = client.transaction().await.expect("begin");
    transaction
        .batch_execute("UPDATE orders SET status = 'paid' WHERE id = 1; UPDATE orders SET amount = 4 WHERE id = 2")
        .await
        .expect("update");
    let row = transaction
        .query_one("SELECT txid_current()::bigint, floor(extract(epoch FROM now()) * 1000)::bigint", &[])
        .await
        .expect("xid");
    let (xid, started_ms): (i64, i64) = (row.get(0), row.get(1));
    transaction.commit().await.expect("commit");
    let committed_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;

    // debezium-json: the envelope and source fields Debezium's PostgreSQL connector writes
    // (a message recorded from it for the same change), the same before / after / op.
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::cli::manifest_dir().join("../tests/fixtures/debezium_postgres_update.json"))
            .expect("fixture"),
    )
    .expect("fixture JSON");
    let messages = wait_for_lines(&file("dbz.jsonl"), 4).await;
    let ours = messages
        .iter()
        .find(|m| m["op"] == "u" && m["after"]["id"] == 1)
        .unwrap_or_else(|| panic!("no update of order 1 in {messages:#?}"));
    assert_eq!(keys(ours).into_iter().filter(|k| k != "__error").collect::<Vec<_>>(), keys(&recorded));
    let mut our_source = keys(&ours["source"]);
    our_source.retain(|k| k != "epoch");
    assert_eq!(our_source, keys(&recorded["source"]), "source fields");
    assert_eq!(ours["before"], recorded["before"]);
    assert_eq!(ours["after"], recorded["after"]);
    assert!(ours["source"]["lsn"].as_u64().is_some_and(|l| l > 0), "the upstream LSN: {ours}");
    assert_eq!(ours["source"]["snapshot"], "false");
    assert_eq!(ours["source"]["txId"], xid, "the upstream transaction id: {ours}");
    let commit_ms = ours["source"]["ts_ms"].as_i64().expect("source.ts_ms");
    assert!(
        (started_ms..=committed_ms).contains(&commit_ms),
        "commit time {commit_ms} in {started_ms}..={committed_ms}"
    );

    // transaction-json: one message for the upstream transaction, with both changes.
    let transactions = wait_for_lines(&file("tx.jsonl"), 2).await;
    let last = transactions.last().expect("a transaction");
    let changes = last["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2, "{last}");
    assert!(changes.iter().all(|c| c["op"] == "u"), "{last}");
    assert_eq!(last["source"]["lsn"], ours["source"]["lsn"]);

    // changes(orders): only the status change is an event, with its position upstream.
    let events = wait_for_lines(&file("events.jsonl"), 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], 1);
    assert_eq!(events[0]["old_status"], "new");
    assert_eq!(events[0]["new_status"], "paid");
    assert!(events[0]["lsn"].as_str().is_some_and(|l| l.contains('/')), "{events:?}");
    assert_eq!(events[0]["tx_id"], xid, "{events:?}");
    let committed = events[0]["committed"].as_f64().expect("commit_ts");
    assert!((committed * 1000.0 - commit_ms as f64).abs() < 1.0, "commit_ts {committed} is source.ts_ms {commit_ms}");

    // A sink from changes(orders) in debezium-json: the events' own envelopes.
    let stream = lines(&file("stream.jsonl"));
    let update =
        stream.iter().find(|m| m["op"] == "u" && m["after"]["id"] == 1).unwrap_or_else(|| panic!("{stream:#?}"));
    assert_eq!(update["before"], recorded["before"]);
    assert_eq!(update["after"], recorded["after"]);
    assert_eq!(update["source"]["lsn"], ours["source"]["lsn"]);
    assert_eq!(update["source"]["txId"], xid);
    // source.db / schema / table name the upstream table, for the relation and its stream.
    let upstream_db: String = client.query_one("SELECT current_database()::text", &[]).await.expect("db").get(0);
    for message in [ours, update] {
        let source = &message["source"];
        assert_eq!(
            (&source["db"], &source["schema"], &source["table"]),
            (&upstream_db.clone().into(), &"public".into(), &"orders".into()),
            "{message}"
        );
    }

    // Transactions committed back to back stay apart: one message per upstream transaction,
    // each with its own id, even when they reach the source together.
    client
        .batch_execute(
            "BEGIN; UPDATE orders SET note = 'first' WHERE id = 2; COMMIT;
             BEGIN; UPDATE orders SET note = 'second' WHERE id = 2; COMMIT;",
        )
        .await
        .expect("two transactions");
    let transactions = wait_for_lines(&file("tx.jsonl"), 4).await;
    let notes: Vec<&serde_json::Value> = transactions[2..].iter().map(|t| &t["changes"][0]["after"]["note"]).collect();
    assert_eq!(notes, ["first", "second"], "{transactions:#?}");
    assert!(transactions[2..].iter().all(|t| t["changes"].as_array().map(Vec::len) == Some(1)), "{transactions:#?}");
    let ids: Vec<i64> = transactions[1..].iter().map(|t| t["source"]["txId"].as_i64().expect("txId")).collect();
    assert!(ids[0] == xid && ids[0] < ids[1] && ids[1] < ids[2], "transaction ids {ids:?}");
    database.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_sink_writes_array_columns() {
    use crate::support::execute_ok;
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client
        .batch_execute("CREATE TABLE posts_copy (id int PRIMARY KEY, tags text[], scores int[])")
        .await
        .expect("target table");
    let database = changeflow_engine::Database::new(changeflow_connectors::registry());
    execute_ok(
        &database,
        &format!(
            "CREATE TABLE posts (id INT PRIMARY KEY, tags TEXT[], scores INT[]);
             CREATE SINK copy FROM posts INTO POSTGRES WITH (url = '{}', table = 'posts_copy');
             INSERT INTO posts VALUES (1, ARRAY['a', 'b c'], ARRAY[1, 2]), (2, '{{\"x,y\",NULL,\"\"}}', NULL),
               (3, '{{}}', '{{}}');",
            cluster.url()
        ),
    )
    .await;
    let expected = vec![
        vec![Some("1".to_string()), Some("{a,\"b c\"}".to_string()), Some("{1,2}".to_string()), Some("a".to_string())],
        vec![Some("2".to_string()), Some("{\"x,y\",NULL,\"\"}".to_string()), None, Some("x,y".to_string())],
        vec![Some("3".to_string()), Some("{}".to_string()), Some("{}".to_string()), None],
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = client
            .query("SELECT id::text, tags::text, scores::text, tags[1] FROM posts_copy ORDER BY id", &[])
            .await
            .expect("read the target");
        let rows: Vec<Vec<Option<String>>> = rows.iter().map(|r| (0..4).map(|i| r.get(i)).collect()).collect();
        if rows == expected {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the target holds {rows:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    database.shutdown().await;
}
