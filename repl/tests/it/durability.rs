//! Restarts from a data directory, against the real binary: acknowledged writes to local
//! tables survive `kill -9` (one in flight is there whole or not at all) and views agree with
//! them; a second process on the directory is refused; restarting with the same statements
//! is a no-op while a changed definition is refused with the difference; a damaged newest
//! checkpoint falls back to the one before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::pg_cluster::free_port;
use crate::serve_server::{Server, sql_file};
use crate::support::{normalize_value, postgres_rows};

const PIPELINE: &str = "
CREATE TABLE items (id INT PRIMARY KEY, grp INT NOT NULL, qty INT NOT NULL);
CREATE MATERIALIZED VIEW totals AS SELECT grp, count(*) AS n, sum(qty) AS qty FROM items GROUP BY grp;
";

/// id -> (grp, qty)
type Items = BTreeMap<i32, (i32, i32)>;

pub fn data_dir(name: &str) -> PathBuf {
    let dir = crate::scratch::scratch_dir().join(format!("data-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn start(files: &[&Path], dir: &Path) -> Server {
    let dir = dir.to_str().expect("utf-8 path");
    Server::start_with(files, &["--data-dir", dir, "--checkpoint-interval", "1"], &[])
}

/// Runs `changeflow serve` expecting it to fail at start; returns its stderr.
fn serve_fails(files: &[&Path], dir: &Path) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_changeflow"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(files)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // It fails while opening the data directory, before it listens: nothing to wait for.
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "expected a failure at start, got success:\n{stderr}");
    stderr
}

async fn table(client: &tokio_postgres::Client) -> Items {
    postgres_rows(client, "SELECT id, grp, qty FROM items")
        .await
        .iter()
        .map(|row| {
            let v: Vec<i32> = row.split(" | ").map(|x| x.parse::<f64>().expect("number") as i32).collect();
            (v[0], (v[1], v[2]))
        })
        .collect()
}

/// The view equals its query over the items.
async fn assert_view_agrees(client: &tokio_postgres::Client, items: &Items, when: &str) {
    let mut groups: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for (grp, qty) in items.values() {
        let entry = groups.entry(*grp).or_default();
        entry.0 += 1;
        entry.1 += *qty as i64;
    }
    let mut expected: Vec<String> = groups
        .iter()
        .map(|(g, (n, q))| [g.to_string(), n.to_string(), q.to_string()].map(|v| normalize_value(Some(&v))).join(" | "))
        .collect();
    expected.sort();
    let actual = postgres_rows(client, "SELECT grp, n, qty FROM totals").await;
    assert_eq!(actual, expected, "{when}: the view disagrees with the table");
}

/// What the writer has had acknowledged, and the state if the transaction in flight commits.
#[derive(Default)]
struct Acknowledged {
    items: Items,
    in_flight: Option<Items>,
    next_id: i32,
    transactions: u64,
}

