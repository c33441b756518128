//! `changeflow serve` as clients reach it: tokio-postgres (simple and extended protocols,
//! parameters, both formats), psql, SUBSCRIBE, transactions of concurrent sessions, 100
//! clients while a source writes, passwords, metrics, and a clean stop on SIGTERM.

use std::pin::pin;
use std::process::Command;
use std::time::Duration;

use chrono::NaiveDateTime;
use futures_util::StreamExt;
use rust_decimal::Decimal;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::pg_cluster::postgres_bin;
use crate::serve_server::{Server, sql_file};

const SCHEMA: &str = "
CREATE TABLE sessions (id INT PRIMARY KEY, experience_id INT NOT NULL, starts_at TIMESTAMP, capacity INT, sold INT,
                       price NUMERIC(10,2), note TEXT, active BOOLEAN);
CREATE MATERIALIZED VIEW calendar AS
  SELECT experience_id, date_trunc('day', starts_at) AS day, count(*) AS sessions, sum(capacity - sold) AS seats_left
  FROM sessions GROUP BY 1, 2;
INSERT INTO sessions VALUES
  (1, 10, '2026-12-01 18:00', 40, 0, 12.50, 'first', true),
  (2, 10, '2026-12-01 20:30:15.5', 40, 5, 9.99, NULL, false);
";

fn timestamp(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").expect("timestamp")
}

