//! Materialized views restored from their checkpointed state: a restart loads every view's
//! groups and accumulators (count, count DISTINCT, sum, avg, min, max), join arrangements
//! with their match counts, top-k rows and constant rows instead of recomputing them, and the
//! views keep agreeing with their queries (evaluated from scratch) as the tables change after
//! it. A checkpoint without view state (an older version's) rebuilds them instead.

use std::path::Path;

use changeflow_engine::{Database, DurabilityOptions, RestoreReport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checkpoint_file::strip_view_state;
use crate::durability::data_dir;
use crate::support::{execute, execute_ok, normalize_rows, output_rows};

const TABLES: &str = "
CREATE TABLE items (id INT PRIMARY KEY, grp INT, qty INT NOT NULL, price DOUBLE PRECISION, amount NUMERIC(10,2), label TEXT);
CREATE TABLE groups (id INT PRIMARY KEY, name TEXT);
";

/// Each view with its query; every stateful operator appears at least once.
const VIEWS: &[(&str, &str)] = &[
    (
        "by_grp",
        "SELECT grp, count(*) AS n, count(label) AS labelled, count(DISTINCT qty) AS qtys, sum(qty) AS qty, \
         avg(qty) AS avg_qty, min(qty) AS lo, max(qty) AS hi, max(label) AS hi_label, sum(price) AS price, sum(amount) AS amount \
         FROM items GROUP BY grp",
    ),
    ("overall", "SELECT count(*) AS n, sum(qty) AS qty, min(price) AS cheapest, max(amount) AS dearest FROM items"),
    ("named", "SELECT i.id, i.qty, g.name FROM items i LEFT JOIN groups g ON i.grp = g.id AND i.qty > 10"),
    (
        "per_group",
        "SELECT g.name, count(i.id) AS n FROM groups g FULL OUTER JOIN items i ON g.id = i.grp GROUP BY g.name",
    ),
    ("top", "SELECT id, qty FROM items ORDER BY qty DESC, id LIMIT 5"),
    ("labels", "SELECT DISTINCT label FROM items"),
    ("big", "SELECT 0 AS qty UNION ALL SELECT qty FROM items WHERE qty > 45"),
    ("busy", "SELECT grp, n FROM by_grp WHERE n > 3"),
    // Never a group: sums and averages with no groups to save.
    ("none", "SELECT grp, sum(qty) AS qty, avg(amount) AS amount FROM items WHERE qty > 1000 GROUP BY grp"),
];

async fn open(dir: &Path) -> (Database, RestoreReport) {
    Database::open(changeflow_connectors::registry(), DurabilityOptions::new(dir)).await.expect("open")
}

/// Seeded random transactions on both tables: inserts, updates that move rows between
/// groups or change their values, deletes (of current minimums too), group renames.
async fn workload(database: &Database, rng: &mut StdRng, steps: usize, next_id: &mut i32) {
    let labels = ["'a'", "'b'", "'c'", "NULL"];
    for _ in 0..steps {
        let mut statements = vec!["BEGIN".to_string()];
        for _ in 0..rng.random_range(1..4) {
            let id = rng.random_range(1..=(*next_id).max(1));
            let statement = match rng.random_range(0..10) {
                0..=3 => {
                    *next_id += 1;
                    let grp = if rng.random_range(0..8) == 0 {
                        "NULL".to_string()
                    } else {
                        rng.random_range(1..6).to_string()
                    };
                    format!(
                        "INSERT INTO items VALUES ({next_id}, {grp}, {}, {}, {}.{:02}, {})",
                        rng.random_range(1..50),
                        rng.random_range(0..10_000) as f64 / 100.0,
                        rng.random_range(0..500),
                        rng.random_range(0..100),
                        labels[rng.random_range(0..labels.len())]
                    )
                }
                4 | 5 => format!(
                    "UPDATE items SET qty = {}, grp = {} WHERE id = {id}",
                    rng.random_range(1..50),
                    rng.random_range(1..6)
                ),
                6 => format!("UPDATE items SET label = {} WHERE id = {id}", labels[rng.random_range(0..labels.len())]),
                7 => format!("DELETE FROM items WHERE id = {id}"),
                // The smallest quantities: groups' current minimums go.
                8 => format!("DELETE FROM items WHERE qty < {}", rng.random_range(2..5)),
                _ => {
                    let group = rng.random_range(1..7);
                    match rng.random_range(0..3) {
                        0 => format!("DELETE FROM groups WHERE id = {group}"),
                        _ => format!(
                            "DELETE FROM groups WHERE id = {group}; INSERT INTO groups VALUES ({group}, 'g{}')",
                            rng.random_range(0..4)
                        ),
                    }
                }
            };
            statements.push(statement);
        }
        statements.push("COMMIT".to_string());
        let sql = statements.join(";\n");
        if let Err(error) = execute(database, &sql).await {
            // A statement the engine refuses (none expected) must say so.
            panic!("{sql}\nfailed: {error}");
        }
    }
}

async fn rows(database: &Database, query: &str) -> Vec<String> {
    let outputs = execute(database, query).await.unwrap_or_else(|e| panic!("{query}: {e}"));
    normalize_rows(output_rows(&outputs[0]))
}

/// Every view's contents, after checking each against its query evaluated from scratch.
async fn checked_views(database: &Database, when: &str) -> Vec<Vec<String>> {
    let mut contents = Vec::new();
    for (name, query) in VIEWS {
        let view = rows(database, &format!("SELECT * FROM {name}")).await;
        assert_eq!(view, rows(database, query).await, "view {name} {when}");
        contents.push(view);
    }
    contents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_restart_from_their_checkpointed_state_and_keep_agreeing_with_their_queries() {
    let dir = data_dir("view-state");
    let mut rng = StdRng::seed_from_u64(7);
    let mut next_id = 0;
    let (database, _) = open(&dir).await;
    execute_ok(&database, TABLES).await;
    for (name, query) in VIEWS {
        execute_ok(&database, &format!("CREATE MATERIALIZED VIEW {name} AS {query}")).await;
    }
    workload(&database, &mut rng, 300, &mut next_id).await;
    let before = checked_views(&database, "before the restart").await;
    assert!(before[0].len() >= 5 && before[4].len() == 5, "the workload filled the views: {before:?}");
    database.shutdown().await;
    drop(database);

    let (database, report) = open(&dir).await;
    assert!(report.checkpoint.is_some(), "the clean stop wrote a checkpoint");
    assert_eq!((report.views_loaded, report.views_rebuilt), (VIEWS.len(), 0), "{:?}", report.views_warning);
    assert_eq!(checked_views(&database, "after the restart").await, before, "the restart changed a view");
    // Retractions of what was there before the restart reach the loaded state.
    workload(&database, &mut rng, 300, &mut next_id).await;
    checked_views(&database, "after changes following the restart").await;
    execute_ok(&database, "DELETE FROM items WHERE id % 2 = 0; DELETE FROM groups WHERE id < 3").await;
    let after = checked_views(&database, "after mass deletes following the restart").await;
    database.shutdown().await;
    drop(database);

    // A checkpoint of an older version (no view state): the views are rebuilt, the same.
    strip_view_state(&dir);
    let (database, report) = open(&dir).await;
    assert_eq!((report.views_loaded, report.views_rebuilt), (0, VIEWS.len()));
    assert!(report.views_warning.as_deref().is_some_and(|w| w.contains("no state")), "{:?}", report.views_warning);
    assert_eq!(checked_views(&database, "after a rebuild").await, after);
    workload(&database, &mut rng, 50, &mut next_id).await;
    checked_views(&database, "after changes following a rebuild").await;
    database.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
