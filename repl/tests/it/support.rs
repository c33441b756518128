//! Helpers shared by the integration tests: running SQL, normalizing result rows so two
//! engines' answers compare (numbers rounded, booleans spelled out), and a PostgreSQL cluster
//! started in a temp dir.

use changeflow_engine::{Database, Output};

pub async fn execute(database: &Database, sql: &str) -> Result<Vec<Output>, String> {
    let mut outputs = Vec::new();
    for statement in changeflow_sql::parse_sql(sql).map_err(|e| e.to_string())? {
        outputs.push(database.execute(&statement).await.map_err(|e| e.to_string())?);
    }
    Ok(outputs)
}

pub async fn execute_ok(database: &Database, sql: &str) {
    if let Err(error) = execute(database, sql).await {
        panic!("{sql}\nfailed: {error}");
    }
}

/// The text of every value of a changeflow result.
pub fn output_rows(output: &Output) -> Vec<Vec<Option<String>>> {
    let Output::Rows { batches, .. } = output else { panic!("not a query result: {output:?}") };
    let options = datafusion::arrow::util::display::FormatOptions::new()
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_types_info(false);
    let mut rows = Vec::new();
    for batch in batches {
        use datafusion::arrow::array::Array;
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| {
                datafusion::arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter")
            })
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| (!c.is_null(row)).then(|| f.value(row).to_string()))
                    .collect(),
            );
        }
    }
    rows
}

/// Normalizes one value: numbers to 6 decimals (so 20, 20.0 and 20.000000 agree, and float
/// sums that differ in the last bits agree), PostgreSQL's t/f to true/false.
pub fn normalize_value(value: Option<&str>) -> String {
    match value {
        None => "NULL".to_string(),
        Some("t") => "true".to_string(),
        Some("f") => "false".to_string(),
        Some(text) => match text.parse::<f64>() {
            Ok(number) if text.chars().all(|c| c.is_ascii_digit() || matches!(c, '-' | '.' | 'e' | 'E' | '+')) => {
                let rounded = format!("{:.6}", number);
                if rounded == "-0.000000" { "0.000000".to_string() } else { rounded }
            }
            _ => text.to_string(),
        },
    }
}

/// Rows as sorted normalized strings: a multiset that compares regardless of order.
pub fn normalize_rows(rows: Vec<Vec<Option<String>>>) -> Vec<String> {
    let mut out: Vec<String> =
        rows.iter().map(|r| r.iter().map(|v| normalize_value(v.as_deref())).collect::<Vec<_>>().join(" | ")).collect();
    out.sort();
    out
}

/// PostgreSQL's answer to a query, normalized and sorted like [`normalize_rows`].
pub async fn postgres_rows(client: &tokio_postgres::Client, query: &str) -> Vec<String> {
    let messages = client.simple_query(query).await.unwrap_or_else(|e| panic!("PostgreSQL: {query}: {e}"));
    let mut rows: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|i| normalize_value(row.get(i))).collect::<Vec<_>>().join(" | "))
            }
            _ => None,
        })
        .collect();
    rows.sort();
    rows
}

pub use crate::pg_cluster::PostgresCluster;

/// What a PostgreSQL client error says: the server's message (and SQLSTATE) for a database
/// error, which the error's own `Display` reduces to "db error".
pub fn pg_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}
