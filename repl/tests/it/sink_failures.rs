//! Sinks that cannot deliver, against `changeflow serve` with a data directory: a failed sink
//! stays failed across restarts and never moves past what it did not deliver (until it is
//! dropped and created again); an unreachable target is refused at CREATE SINK unless
//! `validate = 'false'`; a sink whose target is down holds up neither checkpoints nor a clean
//! stop, local writes wait for it and then fail clearly, and everything it had not delivered
//! reaches the target once it is back, across a restart; a sink of a failed view says so.

use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use crate::durability::data_dir;
use crate::serve_server::{Server, sql_file};
use crate::support::{PostgresCluster, pg_error, postgres_rows};

fn start(files: &[&std::path::Path], dir: &std::path::Path, extra: &[&str]) -> Server {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["--data-dir", dir, "--checkpoint-interval", "1"];
    args.extend_from_slice(extra);
    Server::start_with(files, &args, &[])
}

/// The sink's row of SHOW SINKS: (state, lag_epochs).
async fn sink_state(client: &tokio_postgres::Client, sink: &str) -> (String, String) {
    let messages = client.simple_query("SHOW SINKS").await.expect("SHOW SINKS");
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) if row.get(0) == Some(sink) => {
                Some((row.get(3).unwrap_or("").to_string(), row.get(5).unwrap_or("").to_string()))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("sink {sink} not in SHOW SINKS"))
}

