//! A client that goes wrong loses nobody's writes: text of any characters (the statement
//! paths fuzzed with random UTF-8), a connection that disappears inside a transaction block,
//! and what every other session acknowledged is visible at once and after a restart.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::SimpleQueryMessage;

use crate::durability::{data_dir, start};
use crate::serve_server::sql_file;
use crate::support::pg_error;

const SCHEMA: &str = "CREATE TABLE t (id INT PRIMARY KEY, v TEXT);\n";

async fn ids(client: &tokio_postgres::Client) -> Vec<i32> {
    let rows = client.query("SELECT id FROM t ORDER BY id", &[]).await.expect("select ids");
    rows.iter().map(|row| row.get(0)).collect()
}

fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_text_and_a_vanished_session_lose_no_acknowledged_write() {
    let schema = sql_file("session_failures.sql", SCHEMA);
    let dir = data_dir("session-failures");
    let mut server = start(&[&schema], &dir);

    // Text is never cut inside a character: these used to kill the connection.
    let a = server.client().await;
    let answer = a.simple_query("SELECT 'é' AS e").await.expect("SELECT 'é'");
    assert_eq!(first_value(&answer).as_deref(), Some("é"));
    let answer = a.simple_query("-- Привет, мир\nSELECT 1").await.expect("a leading Cyrillic comment");
    assert_eq!(first_value(&answer).as_deref(), Some("1"));
    a.simple_query("SET x €").await.expect("SET x €");
    let answer = a.simple_query("SHOW x").await.expect("SHOW x");
    assert_eq!(first_value(&answer).as_deref(), Some("€"));
    let error = a.simple_query("SHOW ünknown").await.expect_err("an unknown variable");
    assert_eq!(error.code().map(|c| c.code()), Some("42704"), "{}", pg_error(&error));

    // Session A opens a block, writes, sends non-ASCII text inside it, and vanishes.
    a.simple_query("BEGIN").await.expect("BEGIN");
    a.simple_query("INSERT INTO t VALUES (1, 'uncommitted')").await.expect("insert in the block");
    let answer = a.simple_query("SELECT 'ü' || v FROM t WHERE id = 1").await.expect("query in the block");
    assert_eq!(first_value(&answer).as_deref(), Some("üuncommitted"));
    drop(a);

    // Session B's autocommit write is acknowledged and visible to everyone at once.
    let b = server.client().await;
    let c = server.client().await;
    let inserted = tokio::time::timeout(Duration::from_secs(10), b.execute("INSERT INTO t VALUES (2, 'b')", &[]))
        .await
        .expect("B's insert waited for a block nobody will end")
        .expect("B's insert");
    assert_eq!(inserted, 1);
    assert_eq!(ids(&c).await, vec![2], "B's acknowledged row is visible, A's uncommitted one is not");
    // Session C can open its own block.
    c.batch_execute("BEGIN; INSERT INTO t VALUES (3, 'c'); COMMIT").await.expect("C's block");
    assert_eq!(ids(&b).await, vec![2, 3]);

    // After a restart, every acknowledged row is there and nothing else.
    drop((b, c));
    server.terminate(Duration::from_secs(60));
    let server = start(&[&schema], &dir);
    let client = server.client().await;
    assert_eq!(ids(&client).await, vec![2, 3]);
    let (status, body) = server.http_get("/health");
    assert!(status.contains("200"), "{status}\n{body}");
}

/// Characters a statement of any kind may hold: SQL words and punctuation, quotes, and
/// characters of one to four bytes (combining marks, Cyrillic, CJK, emoji).
const PIECES: &[&str] = &[
    "SELECT ",
    "SET ",
    "SHOW ",
    "COPY (",
    "SUBSCRIBE ",
    "TO STDOUT",
    "INSERT INTO t VALUES (",
    ")",
    "BEGIN",
    "COMMIT",
    "TIME ZONE ",
    "SESSION ",
    "LOCAL ",
    "TO ",
    "= ",
    "'",
    "\"",
    ";",
    "--",
    "/*",
    "*/",
    " ",
    "\n",
    "\t",
    "é",
    "€",
    "ж",
    "Привет",
    "漢字",
    "😀",
    "e\u{301}",
    "\u{feff}",
    "ß",
    "1",
    "x",
    "tt",
    "$1",
    "(",
    ",",
    "\\",
];

