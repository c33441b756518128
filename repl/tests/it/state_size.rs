//! The memory a view's state takes, as `/metrics` and the benchmarks report it: it grows with
//! the rows the view keeps state for (a join's arrangements, an aggregate's groups) and falls
//! back when those rows go.

use changeflow_engine::Database;

use crate::support::execute_ok;

async fn view_bytes(database: &Database, view: &str) -> (usize, usize) {
    let stats = database.engine().await.stats();
    let view = stats.views.iter().find(|v| v.name == view).expect("the view's stats");
    (view.state_bytes, view.stored_bytes)
}

async fn insert_sessions(database: &Database, from: i32, count: i32) {
    let rows: Vec<String> =
        (from..from + count).map(|id| format!("({id}, {}, 'session {id}', {})", id % 50, id % 7)).collect();
    execute_ok(database, &format!("INSERT INTO sessions VALUES {}", rows.join(", "))).await;
}

#[tokio::test]
async fn view_state_grows_with_the_rows_it_keeps_and_shrinks_when_they_go() {
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(
        &database,
        "CREATE TABLE sessions (id INT PRIMARY KEY, experience INT, title TEXT, sold INT);
         CREATE TABLE experiences (id INT PRIMARY KEY, city TEXT);
         CREATE MATERIALIZED VIEW joined AS SELECT s.id, s.title, e.city FROM sessions s JOIN experiences e ON s.experience = e.id;
         CREATE MATERIALIZED VIEW by_id AS SELECT id, min(sold) AS lo, max(title) AS hi FROM sessions GROUP BY id;",
    )
    .await;
    insert_sessions(&database, 0, 2_000).await;
    let (small_join, _) = view_bytes(&database, "joined").await;
    let (small_groups, _) = view_bytes(&database, "by_id").await;
    insert_sessions(&database, 2_000, 18_000).await;
    let (large_join, joined_rows) = view_bytes(&database, "joined").await;
    let (large_groups, group_rows) = view_bytes(&database, "by_id").await;
    // Each session is kept once in the join's arrangement (about 30 encoded bytes) and once as
    // a group with its min/max values (about 430 bytes per group).
    assert!(large_join > 20_000 * 30 && large_join < 20_000 * 300, "join state {large_join} for 20,000 rows");
    assert!(large_groups > 20_000 * 30 && large_groups < 20_000 * 600, "group state {large_groups}");
    assert!(large_join > 4 * small_join, "join state {small_join} -> {large_join} for 10x the rows");
    assert!(large_groups > 4 * small_groups, "group state {small_groups} -> {large_groups} for 10x the rows");
    // No experience yet: the join holds no rows; the aggregate one per session.
    assert!(joined_rows < 1_000, "stored bytes of an empty view: {joined_rows}");
    assert!(group_rows > 20_000 * 10, "stored bytes of 20,000 groups' rows: {group_rows}");
    execute_ok(&database, "DELETE FROM sessions WHERE id >= 1000").await;
    let (after_join, _) = view_bytes(&database, "joined").await;
    assert!(after_join < large_join / 2, "join state {large_join} -> {after_join} after deleting 95% of the rows");
}