async fn wait_for_state(server: &Server, client: &tokio_postgres::Client, sink: &str, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (state, _) = sink_state(client, sink).await;
        if state.starts_with(wanted) {
            return state;
        }
        assert!(Instant::now() < deadline, "sink {sink} is {state}, not {wanted}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn target_client(cluster: &PostgresCluster) -> tokio_postgres::Client {
    let config = format!("host=127.0.0.1 port={} user=postgres dbname=target", cluster.port);
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Waits until the target table holds exactly `expected` (sorted `id | v` rows).
async fn wait_for_target(server: &Server, cluster: &PostgresCluster, query: &str, expected: &[&str]) {
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let actual = postgres_rows(&target_client(cluster).await, query).await;
        if actual == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the target holds {actual:?}, not {expected:?}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn row(id: i32, v: i32) -> String {
    format!("{id}.000000 | {v}.000000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sink_stays_failed_across_restarts_until_created_again() {
    let cluster = PostgresCluster::start();
    cluster.connect().await.batch_execute("CREATE DATABASE target").await.expect("target database");
    target_client(&cluster)
        .await
        .batch_execute("CREATE TABLE strict (id int PRIMARY KEY, v int CHECK (v < 100))")
        .await
        .expect("strict table");
    let url = format!("postgres://postgres@127.0.0.1:{}/target", cluster.port);
    let sink = format!("CREATE SINK s FROM t INTO POSTGRES WITH (url = '{url}', table = 'strict')");
    let pipeline = sql_file("failed_sink.sql", &format!("CREATE TABLE t (id INT PRIMARY KEY, v INT);\n{sink};\n"));
    let dir = data_dir("failed-sink");
    let mut server = start(&[&pipeline], &dir, &[]);
    let client = server.client().await;
    client.batch_execute("INSERT INTO t VALUES (1, 5), (2, 500)").await.expect("insert");
    let state = wait_for_state(&server, &client, "s", "failed").await;
    assert!(state.contains("23514"), "{state}");
    client.batch_execute("INSERT INTO t VALUES (3, 7)").await.expect("insert after the failure");
    server.terminate(Duration::from_secs(30));

    let server = start(&[&pipeline], &dir, &[]);
    let client = server.client().await;
    client.batch_execute("INSERT INTO t VALUES (4, 8)").await.expect("insert after the restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (state, _) = sink_state(&client, "s").await;
    assert!(state.starts_with("failed") && state.contains("23514"), "still failed after the restart: {state}");
    let held = postgres_rows(&target_client(&cluster).await, "SELECT id, v FROM strict").await;
    assert!(held.is_empty(), "the failed sink delivered {held:?} past the epoch it could not deliver");
    let (status, body) = server.http_get("/health");
    assert!(status.contains("503") && body.contains("sink \"s\""), "{status}\n{body}");

    // The user acts: the refused row is fixed, the sink created again delivers everything.
    client.batch_execute("DROP SINK s; UPDATE t SET v = 50 WHERE id = 2").await.expect("fix");
    client.batch_execute(&sink).await.expect("create the sink again");
    wait_for_target(&server, &cluster, "SELECT id, v FROM strict", &[&row(1, 5), &row(2, 50), &row(3, 7), &row(4, 8)])
        .await;
    wait_for_state(&server, &client, "s", "running").await;
    let (status, body) = server.http_get("/health");
    assert!(status.contains("200"), "{status}\n{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_target_is_down_holds_up_nothing_and_delivers_everything_when_it_is_back() {
    let cluster = PostgresCluster::start();
    cluster.connect().await.batch_execute("CREATE DATABASE target").await.expect("target database");
    target_client(&cluster)
        .await
        .batch_execute("CREATE TABLE replica (id int PRIMARY KEY, v int)")
        .await
        .expect("replica table");
    let url = format!("postgres://postgres@127.0.0.1:{}/target", cluster.port);
    let pipeline = sql_file("down_sink.sql", "CREATE TABLE t (id INT PRIMARY KEY, v INT);\n");
    let dir = data_dir("down-sink");
    let mut server = start(&[&pipeline], &dir, &["--sink-wait", "2"]);
    let client = server.client().await;

    // An unreachable target is refused at CREATE, and nothing is created.
    let error = client
        .batch_execute(
            "CREATE SINK nowhere FROM t INTO POSTGRES WITH (url = 'postgres://postgres@127.0.0.1:1/x', table = 'x')",
        )
        .await
        .expect_err("an unreachable target");
    assert!(pg_error(&error).contains("cannot reach PostgreSQL at"), "{}", pg_error(&error));
    let error = client
        .batch_execute(&format!("CREATE SINK missing FROM t INTO POSTGRES WITH (url = '{url}', table = 'no_such')"))
        .await
        .expect_err("a missing table");
    assert!(pg_error(&error).contains("does not exist"), "{}", pg_error(&error));
    let sinks = client.simple_query("SHOW SINKS").await.expect("SHOW SINKS");
    assert!(!sinks.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))), "a refused sink was created");

    // Created while its target is down (validate = 'false'): it retries, and checkpoints go on.
    cluster.stop_server("fast");
    client
        .batch_execute(&format!(
            "CREATE SINK replica FROM t INTO POSTGRES WITH (url = '{url}', table = 'replica', validate = 'false')"
        ))
        .await
        .expect("create while the target is down");
    let checkpoints = server.log().matches("checkpoint written").count();
    for id in 1..=20 {
        client.execute("INSERT INTO t VALUES ($1, $1)", &[&id]).await.expect("insert");
    }
    wait_for_state(&server, &client, "replica", "retrying").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.log().matches("checkpoint written").count() < checkpoints + 2 {
        assert!(Instant::now() < deadline, "checkpoints stopped while a sink is down\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Local writes wait for a sink too far behind, then fail clearly, applying nothing.
    let mut refused = None;
    for id in 21..=1_200 {
        if let Err(error) = client.execute("INSERT INTO t VALUES ($1, $1)", &[&id]).await {
            refused = Some((id, error));
            break;
        }
    }
    let (id, error) = refused.expect("a write was refused while the sink is 1,000 epochs behind");
    assert_eq!(error.code().map(|c| c.code()), Some("53000"), "{}", pg_error(&error));
    assert!(pg_error(&error).contains("\"replica\""), "{}", pg_error(&error));
    let count = postgres_rows(&client, "SELECT count(*) FROM t").await;
    assert_eq!(count, vec![format!("{}.000000", id - 1)], "the refused write was not applied");

    // SIGTERM stops in bounded time and says which sink had not delivered.
    let started = Instant::now();
    server.terminate(Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(20), "stopping took {:?}", started.elapsed());
    assert!(server.log().contains("replica"), "{}", server.log());

    // Restarted, and the target back: everything written reaches it.
    let server = start(&[&pipeline], &dir, &["--sink-wait", "2"]);
    let client = server.client().await;
    cluster.start_server();
    wait_for_state(&server, &client, "replica", "running").await;
    client.execute("INSERT INTO t VALUES (0, 0)", &[]).await.expect("insert after the restart");
    let expected = postgres_rows(&client, "SELECT id, v FROM t").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let actual = postgres_rows(&target_client(&cluster).await, "SELECT id, v FROM replica").await;
        if actual == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the target has {} of {} rows\n{}",
            actual.len(),
            expected.len(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_of_a_failed_view_says_so() {
    let dir = data_dir("sink-of-failed-view");
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("data").join("sinks").join("ratios.jsonl");
    let pipeline = sql_file(
        "sink_of_failed_view.sql",
        &format!(
            "CREATE TABLE t (id INT PRIMARY KEY, v INT);\n\
             CREATE MATERIALIZED VIEW ratios AS SELECT id, 100 / v AS r FROM t;\n\
             CREATE SINK ratios_out FROM ratios INTO FILE WITH (path = '{}', format = 'json');\n",
            out.display()
        ),
    );
    let server = start(&[&pipeline], &dir.join("data"), &[]);
    let client = server.client().await;
    client.batch_execute("INSERT INTO t VALUES (1, 4)").await.expect("insert");
    wait_for_state(&server, &client, "ratios_out", "running").await;
    client.batch_execute("INSERT INTO t VALUES (2, 0)").await.expect("a row the view cannot take");
    let state = wait_for_state(&server, &client, "ratios_out", "failed").await;
    assert!(state.contains("\"ratios\""), "{state}");
    let (status, body) = server.http_get("/health");
    assert!(status.contains("503") && body.contains("ratios"), "{status}\n{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_made_again_for_another_table_leaves_that_table_alone() {
    let cluster = PostgresCluster::start();
    cluster.connect().await.batch_execute("CREATE DATABASE target").await.expect("target database");
    let target = target_client(&cluster).await;
    // The progress table as the first versions made it (keyed by sink alone), with a row.
    target
        .batch_execute(
            "CREATE TABLE first (id int PRIMARY KEY, v int); CREATE TABLE second (id int PRIMARY KEY, v int);
             INSERT INTO second VALUES (99, 99);
             CREATE TABLE changeflow_sink_progress (sink text PRIMARY KEY, epoch bigint NOT NULL, source text,
                 position text, updated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO changeflow_sink_progress (sink, epoch) VALUES ('old', 1)",
        )
        .await
        .expect("target tables");
    let url = format!("postgres://postgres@127.0.0.1:{}/target", cluster.port);
    let server = start(&[], &data_dir("sink-made-again"), &[]);
    let client = server.client().await;
    client.batch_execute("CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1)").await.expect("t");
    client
        .batch_execute(&format!("CREATE SINK s FROM t INTO POSTGRES WITH (url = '{url}', table = 'first')"))
        .await
        .expect("sink into first");
    wait_for_target(&server, &cluster, "SELECT id, v FROM first", &[&row(1, 1)]).await;
    client.batch_execute("DROP SINK s").await.expect("drop");
    client
        .batch_execute(&format!("CREATE SINK s FROM t INTO POSTGRES WITH (url = '{url}', table = 'second')"))
        .await
        .expect("sink into second");
    // The progress row of s names `first`: `second` is not emptied as if s had written it.
    wait_for_target(&server, &cluster, "SELECT id, v FROM second ORDER BY id", &[&row(1, 1), &row(99, 99)]).await;
    let keys = postgres_rows(&target, "SELECT sink, target_table FROM changeflow_sink_progress ORDER BY 1, 2").await;
    assert_eq!(keys, vec!["old | ".to_string(), "s | \"first\"".to_string(), "s | \"second\"".to_string()]);
}