/// Text values of a simple query's rows.
fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_parameters_types_and_errors_over_tokio_postgres() {
    let schema = sql_file("types.sql", SCHEMA);
    let server = Server::start(&[&schema]);
    let client = server.client().await;

    // Extended protocol with parameters, values in binary format.
    let inserted = client
        .execute(
            "INSERT INTO sessions (id, experience_id, starts_at, capacity, sold, price, note, active) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&3i32, &11i32, &timestamp("2026-12-02 09:00:00"), &30i32, &3i32, &Decimal::new(2050, 2), &"it's", &true],
        )
        .await
        .expect("insert with parameters");
    assert_eq!(inserted, 1);
    let row = client
        .query_one("SELECT id, starts_at, price, note, active FROM sessions WHERE id = $1", &[&3i32])
        .await
        .expect("select with a parameter");
    assert_eq!(row.get::<_, i32>(0), 3);
    assert_eq!(row.get::<_, NaiveDateTime>(1), timestamp("2026-12-02 09:00:00"));
    // An untyped NULL arrives as NULL (text-typed), in both protocols.
    let nulls = client.query_one("SELECT NULL AS n, '' AS empty", &[]).await.expect("select null");
    assert_eq!((nulls.get::<_, Option<String>>(0), nulls.get::<_, Option<String>>(1)), (None, Some(String::new())));
    let simple = client.simple_query("SELECT NULL AS n").await.expect("simple select null");
    let tokio_postgres::SimpleQueryMessage::Row(row_of_null) = &simple[1] else { panic!("no row: {simple:?}") };
    assert_eq!(row_of_null.get(0), None);
    assert_eq!(row.get::<_, Decimal>(2), Decimal::new(2050, 2));
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("it's"));
    assert!(row.get::<_, bool>(4));

    // Result columns carry PostgreSQL's types.
    let statement = client.prepare("SELECT * FROM calendar").await.expect("prepare");
    let types: Vec<(&str, Type)> = statement.columns().iter().map(|c| (c.name(), c.type_().clone())).collect();
    assert_eq!(
        types,
        vec![
            ("experience_id", Type::INT4),
            ("day", Type::TIMESTAMP),
            ("sessions", Type::INT8),
            ("seats_left", Type::INT8)
        ]
    );
    let rows = client.query(&statement, &[]).await.expect("query the view");
    let mut calendar: Vec<(i32, NaiveDateTime, i64, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    calendar.sort();
    assert_eq!(
        calendar,
        vec![(10, timestamp("2026-12-01 00:00:00"), 2, 75), (11, timestamp("2026-12-02 00:00:00"), 1, 27)]
    );

    // A prepared statement runs again with other values.
    let update = client.prepare("UPDATE sessions SET sold = sold + $1 WHERE id = $2").await.expect("prepare update");
    assert_eq!(update.params(), &[Type::INT4, Type::INT4]);
    assert_eq!(client.execute(&update, &[&2i32, &1i32]).await.expect("update 1"), 1);
    assert_eq!(client.execute(&update, &[&1i32, &3i32]).await.expect("update 3"), 1);
    let seats: i64 = client
        .query_one("SELECT seats_left FROM calendar WHERE experience_id = $1", &[&10i32])
        .await
        .expect("seats")
        .get(0);
    assert_eq!(seats, 73);

    // Simple protocol: several statements in one message, values in text format as
    // PostgreSQL writes them.
    let messages = client
        .simple_query("SELECT id, starts_at, price, note, active FROM sessions WHERE id <= 2 ORDER BY id; SHOW TABLES")
        .await
        .expect("simple query");
    let rows = simple_rows(&messages);
    assert_eq!(
        rows[0],
        vec![
            Some("1".into()),
            Some("2026-12-01 18:00:00".into()),
            Some("12.50".into()),
            Some("first".into()),
            Some("t".into())
        ]
    );
    assert_eq!(
        rows[1],
        vec![Some("2".into()), Some("2026-12-01 20:30:15.5".into()), Some("9.99".into()), None, Some("f".into())]
    );
    assert_eq!(rows[2][0].as_deref(), Some("sessions"), "SHOW TABLES: {rows:?}");
    let version = simple_rows(&client.simple_query("SELECT version()").await.expect("version"));
    assert!(version[0][0].as_deref().unwrap_or("").starts_with("PostgreSQL 15.18 (changeflow "), "{version:?}");

    // Drivers' metadata queries.
    let tables: Vec<(String, String)> = client
        .query(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("information_schema.tables")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(tables, vec![("calendar".into(), "VIEW".into()), ("sessions".into(), "BASE TABLE".into())]);
    let price = client
        .query_one(
            "SELECT data_type, is_nullable, numeric_precision, numeric_scale FROM information_schema.columns \
             WHERE table_name = $1 AND column_name = $2",
            &[&"sessions", &"price"],
        )
        .await
        .expect("information_schema.columns");
    assert_eq!(
        (price.get::<_, String>(0), price.get::<_, String>(1), price.get::<_, i64>(2), price.get::<_, i64>(3)),
        ("numeric".to_string(), "YES".to_string(), 10, 2)
    );

    // Errors carry a SQLSTATE and leave the connection usable.
    let cases: [(&str, &SqlState); 5] = [
        ("SELECT * FROM missing", &SqlState::UNDEFINED_TABLE),
        ("SELEC 1", &SqlState::SYNTAX_ERROR),
        ("INSERT INTO sessions (id, experience_id) VALUES (1, 1)", &SqlState::UNIQUE_VIOLATION),
        ("INSERT INTO sessions (id) VALUES (9)", &SqlState::NOT_NULL_VIOLATION),
        ("DROP TABLE sessions", &SqlState::DEPENDENT_OBJECTS_STILL_EXIST),
    ];
    for (sql, expected) in cases {
        let error = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(error.code(), Some(expected), "{sql}: {error:?}");
        let error = client.execute(sql, &[]).await.expect_err(sql);
        assert_eq!(error.code(), Some(expected), "{sql} (extended): {error:?}");
    }
    let count: i64 = client.query_one("SELECT count(*) FROM sessions", &[]).await.expect("still usable").get(0);
    assert_eq!(count, 3, "the refused writes changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_their_transactions_apart() {
    let schema = sql_file("transactions.sql", SCHEMA);
    let server = Server::start(&[&schema]);
    let writer = server.client().await;
    let reader = server.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO sessions VALUES (5, 10, '2026-12-01 22:00', 10, 0, 1, NULL, true)")
        .await
        .expect("begin");
    // The open transaction is visible to its own session only.
    let own: i64 = writer.query_one("SELECT count(*) FROM sessions", &[]).await.expect("own view").get(0);
    assert_eq!(own, 3);
    let others: i64 = reader.query_one("SELECT count(*) FROM sessions", &[]).await.expect("other view").get(0);
    assert_eq!(others, 2, "another session must not see uncommitted rows");
    let view: i64 =
        reader.query_one("SELECT sessions FROM calendar WHERE experience_id = 10", &[]).await.expect("view").get(0);
    assert_eq!(view, 2);
    writer.batch_execute("COMMIT").await.expect("commit");
    let view: i64 = reader
        .query_one("SELECT sessions FROM calendar WHERE experience_id = 10", &[])
        .await
        .expect("view after commit")
        .get(0);
    assert_eq!(view, 3);
    // A block that only reads does not hold writers up.
    let idle = server.client().await;
    idle.batch_execute("BEGIN; SELECT count(*) FROM sessions").await.expect("reading block");
    tokio::time::timeout(Duration::from_secs(10), reader.execute("UPDATE sessions SET sold = 3 WHERE id = 2", &[]))
        .await
        .expect("a reading block must not make writers wait")
        .expect("update");
    idle.batch_execute("COMMIT").await.expect("commit the reading block");
    // A client that goes away mid-transaction leaves nothing behind.
    let leaver = server.client().await;
    leaver.batch_execute("BEGIN; DELETE FROM sessions WHERE id = 1").await.expect("delete in a block");
    drop(leaver);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Writes wait for the block to end; this one succeeds once the rollback happened.
        match tokio::time::timeout(
            Duration::from_secs(10),
            reader.execute("UPDATE sessions SET sold = 1 WHERE id = 1", &[]),
        )
        .await
        {
            Ok(Ok(updated)) => {
                assert_eq!(updated, 1, "the leaver's delete was rolled back");
                break;
            }
            other => assert!(std::time::Instant::now() < deadline, "write after a dropped session: {other:?}"),
        }
    }
}

/// Waits until the server reports `n` open subscriptions (a client's SUBSCRIBE registered).
async fn wait_for_subscriptions(server: &Server, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = server.http_get("/metrics");
        if metrics.contains(&format!("changeflow_subscriptions {n}\n")) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no {n} subscriptions within 20 s: {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_a_snapshot_then_changes_until_canceled() {
    let schema = sql_file("subscribe.sql", SCHEMA);
    let server = Server::start(&[&schema]);
    let subscriber = server.client().await;
    let writer = server.client().await;

    // Extended protocol (a driver's query): snapshot, then each change as it commits.
    let stream = subscriber.query_raw("SUBSCRIBE TO calendar", std::iter::empty::<i32>()).await.expect("subscribe");
    let mut stream = pin!(stream);
    let next = |row: tokio_postgres::Row| -> (i64, i64, i32, i64, i64) {
        (row.get("weight"), row.get("epoch"), row.get("experience_id"), row.get("sessions"), row.get("seats_left"))
    };
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("snapshot in time");
    let (weight, start_epoch, experience, sessions, seats) = next(first.expect("a row").expect("row"));
    assert_eq!((weight, experience, sessions, seats), (1, 10, 2, 75));
    writer.execute("UPDATE sessions SET sold = 10 WHERE id = 1", &[]).await.expect("update");
    let mut changes = Vec::new();
    for _ in 0..2 {
        let row = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("change in time");
        changes.push(next(row.expect("a row").expect("row")));
    }
    changes.sort();
    assert!(changes.iter().all(|c| c.1 > start_epoch && c.1 == changes[0].1), "one later epoch: {changes:?}");
    assert_eq!(changes.iter().map(|c| (c.0, c.2, c.3, c.4)).collect::<Vec<_>>(), vec![(-1, 10, 2, 75), (1, 10, 2, 65)]);
    subscriber.cancel_token().cancel_query(NoTls).await.expect("cancel");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("ends after cancel");
    let error = end.expect("an error").expect_err("canceled");
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED), "{error:?}");
    let rows = subscriber.query("SELECT count(*) FROM calendar", &[]).await.expect("usable after cancel");
    assert_eq!(rows[0].get::<_, i64>(0), 1);

    // Simple protocol (psql's), without the snapshot.
    let stream =
        subscriber.simple_query_raw("SUBSCRIBE calendar WITH (snapshot = false)").await.expect("simple subscribe");
    let mut stream = pin!(stream);
    wait_for_subscriptions(&server, 1).await;
    writer.execute("DELETE FROM sessions WHERE id = 2", &[]).await.expect("delete");
    let mut rows = Vec::new();
    while rows.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("in time");
        if let SimpleQueryMessage::Row(row) = message.expect("a message").expect("message") {
            rows.push((row.get("weight").map(str::to_string), row.get("sessions").map(str::to_string)));
        }
    }
    rows.sort();
    assert_eq!(rows, vec![(Some("-1".into()), Some("2".into())), (Some("1".into()), Some("1".into()))]);

    // Subscribing to something that is not there, or not maintained, is refused.
    let error = writer.simple_query("SUBSCRIBE TO nothing").await.expect_err("missing");
    assert_eq!(error.code(), Some(&SqlState::UNDEFINED_TABLE), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_statements_and_reports_errors() {
    let schema = sql_file("psql.sql", SCHEMA);
    let server = Server::start(&[&schema]);
    let psql = postgres_bin().join("psql");
    let output = Command::new(&psql)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &server.url("psql_user")])
        .args(["-c", "INSERT INTO sessions VALUES (7, 12, '2026-12-03 10:00', 20, 1, 5, 'x', true)"])
        .args(["-c", "SELECT experience_id, sessions, seats_left FROM calendar ORDER BY experience_id"])
        .output()
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "psql failed: {}\n{}", String::from_utf8_lossy(&output.stderr), server.log());
    assert!(stdout.contains("INSERT 0 1"), "{stdout}");
    assert!(stdout.contains("            10 |        2 |         75"), "{stdout}");
    assert!(stdout.contains("            12 |        1 |         19"), "{stdout}");
    assert!(stdout.contains("(2 rows)"), "{stdout}");

    // psql's describe commands read pg_catalog.
    let output = Command::new(&psql)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &server.url("psql_user")])
        .args(["-c", "\\dt", "-c", "\\dm", "-c", "\\d sessions", "-c", "\\l", "-c", "\\df", "-c", "\\dn+"])
        .args(["-c", "\\d+ sessions"])
        .output()
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "psql \\d failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(" public | sessions | table | changeflow"), "{stdout}");
    assert!(stdout.contains(" public | calendar | materialized view | changeflow"), "{stdout}");
    assert!(stdout.contains("Table \"public.sessions\""), "{stdout}");
    assert!(stdout.contains(" id            | integer                     |           | not null |"), "{stdout}");
    assert!(stdout.contains(" price         | numeric(10,2)               |"), "{stdout}");
    assert!(stdout.contains("List of databases") && stdout.contains(" changeflow | changeflow | UTF8 "), "{stdout}");
    assert!(stdout.contains("List of functions"), "{stdout}");
    assert!(stdout.contains("List of schemas") && stdout.contains(" public | changeflow "), "{stdout}");
    assert!(
        stdout.contains(" id            | integer                     |           | not null |         | plain"),
        "{stdout}"
    );

    // The server reports a version psql accepts without its "server major version" warning
    // (psql warns about servers newer than itself); current_user is who connected; a DROP
    // ... CASCADE names what it drops in NOTICEs.
    let output = Command::new(&psql)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-d", &server.url("psql_user")])
        .args(["-c", "\\echo :SERVER_VERSION_NUM", "-c", "SELECT current_user || '/' || session_user"])
        .args(["-c", "CREATE MATERIALIZED VIEW busy AS SELECT id FROM sessions WHERE sold > 0"])
        .args(["-c", "CREATE MATERIALIZED VIEW busy_count AS SELECT count(*) AS n FROM busy"])
        .args(["-c", "DROP MATERIALIZED VIEW busy CASCADE"])
        .args(["-c", "CREATE TABLE tagged (id INT PRIMARY KEY, tags TEXT[])"])
        .args(["-c", "INSERT INTO tagged VALUES (1, ARRAY['a', 'b c']), (2, '{x,NULL}')"])
        .args(["-c", "\\d tagged", "-c", "SELECT id, tags FROM tagged ORDER BY id"])
        .output()
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed: {stderr}");
    let psql_version = Command::new(&psql).arg("--version").output().expect("psql --version");
    let psql_major: u32 = String::from_utf8_lossy(&psql_version.stdout)
        .split_whitespace()
        .find_map(|word| word.split('.').next()?.parse().ok())
        .expect("psql's major version");
    let server_number: u32 = stdout.lines().next().and_then(|l| l.trim().parse().ok()).expect("SERVER_VERSION_NUM");
    assert!(
        server_number / 10_000 <= psql_major && server_number >= 90_200,
        "server {server_number}, psql {psql_major}"
    );
    assert!(stdout.contains("psql_user/psql_user"), "{stdout}");
    assert!(stderr.contains("NOTICE:  drop cascades to materialized view busy_count"), "{stderr}");
    // Arrays: psql's \d names the type, values print as PostgreSQL prints them.
    assert!(stdout.contains("tags|text[]|"), "{stdout}");
    assert!(stdout.contains("1|{a,\"b c\"}\n2|{x,NULL}"), "{stdout}");

    let output = Command::new(&psql)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-d", &server.url("psql_user")])
        .args(["-c", "SELECT nope FROM sessions"])
        .output()
        .expect("run psql");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("ERROR:  42703"), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");

    // SUBSCRIBE in psql: as a COPY, whose lines psql prints as they arrive; Ctrl-C ends it.
    let subscriber = Command::new(&psql)
        .args([
            "-X",
            "-d",
            &server.url("psql_user"),
            "-c",
            "COPY (SUBSCRIBE TO calendar WITH (snapshot = false)) TO STDOUT",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start psql");
    let client = server.client().await;
    wait_for_subscriptions(&server, 1).await;
    client.execute("UPDATE sessions SET sold = 11 WHERE id = 7", &[]).await.expect("update");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let interrupted = Command::new("kill").args(["-INT", &subscriber.id().to_string()]).status().expect("kill");
    assert!(interrupted.success());
    let output = subscriber.wait_with_output().expect("psql output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').skip(1).collect()).collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![vec!["-1", "12", "2026-12-03 00:00:00", "1", "19"], vec!["1", "12", "2026-12-03 00:00:00", "1", "9"]],
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("canceling statement"), "{output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_read_consistent_epochs_while_a_source_writes() {
    let pipeline = sql_file(
        "concurrent.sql",
        "CREATE SOURCE gen FROM DATAGEN WITH (scenario = 'sessions', rate = '5000', tps = '100', prefix = 'gen_', experiences = '20');
         CREATE MATERIALIZED VIEW per_experience AS SELECT experience_id, count(*) AS sessions FROM gen_sessions GROUP BY experience_id;",
    );
    let server = Server::start(&[&pipeline]);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut last = 0i64;
            for _ in 0..10 {
                // The view and its input are read at the same epoch: they always agree.
                let row = client
                    .query_one(
                        "SELECT (SELECT coalesce(sum(sessions), 0) FROM per_experience) AS maintained, \
                                (SELECT count(*) FROM gen_sessions) AS counted",
                        &[],
                    )
                    .await
                    .expect("query");
                let (maintained, counted): (i64, i64) = (row.get(0), row.get(1));
                assert_eq!(maintained, counted, "a query saw two epochs");
                assert!(counted >= last, "time went backwards: {counted} after {last}");
                last = counted;
            }
            last
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.expect("client task"));
    }
    assert!(seen.iter().any(|&n| n > 0), "the source wrote nothing while clients read");
    let (status, body) = server.http_get("/metrics");
    assert!(status.contains("200"), "{status}");
    let accepted: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("changeflow_connections_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(accepted >= 100, "{body}");
    assert!(body.contains("changeflow_view_rows{view=\"per_experience\"}"), "{body}");
    assert!(
        body.contains("changeflow_source_state{source=\"gen\",connector=\"datagen\",state=\"running\"} 1"),
        "{body}"
    );
    assert!(body.contains("changeflow_query_duration_seconds_count"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_checked_with_scram() {
    let users = sql_file("users.txt", "# user:password\nalice:wonderland\n");
    let server = Server::start_with(&[], &["--users", users.to_str().expect("path")], &[]);
    let error = server.connect("alice", Some("guess")).await.expect_err("wrong password");
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error:?}");
    let error = server.connect("mallory", Some("wonderland")).await.expect_err("unknown user");
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error:?}");
    let client = server.connect("alice", Some("wonderland")).await.expect("right password");
    let rows = client.simple_query("SELECT 1 AS one").await.expect("query");
    assert_eq!(simple_rows(&rows), vec![vec![Some("1".to_string())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_a_clean_stop_on_sigterm() {
    let schema = sql_file("stop.sql", SCHEMA);
    let mut server = Server::start(&[&schema]);
    let (status, body) = server.http_get("/health");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body.trim(), "ok");
    let client = server.client().await;
    client.execute("UPDATE sessions SET sold = 2 WHERE id = 1", &[]).await.expect("update");
    let (_, metrics) = server.http_get("/metrics");
    // Two epochs changed the view's input: the file's INSERT and this UPDATE.
    assert!(metrics.contains("changeflow_view_epochs_total{view=\"calendar\"} 2"), "{metrics}");
    assert!(metrics.contains("changeflow_view_rows{view=\"calendar\"} 1"), "{metrics}");
    // The view's state and rows take some memory, and say how much.
    for series in ["changeflow_view_state_bytes", "changeflow_view_stored_bytes"] {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{series}{{view=\"calendar\"}}")));
        let bytes: u64 = line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0);
        assert!(bytes > 0, "{series} missing or zero:\n{metrics}");
    }
    // So do the tables the view reads.
    let table_rows = metrics.lines().find(|l| l.starts_with("changeflow_table_rows{table=\"sessions\"}"));
    assert!(table_rows.is_some_and(|l| l.ends_with(" 2")), "{metrics}");
    let line = metrics.lines().find(|l| l.starts_with("changeflow_table_stored_bytes{table=\"sessions\"}"));
    let bytes: u64 = line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0);
    assert!(bytes > 0, "changeflow_table_stored_bytes missing or zero:\n{metrics}");
    let (status, _) = server.http_get("/nothing");
    assert!(status.contains("404"), "{status}");
    let status = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    assert!(server.log().contains("SIGTERM, shutting down"), "{}", server.log());
    assert!(client.simple_query("SELECT 1").await.is_err(), "the server is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_given_a_certificate_and_json_logs() {
    let dir = crate::scratch::scratch_dir().join("tls");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed to make a test certificate (apt-get install openssl)");
    assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    let server = Server::start_with(
        &[],
        &["--tls-cert", cert.to_str().expect("path"), "--tls-key", key.to_str().expect("path"), "--log-format", "json"],
        &[("CHANGEFLOW_LOG", "info")],
    );
    let psql = postgres_bin().join("psql");
    let url = format!("{} sslmode=require", server.url("tls_user"));
    let output = Command::new(&psql).args(["-X", "-At", "-d", &url, "-c", "SELECT 40 + 2"]).output().expect("psql");
    assert!(output.status.success(), "TLS connection failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "42");
    let log = server.log();
    let serving = log.lines().find(|l| l.contains("serving")).unwrap_or_else(|| panic!("no serving line: {log}"));
    let parsed: serde_json::Value =
        serde_json::from_str(serving).unwrap_or_else(|e| panic!("not JSON ({e}): {serving}"));
    assert_eq!(parsed["fields"]["tls"], serde_json::Value::Bool(true), "{serving}");

    // With --tls-required a plain connection is refused, and TLS ones are served.
    let strict = Server::start_with(
        &[],
        &["--tls-cert", cert.to_str().expect("path"), "--tls-key", key.to_str().expect("path"), "--tls-required"],
        &[],
    );
    let plain_url = format!("{} sslmode=disable", strict.url("tls_user"));
    let output = Command::new(&psql).args(["-X", "-At", "-d", &plain_url, "-c", "SELECT 1"]).output().expect("psql");
    assert!(!output.status.success(), "a plain connection must be refused");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("requires TLS"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tls_url = format!("{} sslmode=require", strict.url("tls_user"));
    let output = Command::new(&psql).args(["-X", "-At", "-d", &tls_url, "-c", "SELECT 7"]).output().expect("psql");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "7", "{}", String::from_utf8_lossy(&output.stderr));

    // Without a certificate the server refuses TLS, and sslmode=require fails.
    let plain = Server::start(&[]);
    let url = format!("{} sslmode=require", plain.url("tls_user"));
    let output = Command::new(&psql).args(["-X", "-At", "-d", &url, "-c", "SELECT 1"]).output().expect("psql");
    assert!(!output.status.success(), "sslmode=require must fail without TLS");
    assert!(String::from_utf8_lossy(&output.stderr).contains("SSL"), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Everything a COPY ... TO STDOUT sends, as text.
async fn copy_text(client: &tokio_postgres::Client, statement: &str) -> String {
    let stream = client.copy_out(statement).await.unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    let chunks: Vec<bytes::Bytes> = pin!(stream).map(|chunk| chunk.expect("copy data")).collect::<Vec<_>>().await;
    String::from_utf8(chunks.concat()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_exports_tables_and_queries_in_text_csv_and_binary() {
    let schema = sql_file(
        "copy.sql",
        "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT, tags TEXT[], at TIMESTAMPTZ);
         INSERT INTO notes VALUES (1, 'plain', ARRAY['a', 'b c'], '2026-12-01 10:00+00'), (2, NULL, NULL, NULL),
           (3, E'tab\\there, \"quoted\"', '{}', '2026-12-01 10:00:00.5+00');",
    );
    let server = Server::start(&[&schema]);
    let client = server.client().await;

    // Text: tab-separated, \N for NULL, backslash escapes; values as PostgreSQL writes them.
    assert_eq!(
        copy_text(&client, "COPY notes TO STDOUT").await,
        "1\tplain\t{a,\"b c\"}\t2026-12-01 10:00:00+00\n2\t\\N\t\\N\t\\N\n\
         3\ttab\\there, \"quoted\"\t{}\t2026-12-01 10:00:00.5+00\n"
    );
    // CSV with a header, of a query, and of chosen columns with options.
    assert_eq!(
        copy_text(
            &client,
            "COPY (SELECT id, body FROM notes WHERE id <> 1 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"
        )
        .await,
        "id,body\n2,\n3,\"tab\there, \"\"quoted\"\"\"\n"
    );
    assert_eq!(
        copy_text(&client, "COPY notes (id, body) TO STDOUT (FORMAT csv, DELIMITER ';', NULL 'null')").await,
        "1;plain\n2;null\n3;\"tab\there, \"\"quoted\"\"\"\n"
    );
    // The header alone when there are no rows.
    assert_eq!(copy_text(&client, "COPY (SELECT id FROM notes WHERE id > 9) TO STDOUT CSV HEADER").await, "id\n");
    // Binary: PostgreSQL's PGCOPY framing, read back by PostgreSQL's own binary reader.
    let binary = client
        .copy_out("COPY (SELECT id, body FROM notes ORDER BY id) TO STDOUT (FORMAT binary)")
        .await
        .expect("binary");
    let reader = tokio_postgres::binary_copy::BinaryCopyOutStream::new(binary, &[Type::INT4, Type::TEXT]);
    let rows: Vec<(i32, Option<String>)> = pin!(reader)
        .map(|row| {
            let row = row.expect("binary row");
            (row.get(0), row.get(1))
        })
        .collect()
        .await;
    assert_eq!(rows, vec![(1, Some("plain".into())), (2, None), (3, Some("tab\there, \"quoted\"".into()))]);

    // psql's \copy counts rows, header aside.
    let target = std::env::temp_dir().join(format!("changeflow-copy-{}.csv", std::process::id()));
    let output = Command::new(postgres_bin().join("psql"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &server.url("psql_user")])
        .args(["-c", &format!("\\copy (SELECT id FROM notes ORDER BY id) TO '{}' CSV HEADER", target.display())])
        .output()
        .expect("run psql");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "COPY 3");
    assert_eq!(std::fs::read_to_string(&target).expect("the exported file"), "id\n1\n2\n3\n");
    let _ = std::fs::remove_file(&target);

    // What COPY does not do is refused by name; a failing query is an error, not a COPY.
    for (statement, code, words) in [
        ("COPY notes FROM STDIN", "0A000", "COPY FROM is not supported"),
        ("COPY notes TO '/tmp/notes'", "0A000", "to a file or a program is not supported"),
        ("COPY notes TO STDOUT (FORMAT xml)", "22023", "COPY format \"xml\" not recognized"),
        ("COPY notes TO STDOUT (HEADER)", "0A000", "HEADER is available only in CSV mode"),
        ("COPY nothing TO STDOUT", "42P01", "nothing"),
    ] {
        let error = client.copy_out(statement).await.err().unwrap_or_else(|| panic!("{statement} ran"));
        let db = error.as_db_error().unwrap_or_else(|| panic!("{statement}: {error:?}"));
        assert_eq!(db.code().code(), code, "{statement}: {db:?}");
        assert!(db.message().contains(words), "{statement}: {db:?}");
    }
    // psql sends COPY (SUBSCRIBE ...) as a simple query: what does not run says what does.
    for (statement, words) in [
        ("COPY (SUBSCRIBE TO notes) TO STDOUT WITH (FORMAT csv)", "a subscription runs as COPY (SUBSCRIBE TO name"),
        ("COPY (SUBSCRIBE TO notes WITH (colour = 'red')) TO STDOUT", "unknown SUBSCRIBE option 'colour'"),
    ] {
        let error = client.simple_query(statement).await.err().unwrap_or_else(|| panic!("{statement} ran"));
        let db = error.as_db_error().unwrap_or_else(|| panic!("{statement}: {error:?}"));
        assert!(db.message().contains(words), "{statement}: {db:?}");
    }
    assert_eq!(copy_text(&client, "COPY (SELECT 1 AS still_serving) TO STDOUT").await, "1\n");
}
