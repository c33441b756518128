//! The POSTGRES source against a real PostgreSQL: snapshot and streaming under concurrent
//! writes (views compared with PostgreSQL's own answers), every supported type, TOAST,
//! replica identities, TRUNCATE, columns added and dropped mid-stream, a server crash and
//! restart, an idle captured table beside a busy one, and the setup errors with advice.

use std::time::{Duration, Instant};

use changeflow_engine::Database;

use crate::support::{PostgresCluster, execute, execute_ok, normalize_rows, output_rows, postgres_rows};
use crate::workload::{SCHEMA, VIEWS, Workload};

fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// The end of the last WAL record before an insert position: right after a page header
/// (24 bytes, 40 at a segment's start) the last record ended at the page boundary.
fn wal_end(insert_lsn: u64) -> u64 {
    let offset = insert_lsn % 8192;
    if offset <= 40 { insert_lsn - offset } else { insert_lsn }
}

/// The source's row of SHOW SOURCES: name, connector, relations, state, transactions,
/// changes, progress, detail.
async fn source_row(database: &Database, source: &str) -> Vec<Option<String>> {
    let output = execute(database, "SHOW SOURCES").await.expect("show sources");
    output_rows(&output[0])
        .into_iter()
        .find(|row| row[0].as_deref() == Some(source))
        .unwrap_or_else(|| panic!("source {source} not in SHOW SOURCES"))
}

