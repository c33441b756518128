//! The datagen source through the engine: it declares its relations, its transactions reach
//! the views, and the views stay equal to a recomputation while it writes.

use std::time::Duration;

use changeflow_engine::Database;

use crate::support::{execute, execute_ok, normalize_rows, output_rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagen_feeds_views_that_match_recomputation() {
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(
        &database,
        "CREATE SOURCE gen FROM DATAGEN WITH (scenario = 'sessions', rate = '2000', tps = '50', limit = '40', prefix = 'gen_', experiences = '12')",
    )
    .await;
    let calendar = "SELECT experience_id, date_trunc('day', starts_at) AS day, count(*) AS sessions, \
                    sum(capacity - sold) AS seats_left, min(starts_at) AS first_start FROM gen_sessions GROUP BY 1, 2";
    let revenue = "SELECT e.city, count(o.id) AS orders, sum(o.amount) AS revenue FROM gen_orders o \
                   JOIN gen_sessions s ON o.session_id = s.id JOIN gen_experiences e ON s.experience_id = e.id GROUP BY e.city";
    execute_ok(&database, &format!("CREATE MATERIALIZED VIEW calendar AS {calendar}")).await;
    execute_ok(&database, &format!("CREATE MATERIALIZED VIEW revenue AS {revenue}")).await;
    let mut finished = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sources = execute(&database, "SHOW SOURCES").await.expect("show sources");
        let rows = output_rows(&sources[0]);
        assert_eq!(rows[0][2].as_deref(), Some("gen_experiences, gen_sessions, gen_orders"));
        if rows[0][3].as_deref() == Some("finished") {
            assert_eq!(rows[0][4].as_deref(), Some("40"), "transactions");
            finished = true;
            break;
        }
        assert!(!rows[0][3].as_deref().unwrap_or("").starts_with("failed"), "source failed: {rows:?}");
    }
    assert!(finished, "datagen did not finish 40 transactions in 10 s");
    for (view, query) in [("calendar", calendar), ("revenue", revenue)] {
        let maintained =
            normalize_rows(output_rows(&execute(&database, &format!("SELECT * FROM {view}")).await.expect("view")[0]));
        let recomputed = normalize_rows(output_rows(&execute(&database, query).await.expect("query")[0]));
        assert!(!maintained.is_empty(), "{view} is empty");
        assert_eq!(maintained, recomputed, "{view}");
    }
    // Source relations are read-only.
    let error = execute(&database, "DELETE FROM gen_sessions").await.expect_err("read-only");
    assert!(error.contains("read-only"), "{error}");
    // A source with views on it cannot be dropped; without them it can.
    let error = execute(&database, "DROP SOURCE gen").await.expect_err("has dependents");
    assert!(error.contains("cannot drop") && error.contains("drop it first"), "{error}");
    execute_ok(&database, "DROP MATERIALIZED VIEW calendar; DROP MATERIALIZED VIEW revenue; DROP SOURCE gen").await;
}
