//! What large results cost the server: eight clients reading a 5-million-row table at once
//! add little to its resident memory, as rows are streamed in batches from one shared
//! snapshot rather than copied per query or collected whole.

use std::time::{Duration, Instant};

use crate::raw_client::{count_result_rows, send_query, started_up};
use crate::serve_server::{Server, sql_file};

const ROWS: usize = 5_000_000;
/// What eight concurrent `SELECT *` may add to the server's RSS (README states it).
const BOUND_MB: u64 = 150;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn eight_clients_reading_five_million_rows_at_once_add_little_memory() {
    let values: Vec<String> = (0..5_000).map(|i| format!("({i})")).collect();
    let load = sql_file(
        "five-million.sql",
        &format!(
            "CREATE TABLE d (i int PRIMARY KEY);\nINSERT INTO d VALUES {};\n\
             CREATE TABLE t (id bigint PRIMARY KEY, name text, amount int);\n\
             INSERT INTO t SELECT a.i * 5000 + b.i, 'customer ' || b.i, b.i % 97 FROM d a, d b WHERE a.i < 1000;\n",
            values.join(",")
        ),
    );
    let server = Server::start_with(&[&load], &[], &[]);
    // One full read first: the snapshot is decoded and the allocator has seen a query.
    let mut warm = started_up(server.port);
    send_query(&mut warm, "SELECT * FROM t");
    assert_eq!(count_result_rows(&mut warm), Ok(ROWS));
    let baseline = rss_kb(server.pid());

    let readers: Vec<_> = (0..8)
        .map(|_| {
            let port = server.port;
            std::thread::spawn(move || {
                let mut socket = started_up(port);
                send_query(&mut socket, "SELECT * FROM t");
                count_result_rows(&mut socket)
            })
        })
        .collect();
    let mut peak = baseline;
    let started = Instant::now();
    while !readers.iter().all(|r| r.is_finished()) {
        peak = peak.max(rss_kb(server.pid()));
        assert!(started.elapsed() < Duration::from_secs(600), "the readers did not finish in 10 minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    for reader in readers {
        assert_eq!(reader.join().expect("reader thread"), Ok(ROWS));
    }
    let added_mb = peak.saturating_sub(baseline) / 1024;
    assert!(
        added_mb < BOUND_MB,
        "8 concurrent SELECT * of {ROWS} rows added {added_mb} MB to the server's RSS (baseline {} MB); the bound is \
         {BOUND_MB} MB",
        baseline / 1024
    );
}