/// Waits until the source has applied everything PostgreSQL has written so far.
async fn wait_caught_up(database: &Database, client: &tokio_postgres::Client, source: &str) {
    let row = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("current lsn");
    let target = wal_end(parse_lsn(row.get::<_, &str>(0)).expect("lsn"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = source_row(database, source).await;
        let state = row[3].clone().unwrap_or_default();
        assert!(!state.starts_with("failed"), "source failed: {row:?}");
        if row[6].as_deref().and_then(parse_lsn).is_some_and(|applied| applied >= target) {
            return;
        }
        assert!(Instant::now() < deadline, "source did not catch up to {target:X}: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn view_rows(database: &Database, query: &str) -> Vec<String> {
    let output = execute(database, query).await.unwrap_or_else(|e| panic!("{query}: {e}"));
    normalize_rows(output_rows(&output[0]))
}

/// Every workload view equals PostgreSQL's answer to its query.
async fn assert_views_match(database: &Database, client: &tokio_postgres::Client, when: &str) {
    for (name, query) in VIEWS {
        let query = query.replace("FROM calendar", &format!("FROM ({}) AS calendar", VIEWS[0].1));
        let expected = postgres_rows(client, &query).await;
        let actual = view_rows(database, &format!("SELECT * FROM {name}")).await;
        assert_eq!(actual, expected, "{when}: view {name} differs from PostgreSQL's answer");
    }
}

/// Runs `count` random transactions of the workload in PostgreSQL; failing ones roll back.
async fn run_transactions(client: &tokio_postgres::Client, workload: &mut Workload, count: usize) {
    for _ in 0..count {
        let statements = workload.range(1, 4);
        let body: Vec<String> = (0..statements).map(|_| workload.statement()).collect();
        let sql = format!("BEGIN; {}; COMMIT", body.join("; "));
        if client.batch_execute(&sql).await.is_err() {
            client.batch_execute("ROLLBACK").await.expect("rollback");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_stream_match_postgresql_under_concurrent_writes() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client.batch_execute(SCHEMA).await.expect("schema");
    let mut workload = Workload::new(31);
    run_transactions(&client, &mut workload, 300).await;

    // Writes keep coming while the source is created and its snapshot copied.
    let writer_client = cluster.connect().await;
    let writer = tokio::spawn(async move {
        let mut workload = Workload::new(32);
        run_transactions(&writer_client, &mut workload, 400).await;
    });
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(
        &database,
        &format!(
            "CREATE SOURCE core FROM POSTGRES WITH (url = '{}') \
             FOR TABLES (public.experiences, public.sessions, orders)",
            cluster.url()
        ),
    )
    .await;
    for (name, query) in VIEWS {
        execute_ok(&database, &format!("CREATE MATERIALIZED VIEW {name} AS {query}")).await;
    }
    writer.await.expect("writer");
    wait_caught_up(&database, &client, "core").await;
    assert_views_match(&database, &client, "after snapshot and concurrent writes").await;

    // Bigger transactions, a multi-row update, and a TRUNCATE.
    client
        .batch_execute(
            "BEGIN; UPDATE sessions SET sold = coalesce(sold, 0) + 1 WHERE capacity > 5; \
             DELETE FROM orders WHERE status = 'pending'; COMMIT; TRUNCATE orders;",
        )
        .await
        .expect("bulk changes");
    run_transactions(&client, &mut workload, 200).await;
    wait_caught_up(&database, &client, "core").await;
    assert_views_match(&database, &client, "after bulk changes and TRUNCATE").await;

    let row = source_row(&database, "core").await;
    assert_eq!(row[3].as_deref(), Some("streaming"), "{row:?}");
    assert!(
        execute(&database, "INSERT INTO orders VALUES (1000, 1, 1, 'paid')").await.is_err(),
        "a source relation must be read-only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_through_snapshot_and_stream() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    let values = "true, 32767, 9007199254740993, 1.5, 2.718281828459045, 1234567.891, 0.1234567891234, \
         'text ''quoted''\ttab', 'varchar', 'ab', '2024-02-29', '13:45:06.789', '2024-02-29 13:45:06.123456', \
         '2024-02-29 13:45:06.5+02', '1 year 2 mons 3 days 04:05:06.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', \
         '{\"a\": 1}', '{\"b\": [1, 2]}', '\\x00ff10', 'happy', '{1,NULL,3}', '{\"x y\",z}'";
    client
        .batch_execute(&format!(
            "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE TABLE typed (id int PRIMARY KEY, b bool, i2 int2, i8 int8, f4 float4, f8 float8, n numeric(10,3),
               nu numeric, t text, vc varchar(10), c char(3), d date, tm time, ts timestamp, tz timestamptz,
               iv interval, u uuid, j json, jb jsonb, by bytea, e mood, ai int[], at text[]);
             INSERT INTO typed VALUES (1, {values});
             INSERT INTO typed (id) VALUES (3);"
        ))
        .await
        .expect("typed table");
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(&database, &format!("CREATE SOURCE pg FROM POSTGRES WITH (url = '{}') FOR ALL TABLES", cluster.url()))
        .await;
    client
        .batch_execute(&format!("INSERT INTO typed VALUES (2, {values}); INSERT INTO typed (id) VALUES (4)"))
        .await
        .expect("insert");
    wait_caught_up(&database, &client, "pg").await;

    let output = execute(&database, "SELECT * FROM typed ORDER BY id").await.expect("select");
    let rows = output_rows(&output[0]);
    assert_eq!(rows.len(), 4, "{rows:?}");
    // The snapshot (COPY) and the stream (pgoutput) decode the same values the same way.
    assert_eq!(rows[0][1..], rows[1][1..], "snapshot and stream disagree");
    assert_eq!(rows[2][1..], rows[3][1..], "snapshot and stream disagree on NULLs");
    assert!(rows[2][1..].iter().all(Option::is_none), "{:?}", rows[2]);
    let expected = [
        "true",
        "32767",
        "9007199254740993",
        "1.5",
        "2.718281828459045",
        "1234567.891",
        "0.1234567891",
        "text 'quoted'\ttab",
        "varchar",
        "ab ",
        "2024-02-29",
        "13:45:06.789",
        "2024-02-29 13:45:06.123456",
        "2024-02-29T11:45:06.500Z",
        "14 mons 3 days 4 hours 5 mins 6.500000000 secs",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{\"a\": 1}",
        "{\"b\": [1, 2]}",
        "00ff10",
        "happy",
        "[1, , 3]",
        "[x y, z]",
    ];
    for (index, expected) in expected.iter().enumerate() {
        let column = index + 1;
        assert_eq!(rows[0][column].as_deref(), Some(*expected), "column {column} of {:?}", rows[0]);
    }
    // The interval keeps its months, days and time: compare with PostgreSQL's arithmetic.
    let output = execute(&database, "SELECT ts + iv FROM typed WHERE id = 1").await.expect("interval arithmetic");
    let sum = client.query_one("SELECT (ts + iv)::text FROM typed WHERE id = 1", &[]).await.expect("pg");
    let ours = output_rows(&output[0])[0][0].clone().unwrap_or_default().replace('T', " ");
    assert_eq!(ours, sum.get::<_, &str>(0), "interval arithmetic differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_replica_identity_truncate_and_columns() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
             INSERT INTO docs SELECT i, 'doc ' || i, (SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 400) g)
               FROM generate_series(1, 5) i;
             CREATE TABLE tags (doc int, tag text);
             ALTER TABLE tags REPLICA IDENTITY FULL;
             INSERT INTO tags VALUES (1, 'a'), (1, 'a'), (2, 'b');",
        )
        .await
        .expect("tables");
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(
        &database,
        &format!("CREATE SOURCE pg FROM POSTGRES WITH (url = '{}') FOR TABLES (docs, tags)", cluster.url()),
    )
    .await;
    execute_ok(
        &database,
        "CREATE MATERIALIZED VIEW digests AS SELECT id, title, length(body) AS len, md5(body) AS digest FROM docs",
    )
    .await;
    execute_ok(&database, "CREATE MATERIALIZED VIEW tag_counts AS SELECT tag, count(*) AS n FROM tags GROUP BY tag")
        .await;
    let expected_digests = "SELECT id, title, length(body) AS len, md5(body) AS digest FROM docs";
    let expected_tags = "SELECT tag, count(*) AS n FROM tags GROUP BY tag";

    // An update that leaves the TOASTed body out; a key-only delete; a key change.
    client
        .batch_execute(
            "UPDATE docs SET title = 'renamed' WHERE id = 1; DELETE FROM docs WHERE id = 2;
             UPDATE docs SET id = 20, title = 'moved' WHERE id = 3;
             UPDATE tags SET tag = 'c' WHERE doc = 2; DELETE FROM tags WHERE ctid = (SELECT min(ctid) FROM tags WHERE tag = 'a');",
        )
        .await
        .expect("changes");
    wait_caught_up(&database, &client, "pg").await;
    assert_eq!(view_rows(&database, "SELECT * FROM digests").await, postgres_rows(&client, expected_digests).await);
    assert_eq!(view_rows(&database, "SELECT * FROM tag_counts").await, postgres_rows(&client, expected_tags).await);

    // A column added upstream is ignored; the views keep working.
    client
        .batch_execute(
            "ALTER TABLE docs ADD COLUMN extra int; UPDATE docs SET extra = 1, title = 'extra' WHERE id = 4;",
        )
        .await
        .expect("add column");
    wait_caught_up(&database, &client, "pg").await;
    assert_eq!(view_rows(&database, "SELECT * FROM digests").await, postgres_rows(&client, expected_digests).await);

    // TRUNCATE retracts every row.
    client.batch_execute("TRUNCATE docs; INSERT INTO docs VALUES (7, 'seven', 'short')").await.expect("truncate");
    wait_caught_up(&database, &client, "pg").await;
    assert_eq!(view_rows(&database, "SELECT id, len FROM digests").await, ["7.000000 | 5.000000"]);

    // A dropped column: views reading it fail with an error naming it, the others go on.
    execute_ok(&database, "CREATE MATERIALIZED VIEW lengths AS SELECT id, length(body) AS len FROM docs").await;
    client
        .batch_execute("ALTER TABLE docs DROP COLUMN title; INSERT INTO docs VALUES (8, 'eight')")
        .await
        .expect("drop column");
    wait_caught_up(&database, &client, "pg").await;
    assert_eq!(
        view_rows(&database, "SELECT * FROM lengths").await,
        postgres_rows(&client, "SELECT id, length(body) FROM docs").await
    );
    let views = execute(&database, "SHOW MATERIALIZED VIEWS").await.expect("show views");
    let digests = output_rows(&views[0]).into_iter().find(|r| r[0].as_deref() == Some("digests")).expect("digests");
    assert!(
        digests
            .iter()
            .flatten()
            .any(|cell| cell.contains("reads column \"title\" of \"docs\", which was dropped upstream")),
        "{digests:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let detail = source_row(&database, "pg").await[7].clone().unwrap_or_default();
        if detail.contains("title of public.docs were dropped upstream") {
            break;
        }
        assert!(Instant::now() < deadline, "SHOW SOURCES does not report the dropped column: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_postgres_crash_without_loss_or_duplicates() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client.batch_execute(SCHEMA).await.expect("schema");
    let mut workload = Workload::new(41);
    run_transactions(&client, &mut workload, 100).await;
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(&database, &format!("CREATE SOURCE core FROM POSTGRES WITH (url = '{}') FOR ALL TABLES", cluster.url()))
        .await;
    for (name, query) in VIEWS {
        execute_ok(&database, &format!("CREATE MATERIALIZED VIEW {name} AS {query}")).await;
    }
    // Streaming, not snapshotting (a snapshot cut short cannot resume: the source fails).
    wait_caught_up(&database, &client, "core").await;
    run_transactions(&client, &mut workload, 100).await;
    drop(client);
    cluster.stop_server("immediate");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = source_row(&database, "core").await;
        if row[3].as_deref().unwrap_or("").starts_with("retrying") {
            break;
        }
        assert!(Instant::now() < deadline, "a lost server shows as retrying: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.start_server();
    let client = cluster.connect().await;
    run_transactions(&client, &mut workload, 100).await;
    wait_caught_up(&database, &client, "core").await;
    assert_views_match(&database, &client, "after a crash and restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_captured_table_lets_the_slot_advance() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client
        .batch_execute("CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id int PRIMARY KEY, v text)")
        .await
        .expect("tables");
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(
        &database,
        &format!(
            "CREATE SOURCE pg FROM POSTGRES WITH (url = '{}', slot = 'quiet_slot') FOR TABLES (quiet)",
            cluster.url()
        ),
    )
    .await;
    client
        .batch_execute("INSERT INTO busy SELECT i, repeat('x', 100) FROM generate_series(1, 20000) i")
        .await
        .expect("busy writes");
    let written = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("lsn");
    let written = wal_end(parse_lsn(written.get::<_, &str>(0)).expect("lsn"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let slot = client
            .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'quiet_slot'", &[])
            .await
            .expect("slot");
        let confirmed = slot.get::<_, Option<&str>>(0).and_then(parse_lsn).unwrap_or(0);
        if confirmed >= written {
            break;
        }
        assert!(Instant::now() < deadline, "slot confirmed {confirmed:X}, WAL written to {written:X}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SHOW SOURCES reports positions, lag and retained WAL (refreshed every second).
    loop {
        let detail = source_row(&database, "pg").await[7].clone().unwrap_or_default();
        if detail.contains("confirmed") && detail.contains("retained WAL") {
            break;
        }
        assert!(Instant::now() < deadline, "{detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_problems_are_refused_with_advice_and_drop_cleans_up() {
    let replica = PostgresCluster::start_with("replica");
    let database = Database::new(changeflow_connectors::registry());
    replica.connect().await.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.expect("table");
    let error =
        execute(&database, &format!("CREATE SOURCE pg FROM POSTGRES WITH (url = '{}') FOR ALL TABLES", replica.url()))
            .await
            .expect_err("wal_level = replica");
    assert!(error.contains("ALTER SYSTEM SET wal_level = logical"), "{error}");
    drop(replica);

    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client
        .batch_execute(
            "CREATE TABLE keyless (a int); CREATE TABLE shapes (id int PRIMARY KEY, p point);
             CREATE TABLE fine (id int PRIMARY KEY, v text); CREATE ROLE plain LOGIN;",
        )
        .await
        .expect("setup");
    client.batch_execute("SELECT pg_create_logical_replication_slot('theirs', 'pgoutput')").await.expect("slot");
    let create = |tables: &str, extra: &str| {
        format!("CREATE SOURCE pg FROM POSTGRES WITH (url = '{}'{extra}) FOR TABLES ({tables})", cluster.url())
    };
    let error = execute(&database, &create("keyless", "")).await.expect_err("no identity");
    assert!(error.contains("ALTER TABLE \"public\".\"keyless\" REPLICA IDENTITY FULL"), "{error}");
    let error = execute(&database, &create("shapes", "")).await.expect_err("unsupported type");
    assert!(error.contains("table public.shapes, column \"p\" has type point"), "{error}");
    let error = execute(&database, &create("missing", "")).await.expect_err("no such table");
    assert!(error.contains("table public.missing does not exist"), "{error}");
    let plain = format!(
        "CREATE SOURCE pg FROM POSTGRES WITH (url = 'postgres://plain@127.0.0.1:{}/postgres') FOR TABLES (fine)",
        cluster.port
    );
    let error = execute(&database, &plain).await.expect_err("no replication privilege");
    assert!(error.contains("ALTER ROLE \"plain\" WITH REPLICATION"), "{error}");
    let error = execute(&database, &create("fine", ", slot = 'theirs'")).await.expect_err("snapshot from an old slot");
    assert!(error.contains("snapshot = 'never'"), "{error}");
    let slots = "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1";

    // A slot changeflow created goes with DROP SOURCE; one it did not create stays.
    execute_ok(&database, &create("fine", "")).await;
    assert_eq!(postgres_rows(&client, slots).await, ["changeflow_pg", "theirs"]);
    execute_ok(&database, "DROP SOURCE pg").await;
    assert_eq!(postgres_rows(&client, slots).await, ["theirs"]);
    let publications = postgres_rows(&client, "SELECT pubname::text FROM pg_publication").await;
    assert!(publications.is_empty(), "{publications:?}");
    execute_ok(&database, &create("fine", ", slot = 'theirs', snapshot = 'never'")).await;
    client.batch_execute("INSERT INTO fine VALUES (1, 'one')").await.expect("insert");
    wait_caught_up(&database, &client, "pg").await;
    assert_eq!(view_rows(&database, "SELECT * FROM fine").await, ["1.000000 | one"]);
    execute_ok(&database, "DROP SOURCE pg").await;
    assert_eq!(postgres_rows(&client, slots).await, ["theirs"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transactions_spill_to_disk_and_appear_whole() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v int, note text)").await.expect("table");
    let database = std::sync::Arc::new(Database::new(changeflow_connectors::registry()));
    execute_ok(
        &database,
        &format!(
            "CREATE SOURCE pg FROM POSTGRES WITH (url = '{}', spill_after_operations = '1000') FOR TABLES (big)",
            cluster.url()
        ),
    )
    .await;
    execute_ok(&database, "CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(v) AS s FROM big").await;
    // Watch the view while the transactions apply: it only ever shows whole ones.
    let watcher = {
        let database = std::sync::Arc::clone(&database);
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..400 {
                seen.extend(view_rows(&database, "SELECT n FROM totals").await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    client
        .batch_execute(
            "INSERT INTO big SELECT i, i % 7, 'note ' || i FROM generate_series(1, 20000) i;
             BEGIN; UPDATE big SET v = v + 1; DELETE FROM big WHERE id % 2 = 0;
             INSERT INTO big SELECT i, 1, NULL FROM generate_series(20001, 25000) i; COMMIT;",
        )
        .await
        .expect("large transactions");
    wait_caught_up(&database, &client, "pg").await;
    let expected = postgres_rows(&client, "SELECT count(*) AS n, sum(v) AS s FROM big").await;
    assert_eq!(view_rows(&database, "SELECT * FROM totals").await, expected);
    let seen = watcher.await.expect("watcher");
    let whole: std::collections::BTreeSet<String> =
        ["0.000000", "20000.000000", "15000.000000"].iter().map(|s| s.to_string()).collect();
    assert!(seen.is_subset(&whole), "the view showed part of a transaction: {seen:?}");
}
