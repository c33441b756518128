//! PostgreSQL as the oracle for SQL semantics: the same random workload runs in a real
//! PostgreSQL (started in a temp dir) and in changeflow; after each transaction every
//! materialized view must equal PostgreSQL's own answer to the view's query.

use crate::support::{PostgresCluster, execute, execute_ok, normalize_rows, output_rows, postgres_rows};
use crate::workload::{SCHEMA, VIEWS, Workload};
use changeflow_engine::Database;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_equal_postgresql() {
    let cluster = PostgresCluster::start();
    let client = cluster.connect().await;
    client.batch_execute(SCHEMA).await.expect("schema in PostgreSQL");
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(&database, SCHEMA).await;
    for (name, query) in VIEWS {
        execute_ok(&database, &format!("CREATE MATERIALIZED VIEW {name} AS {query}")).await;
    }
    let seed = 15;
    let mut workload = Workload::new(seed);
    let mut history: Vec<String> = Vec::new();
    for step in 0..250 {
        let statements = workload.range(1, 3);
        let transaction: Vec<String> = (0..statements).map(|_| workload.statement()).collect();
        execute_ok(&database, "BEGIN").await;
        for sql in &transaction {
            let ours = execute(&database, sql).await;
            let theirs = client.batch_execute(sql).await;
            match (&ours, &theirs) {
                (Ok(_), Ok(_)) | (Err(_), Err(_)) => {}
                _ => panic!("seed {seed}: {sql}\nchangeflow: {ours:?}\nPostgreSQL: {theirs:?}"),
            }
            history.push(sql.clone());
        }
        execute_ok(&database, "COMMIT").await;
        for (name, query) in VIEWS {
            // `daily` reads another view: PostgreSQL answers it through the view's query.
            let query = query.replace("FROM calendar", &format!("FROM ({}) AS calendar", VIEWS[0].1));
            let expected = postgres_rows(&client, &query).await;
            let actual = execute(&database, &format!("SELECT * FROM {name}")).await.expect("read view");
            let actual = normalize_rows(output_rows(&actual[0]));
            if actual != expected {
                let recent = history.iter().rev().take(10).rev().cloned().collect::<Vec<_>>().join(";\n");
                panic!(
                    "seed {seed}, transaction {step}: view {name} differs from PostgreSQL\nchangeflow: {actual:#?}\nPostgreSQL: {expected:#?}\nrecent:\n{recent}"
                );
            }
        }
    }
}
