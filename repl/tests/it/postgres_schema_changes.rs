//! Upstream schema changes across restarts of `changeflow serve` (kill -9, with a data
//! directory): a column added upstream is not read, before and after the first checkpoint
//! (the snapshot is then taken again); a column dropped upstream reads as NULL and fails only
//! the views that read it; a column whose type changed is reported by name; and the source
//! never looks alive while it is not.

use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use crate::durability::data_dir;
use crate::serve_server::{Server, sql_file};
use crate::support::{PostgresCluster, pg_error, postgres_rows};

fn pipeline(cluster: &PostgresCluster, name: &str) -> std::path::PathBuf {
    sql_file(
        &format!("{name}.sql"),
        &format!(
            "CREATE SOURCE src FROM POSTGRES WITH (url = '{}', slot = '{name}', publication = '{name}') FOR TABLES (t);\n\
             CREATE MATERIALIZED VIEW total AS SELECT count(*) AS n, sum(v) AS v FROM t;\n\
             CREATE MATERIALIZED VIEW ids AS SELECT count(*) AS n, max(id) AS top FROM t;\n",
            cluster.url()
        ),
    )
}

fn start(pipeline: &std::path::Path, dir: &std::path::Path, checkpoint_interval: &str) -> Server {
    let dir = dir.to_str().expect("utf-8 path");
    Server::start_with(&[pipeline], &["--data-dir", dir, "--checkpoint-interval", checkpoint_interval], &[])
}

/// The source's state in SHOW SOURCES.
async fn source_state(client: &tokio_postgres::Client) -> String {
    let messages = client.simple_query("SHOW SOURCES").await.expect("SHOW SOURCES");
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) if row.get(0) == Some("src") => Some(row.get(3).unwrap_or("").to_string()),
            _ => None,
        })
        .expect("src in SHOW SOURCES")
}