fn random_statement(rng: &mut StdRng) -> String {
    let pieces = rng.random_range(1..12);
    let mut text = String::new();
    for _ in 0..pieces {
        if rng.random_bool(0.15) {
            // Any char at all, not only the listed ones.
            text.push(rng.random::<char>());
        } else {
            text.push_str(PIECES[rng.random_range(0..PIECES.len())]);
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_utf8_statements_never_break_a_connection() {
    let schema = sql_file("session_fuzz.sql", SCHEMA);
    let dir = data_dir("session-fuzz");
    let server = start(&[&schema], &dir);
    let fuzzed = server.client().await;
    let mut rng = StdRng::seed_from_u64(25);
    for n in 0..600 {
        let text = random_statement(&mut rng);
        let result = tokio::time::timeout(Duration::from_secs(10), fuzzed.simple_query(&text)).await;
        let result = result.unwrap_or_else(|_| panic!("statement {n} {text:?} did not answer\n{}", server.log()));
        if let Err(error) = result {
            assert!(
                error.as_db_error().is_some(),
                "statement {n} {text:?} broke the connection: {}\n{}",
                pg_error(&error),
                server.log()
            );
        }
        // Leave no block open for the next statement to land in.
        let _ = fuzzed.simple_query("ROLLBACK").await;
    }
    let other = server.client().await;
    other.execute("INSERT INTO t VALUES (100, 'after')", &[]).await.expect("a write after the fuzzing");
    assert!(ids(&fuzzed).await.contains(&100), "the fuzzed connection still works and sees the write");
    let (status, body) = server.http_get("/health");
    assert!(status.contains("200"), "{status}\n{body}");
}

/// A writer behind another session's open transaction: lock_timeout ends its wait (55P03),
/// a cancel or its client leaving stop it without writing, and a session idle in its
/// transaction past idle_in_transaction_session_timeout is closed and rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_on_an_idle_transaction_does_not_wait_forever() {
    use std::time::Instant;
    let schema = sql_file("lock-timeout.sql", SCHEMA);
    let server = crate::serve_server::Server::start_with(&[&schema], &["--lock-timeout", "0"], &[]);
    let holder = server.client().await;
    holder.batch_execute("BEGIN; INSERT INTO t VALUES (1, 'held')").await.expect("open a transaction");

    // lock_timeout, set by the session.
    let waiter = server.client().await;
    waiter.batch_execute("SET lock_timeout = '300ms'").await.expect("set lock_timeout");
    let started = Instant::now();
    let error = waiter.batch_execute("INSERT INTO t VALUES (2, 'waits')").await.expect_err("lock timeout");
    assert_eq!(error.code().map(|c| c.code()), Some("55P03"), "{}", pg_error(&error));
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());

    // A cancel request stops a writer that waits with no timeout.
    let canceled = server.client().await;
    let cancel = canceled.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let error = canceled.batch_execute("INSERT INTO t VALUES (3, 'canceled')").await.expect_err("canceled");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{}", pg_error(&error));
    canceller.await.expect("cancel task").expect("cancel request");

    // A writer whose client leaves while it waits never writes.
    let mut leaving = crate::raw_client::started_up(server.port);
    crate::raw_client::send_query(&mut leaving, "INSERT INTO t VALUES (4, 'gone')");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(leaving);
    tokio::time::sleep(Duration::from_millis(500)).await;

    holder.batch_execute("COMMIT").await.expect("commit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&waiter).await, vec![1], "only the committed row is there");

    // A session idle in its transaction is closed and its writes rolled back; the next
    // writer goes ahead.
    let idle = server.client().await;
    idle.batch_execute("SET idle_in_transaction_session_timeout = '500ms'; BEGIN; INSERT INTO t VALUES (5, 'idle')")
        .await
        .expect("idle transaction");
    let started = Instant::now();
    waiter.batch_execute("SET lock_timeout = '10s'").await.expect("longer lock_timeout");
    waiter.batch_execute("INSERT INTO t VALUES (6, 'after')").await.expect("writes once the idle session is gone");
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
    assert!(idle.batch_execute("SELECT 1").await.is_err(), "the idle session's connection is closed");
    assert_eq!(ids(&waiter).await, vec![1, 6]);
    let error = waiter.batch_execute("SET lock_timeout = 'soon'").await.expect_err("bad value");
    assert_eq!(error.code().map(|c| c.code()), Some("22023"), "{}", pg_error(&error));
}