/// Writes random transactions until the server goes away.
async fn write_until_killed(client: tokio_postgres::Client, state: Arc<Mutex<Acknowledged>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let (sql, after) = {
            let mut state = state.lock().expect("state");
            let mut after = state.items.clone();
            let roll = rng.random_range(0..100);
            let sql = if roll < 60 || after.len() < 3 {
                let rows = rng.random_range(1..=3);
                let mut values = Vec::new();
                for _ in 0..rows {
                    let (id, grp, qty) = (state.next_id, rng.random_range(1..5), rng.random_range(1..100));
                    state.next_id += 1;
                    after.insert(id, (grp, qty));
                    values.push(format!("({id}, {grp}, {qty})"));
                }
                format!("BEGIN; INSERT INTO items VALUES {}; COMMIT", values.join(", "))
            } else {
                let keys: Vec<i32> = after.keys().copied().collect();
                let id = keys[rng.random_range(0..keys.len())];
                if roll < 85 {
                    let qty = rng.random_range(1..100);
                    after.get_mut(&id).expect("row").1 = qty;
                    format!("UPDATE items SET qty = {qty} WHERE id = {id}")
                } else {
                    after.remove(&id);
                    format!("DELETE FROM items WHERE id = {id}")
                }
            };
            state.in_flight = Some(after.clone());
            (sql, after)
        };
        if client.batch_execute(&sql).await.is_err() {
            return;
        }
        let mut state = state.lock().expect("state");
        state.items = after;
        state.in_flight = None;
        state.transactions += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_local_writes_survive_kill_9() {
    let dir = data_dir("local");
    let pipeline = sql_file("durability_local.sql", PIPELINE);
    let state = Arc::new(Mutex::new(Acknowledged { next_id: 1, ..Default::default() }));
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..5 {
        let server = start(&[&pipeline], &dir);
        let client = server.client().await;
        let actual = table(&client).await;
        {
            let mut state = state.lock().expect("state");
            let whole_in_flight = state.in_flight.as_ref() == Some(&actual);
            assert!(
                actual == state.items || whole_in_flight,
                "round {round}: after kill -9 the table has {} rows; acknowledged: {} rows (in flight: {:?} rows)\n{}",
                actual.len(),
                state.items.len(),
                state.in_flight.as_ref().map(|i| i.len()),
                server.log()
            );
            state.items = actual.clone();
            state.in_flight = None;
        }
        assert_view_agrees(&client, &actual, &format!("round {round}")).await;
        let writer = tokio::spawn(write_until_killed(server.client().await, Arc::clone(&state), round));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        server.kill();
        writer.await.expect("writer");
    }
    let transactions = state.lock().expect("state").transactions;
    assert!(transactions > 50, "only {transactions} transactions were acknowledged in 5 rounds");
    let server = start(&[&pipeline], &dir);
    let client = server.client().await;
    let actual = table(&client).await;
    let whole = {
        let state = state.lock().expect("state");
        actual == state.items || state.in_flight.as_ref() == Some(&actual)
    };
    assert!(whole, "after the last kill the table is neither the acknowledged state nor that plus the one in flight");
    assert_view_agrees(&client, &actual, "after the last kill").await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lock_replay_definitions_and_fall_back_from_a_damaged_checkpoint() {
    let dir = data_dir("lifecycle");
    let pipeline = sql_file("durability_lifecycle.sql", PIPELINE);
    let mut server = start(&[&pipeline], &dir);
    let client = server.client().await;
    client.batch_execute("INSERT INTO items VALUES (1, 1, 10), (2, 1, 20)").await.expect("insert");
    // A checkpoint follows within the interval, and /metrics reports it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = server.http_get("/metrics");
        let written = metrics
            .lines()
            .find_map(|l| l.strip_prefix("changeflow_checkpoints_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if written >= 1 && metrics.contains("changeflow_checkpoint_bytes ") {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 20 s:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A second process on the same directory is refused, naming the holder.
    let stderr = serve_fails(&[&pipeline], &dir);
    assert!(stderr.contains("is in use by another changeflow process"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", server_pid(&dir))), "{stderr}");

    // A clean stop checkpoints; the same command starts again (its DDL is a no-op).
    assert!(server.terminate(Duration::from_secs(30)).success(), "{}", server.log());
    let mut server = start(&[&pipeline], &dir);
    let client = server.client().await;
    let mut expected: Items = [(1, (1, 10)), (2, (1, 20))].into_iter().collect();
    assert_eq!(table(&client).await, expected);
    client.batch_execute("INSERT INTO items VALUES (3, 2, 5)").await.expect("insert");
    expected.insert(3, (2, 5));
    assert!(server.terminate(Duration::from_secs(30)).success(), "{}", server.log());

    // Written after the last checkpoint, then kill -9: only the journal has it.
    let server = start(&[&pipeline], &dir);
    let client = server.client().await;
    client
        .batch_execute("UPDATE items SET qty = 99 WHERE id = 1; INSERT INTO items VALUES (4, 2, 7)")
        .await
        .expect("w");
    expected.insert(1, (1, 99));
    expected.insert(4, (2, 7));
    server.kill();

    // Damage the newest checkpoint: the one before it and the journal after it still hold
    // everything.
    let checkpoints = dir.join("checkpoints");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&checkpoints)
        .expect("checkpoints")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cfck"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "two checkpoints are kept: {files:?}");
    let newest = files.last().expect("newest");
    let mut bytes = std::fs::read(newest).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xA5;
    std::fs::write(newest, &bytes).expect("damage");
    let mut server = start(&[&pipeline], &dir);
    let client = server.client().await;
    assert_eq!(table(&client).await, expected, "{}", server.log());
    assert_view_agrees(&client, &expected, "after falling back").await;
    assert!(server.log().contains("falling back to an older one"), "{}", server.log());
    assert!(server.terminate(Duration::from_secs(30)).success(), "{}", server.log());

    // The same name with another definition is refused, naming the difference.
    let changed = sql_file("durability_changed.sql", &PIPELINE.replace("sum(qty) AS qty", "max(qty) AS qty"));
    let stderr = serve_fails(&[&changed], &dir);
    assert!(stderr.contains("\"totals\" already exists in the data directory with a different definition"), "{stderr}");
    assert!(stderr.contains("`sum(qty)`") && stderr.contains("`max(qty)`"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pid in the data directory's lock file.
fn server_pid(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("LOCK")).expect("lock file").trim().to_string()
}

/// The counts of the datagen relations and the state of the source, once it finished.
async fn datagen_state(database: &changeflow_engine::Database) -> (Vec<String>, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sources = crate::support::execute(database, "SHOW SOURCES").await.expect("show");
        let state = crate::support::output_rows(&sources[0])[0][3].clone().unwrap_or_default();
        if state == "finished" {
            let counts = crate::support::execute(
                database,
                "SELECT (SELECT count(*) FROM g_sessions) AS s, (SELECT count(*) FROM g_orders) AS o, (SELECT sum(sold) FROM g_sessions) AS sold",
            )
            .await
            .expect("counts");
            return (crate::support::normalize_rows(crate::support::output_rows(&counts[0])), state);
        }
        assert!(Instant::now() < deadline, "datagen did not finish: {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagen_source_resumes_after_its_checkpointed_transactions() {
    use changeflow_engine::{Database, DurabilityOptions};
    let dir = data_dir("datagen");
    let open = || Database::open(changeflow_connectors::registry(), DurabilityOptions::new(&dir));
    let (database, _) = open().await.expect("open");
    crate::support::execute_ok(
        &database,
        "CREATE SOURCE g FROM DATAGEN WITH (scenario = 'sessions', rate = '2000', tps = '100', limit = '30', prefix = 'g_')",
    )
    .await;
    let before = datagen_state(&database).await;
    database.shutdown().await;
    drop(database);
    // Reopened: the relations come from the checkpoint, and the generator continues after
    // the 30 transactions it had applied (none left), instead of inserting them again.
    let (database, report) = open().await.expect("reopen");
    assert!(report.checkpoint.is_some(), "the clean stop wrote a checkpoint");
    assert_eq!(datagen_state(&database).await, before);
    database.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_with_the_same_startup_file_applies_its_writes_once() {
    let dir = data_dir("startup");
    let seed = "CREATE TABLE items (id INT PRIMARY KEY, grp INT NOT NULL, qty INT NOT NULL);\n\
                INSERT INTO items VALUES (1, 1, 10);\n\
                BEGIN; INSERT INTO items VALUES (2, 1, 20); UPDATE items SET qty = qty + 1 WHERE id = 1; COMMIT;\n";
    let pipeline = sql_file("durability_startup.sql", seed);
    let server = start(&[&pipeline], &dir);
    server.client().await.batch_execute("INSERT INTO items VALUES (3, 2, 30)").await.expect("insert");
    server.kill();
    // The same command again: the seed rows are not inserted twice (which would fail).
    let server = start(&[&pipeline], &dir);
    let expected: Items = [(1, (1, 11)), (2, (1, 20)), (3, (2, 30))].into_iter().collect();
    assert_eq!(table(&server.client().await).await, expected, "{}", server.log());
    assert!(server.log().contains("3 writes of the startup files took effect at an earlier start"), "{}", server.log());
    server.kill();
    // A write added to the file runs at the next start; the others still do not.
    let pipeline = sql_file("durability_startup.sql", &format!("{seed}INSERT INTO items VALUES (4, 2, 40);\n"));
    let server = start(&[&pipeline], &dir);
    let mut expected = expected;
    expected.insert(4, (2, 40));
    assert_eq!(table(&server.client().await).await, expected, "{}", server.log());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