/// Waits until changeflow's answer to `query` is PostgreSQL's answer to `expected`.
async fn wait_for(
    server: &Server,
    changeflow: &tokio_postgres::Client,
    upstream: &tokio_postgres::Client,
    query: &str,
    expected: &str,
) {
    let want = postgres_rows(upstream, expected).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = source_state(changeflow).await;
        assert!(!state.starts_with("failed"), "the source failed: {state}\n{}", server.log());
        let got = match changeflow.simple_query(query).await {
            Ok(_) => postgres_rows(changeflow, query).await,
            Err(error) => vec![pg_error(&error)],
        };
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{query}` is {got:?}, PostgreSQL says {want:?} (source {state})\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_checkpoint(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = server.log().matches("checkpoint written").count();
    while server.log().matches("checkpoint written").count() < before + 2 {
        assert!(Instant::now() < deadline, "no checkpoint was written\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const TOTAL: &str = "SELECT count(*) AS n, sum(v) AS v FROM t";
const IDS: &str = "SELECT count(*) AS n, max(id) AS top FROM t";

/// A cluster whose table `t (id, v)` holds two rows, captured by a first start of the
/// pipeline `name` (with the given checkpoint interval), its views caught up.
struct Captured {
    cluster: PostgresCluster,
    upstream: tokio_postgres::Client,
    pipeline: std::path::PathBuf,
    dir: std::path::PathBuf,
    server: Server,
    changeflow: tokio_postgres::Client,
}

async fn captured(name: &str, checkpoint_interval: &str) -> Captured {
    let cluster = PostgresCluster::start();
    let upstream = cluster.connect().await;
    upstream
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 1), (2, 2)")
        .await
        .expect("table");
    let pipeline = pipeline(&cluster, name);
    let dir = data_dir(&name.replace('_', "-"));
    let server = start(&pipeline, &dir, checkpoint_interval);
    let changeflow = server.client().await;
    wait_for(&server, &changeflow, &upstream, "SELECT * FROM total", TOTAL).await;
    Captured { cluster, upstream, pipeline, dir, server, changeflow }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_upstream_is_ignored_across_kill_9_restarts() {
    let Captured { cluster: _cluster, upstream, pipeline, dir, server, changeflow } =
        captured("added_column", "1").await;

    upstream
        .batch_execute("ALTER TABLE t ADD COLUMN extra int DEFAULT 7; INSERT INTO t VALUES (3, 3, 3)")
        .await
        .expect("add a column");
    wait_for(&server, &changeflow, &upstream, "SELECT * FROM total", TOTAL).await;
    wait_for_checkpoint(&server).await;
    server.kill();

    // Restarted from the checkpoint: the slot replays the ALTER's Relation message, which
    // has a column the relation never had.
    let server = start(&pipeline, &dir, "1");
    let changeflow = server.client().await;
    upstream.batch_execute("INSERT INTO t VALUES (4, 4, 4); UPDATE t SET v = 10 WHERE id = 1").await.expect("writes");
    wait_for(&server, &changeflow, &upstream, "SELECT * FROM total", TOTAL).await;
    wait_for(&server, &changeflow, &upstream, "SELECT * FROM t ORDER BY id", "SELECT id, v FROM t ORDER BY id").await;
    assert_eq!(source_state(&changeflow).await, "streaming");
    let (status, body) = server.http_get("/health");
    assert!(status.contains("200"), "{status}\n{body}");

    // Dropped upstream: the column reads as NULL; the view reading it fails, the other goes
    // on, and so it stays across a restart.
    upstream.batch_execute("ALTER TABLE t DROP COLUMN v; INSERT INTO t VALUES (5, 5)").await.expect("drop a column");
    wait_for(&server, &changeflow, &upstream, "SELECT * FROM ids", IDS).await;
    let error = changeflow.simple_query("SELECT * FROM total").await.expect_err("a view over a dropped column");
    assert!(pg_error(&error).contains("\"v\""), "{}", pg_error(&error));
    wait_for_checkpoint(&server).await;
    server.kill();
    let server = start(&pipeline, &dir, "1");
    let changeflow = server.client().await;
    upstream.batch_execute("INSERT INTO t VALUES (6, 6)").await.expect("insert");
    wait_for(&server, &changeflow, &upstream, "SELECT * FROM ids", IDS).await;
    let rows = postgres_rows(&changeflow, "SELECT id, v FROM t WHERE id >= 5 ORDER BY id").await;
    assert_eq!(
        rows,
        vec!["5.000000 | NULL".to_string(), "6.000000 | NULL".to_string()],
        "a dropped column reads as NULL"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_again_after_a_column_was_added_reads_the_declared_columns() {
    // No checkpoint before the kill: the restart takes the snapshot again.
    let Captured { cluster: _cluster, upstream, pipeline, dir, server, changeflow } =
        captured("added_before_checkpoint", "3600").await;
    upstream
        .batch_execute("ALTER TABLE t ADD COLUMN extra int DEFAULT 7; INSERT INTO t VALUES (3, 3, 3)")
        .await
        .expect("add a column");
    wait_for(&server, &changeflow, &upstream, "SELECT * FROM total", TOTAL).await;
    assert!(!server.log().contains("checkpoint written"), "a checkpoint was taken:\n{}", server.log());
    server.kill();

    let server = start(&pipeline, &dir, "3600");
    let changeflow = server.client().await;
    upstream.batch_execute("INSERT INTO t VALUES (4, 4, 4)").await.expect("insert");
    wait_for(&server, &changeflow, &upstream, "SELECT * FROM total", TOTAL).await;
    wait_for(&server, &changeflow, &upstream, "SELECT * FROM t ORDER BY id", "SELECT id, v FROM t ORDER BY id").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_whose_type_changed_upstream_is_named_and_the_source_is_not_shown_alive() {
    let Captured { cluster: _cluster, upstream, pipeline, dir, server, .. } = captured("changed_type", "1").await;
    wait_for_checkpoint(&server).await;
    server.kill();

    upstream.batch_execute("ALTER TABLE t ALTER COLUMN v TYPE text").await.expect("change a type");
    let server = start(&pipeline, &dir, "1");
    let changeflow = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = source_state(&changeflow).await;
        if state.contains("\"v\"") && state.contains("changed type") {
            break;
        }
        assert!(Instant::now() < deadline, "the source says {state}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What was captured before stays queryable.
    assert_eq!(postgres_rows(&changeflow, "SELECT * FROM total").await, vec!["2.000000 | 3.000000".to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
}
