//! `changeflow serve` against careless and hostile clients: deeply nested and oversized
//! statements get errors (the server keeps answering), connections past
//! `--max-connections` are refused with 53300, running out of file descriptors neither
//! stops nor floods the server, trust authentication is refused on a non-loopback address,
//! and credentials stay out of errors, logs and files others can read.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::durability::data_dir;
use crate::pg_cluster::free_port;
use crate::raw_client::{read_message, send_query, started_up};
use crate::serve_server::{Server, sql_file};
use crate::support::{PostgresCluster, pg_error, postgres_rows};

fn chain(terms: usize) -> String {
    format!("SELECT {}", vec!["1"; terms].join("+"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_oversized_statements_get_errors_and_the_server_keeps_answering() {
    let server = Server::start_with(&[], &["--max-statement-bytes", "1000000"], &[]);
    let client = server.client().await;
    assert_eq!(postgres_rows(&client, &chain(900)).await, vec!["900.000000".to_string()]);
    for terms in [2_000, 100_000] {
        let error = client.simple_query(&chain(terms)).await.expect_err("too deep");
        assert_eq!(error.code().map(|c| c.code()), Some("54001"), "{terms} terms: {}", pg_error(&error));
        assert!(pg_error(&error).contains("nests more than 1000 levels"), "{}", pg_error(&error));
        let error = client.prepare(&chain(terms)).await.expect_err("too deep to prepare");
        assert_eq!(error.code().map(|c| c.code()), Some("54001"), "{}", pg_error(&error));
    }
    let deep_union = vec!["SELECT 1"; 5_000].join(" UNION ALL ");
    let error = client.simple_query(&deep_union).await.expect_err("too deep");
    assert_eq!(error.code().map(|c| c.code()), Some("54001"), "{}", pg_error(&error));

    // 5 MB, over the limit of 1 MB given: refused before it is parsed.
    let huge = format!("SELECT {}", vec!["1"; 2_500_000].join(","));
    let error = client.simple_query(&huge).await.expect_err("too long");
    assert_eq!(error.code().map(|c| c.code()), Some("54000"), "{}", pg_error(&error));
    assert!(pg_error(&error).contains("--max-statement-bytes"), "{}", pg_error(&error));
    let error = client.prepare(&huge).await.expect_err("too long to prepare");
    assert_eq!(error.code().map(|c| c.code()), Some("54000"), "{}", pg_error(&error));

    // The same connection, and the server, go on.
    assert_eq!(postgres_rows(&client, "SELECT 41 + 1").await, vec!["42.000000".to_string()]);
    assert!(server.log().lines().all(|l| !l.contains("overflow")), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_with_53300() {
    let server = Server::start_with(&[], &["--max-connections", "2"], &[]);
    let first = server.client().await;
    let second = server.client().await;
    let error = server.connect("third", None).await.expect_err("a third connection is refused");
    assert_eq!(error.code().map(|c| c.code()), Some("53300"), "{}", pg_error(&error));
    assert!(pg_error(&error).contains("too many clients"), "{}", pg_error(&error));
    assert_eq!(postgres_rows(&first, "SELECT 1").await, vec!["1.000000".to_string()]);

    // A slot frees when a client leaves.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        match server.connect("third", None).await {
            Ok(client) => break client,
            Err(error) => assert!(Instant::now() < deadline, "no slot freed: {}", pg_error(&error)),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(postgres_rows(&third, "SELECT 2").await, vec!["2.000000".to_string()]);
    let (_, metrics) = server.http_get("/metrics");
    // The first refusal, and any while the freed slot was not yet given back.
    let refused: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("changeflow_connections_refused_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused count in {metrics}"));
    assert!(refused >= 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_backs_off_and_recovers() {
    let server = Server::start(&[]);
    let limited = Command::new("prlimit")
        .args(["--pid", &server.pid().to_string(), "--nofile=64:64"])
        .status()
        .expect("run prlimit");
    assert!(limited.success(), "prlimit failed");
    // More clients than descriptors: the rest wait in the listen backlog while accept fails.
    let sockets: Vec<TcpStream> =
        (0..150).filter_map(|_| TcpStream::connect(("127.0.0.1", server.port)).ok()).collect();
    assert!(sockets.len() > 64, "only {} connections were made", sockets.len());
    std::thread::sleep(Duration::from_secs(3));
    let failures = server.log().matches("accepting connections failed").count();
    assert!((1..=2).contains(&failures), "{failures} log lines about accept failures:\n{}", server.log());
    drop(sockets);
    // Once descriptors are free again, clients are served.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(client) = server.connect("after", None).await
            && let Ok(rows) = client.simple_query("SELECT 1").await
            && !rows.is_empty()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not recover:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `changeflow serve` with `args` expecting it to refuse to start; returns its stderr.
fn serve_refuses_to_start(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_changeflow"))
        .arg("serve")
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .env_remove("CHANGEFLOW_USERS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run changeflow serve");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "{stderr}");
    stderr
}

#[test]
fn trust_authentication_is_refused_on_a_non_loopback_address() {
    // 192.0.2.1 (TEST-NET-1) is not an address of this machine: were the check missing,
    // binding would fail instead of exposing anything.
    let stderr = serve_refuses_to_start(&["--in-memory", "--listen", &format!("192.0.2.1:{}", free_port())]);
    assert!(stderr.contains("refusing to serve 192.0.2.1") && stderr.contains("--allow-trust-remote"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_out_of_errors_logs_and_the_data_directory() {
    let cluster = PostgresCluster::start();
    let upstream = cluster.connect().await;
    upstream.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.expect("table");
    // Trust authentication upstream: the password is sent nowhere, but it is in the
    // definition.
    let port = cluster.port;
    let definition = |password: &str| {
        format!(
            "CREATE SOURCE src FROM POSTGRES WITH (url = 'postgres://postgres:{password}@127.0.0.1:{port}/postgres', \
             slot = 's', publication = 'p') FOR TABLES (t);\n"
        )
    };
    let dir = data_dir("secrets");
    let first = sql_file("secrets.sql", &definition("S3cretSRC"));
    let server = crate::durability::start(&[&first], &dir);
    let client = server.client().await;
    let error = client.simple_query(&definition("S3cretTWO")).await.expect_err("a second definition");
    assert!(!pg_error(&error).contains("S3cretSRC") && !pg_error(&error).contains("S3cretTWO"), "{}", pg_error(&error));
    for show in ["SHOW SOURCES", "SHOW CREATE SOURCE src"] {
        if let Ok(rows) = client.simple_query(show).await {
            let text = format!("{rows:?}");
            assert!(!text.contains("S3cretSRC"), "{show}: {text}");
        }
    }
    let (_, metrics) = server.http_get("/metrics");
    assert!(!metrics.contains("S3cretSRC"), "{metrics}");
    drop(client);
    server.kill();

    // Restarted with a changed definition: refused, naming the difference, not the password.
    let changed = sql_file("secrets_changed.sql", &definition("S3cretTWO"));
    let stderr = serve_refuses_to_start(&[
        "--data-dir",
        dir.to_str().expect("utf-8"),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        changed.to_str().expect("utf-8"),
    ]);
    assert!(stderr.contains("different definition"), "{stderr}");
    assert!(!stderr.contains("S3cretSRC") && !stderr.contains("S3cretTWO"), "{stderr}");
    assert!(stderr.contains("postgres:***@"), "the difference is shown, masked: {stderr}");

    // What holds the definition is the owner's alone.
    let mut pending = vec![dir.clone()];
    let mut files = 0;
    while let Some(path) = pending.pop() {
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        if path.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            pending.extend(std::fs::read_dir(&path).expect("read dir").map(|e| e.expect("entry").path()));
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
            files += 1;
        }
    }
    assert!(files >= 3, "only {files} files in the data directory");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server with a table big enough that a three-way join of it runs for hours.
async fn server_with_a_long_query(args: &[&str]) -> (Server, tokio_postgres::Client) {
    let server = Server::start_with(&[], args, &[]);
    let client = server.client().await;
    let values: Vec<String> = (1..=20_000).map(|id| format!("({id})")).collect();
    client
        .batch_execute(&format!("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES {}", values.join(",")))
        .await
        .expect("load");
    (server, client)
}

const LONG_QUERY: &str = "SELECT count(*) FROM t a, t b, t c WHERE a.id + b.id + c.id < 0";

/// CPU seconds the process has used (user and system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_and_a_statement_timeout_stop_a_running_query() {
    let (server, client) = server_with_a_long_query(&[]).await;
    let cancel = client.cancel_token();
    let running = tokio::spawn(async move {
        let result = client.simple_query(LONG_QUERY).await;
        (client, result)
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!running.is_finished(), "the query ended by itself");
    let canceled_at = Instant::now();
    cancel.cancel_query(tokio_postgres::NoTls).await.expect("send a cancel request");
    let (client, result) = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the query stops after the cancel")
        .expect("query task");
    assert!(canceled_at.elapsed() < Duration::from_secs(1), "stopped {:?} after the cancel", canceled_at.elapsed());
    let error = result.expect_err("canceled");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{}", pg_error(&error));
    assert!(pg_error(&error).contains("user request"), "{}", pg_error(&error));

    // The connection goes on; a statement timeout stops the next one.
    client.batch_execute("SET statement_timeout = '700ms'").await.expect("set a timeout");
    let started = Instant::now();
    let error = client.simple_query(LONG_QUERY).await.expect_err("timed out");
    assert_eq!(error.code().map(|c| c.code()), Some("57014"), "{}", pg_error(&error));
    assert!(pg_error(&error).contains("statement timeout"), "{}", pg_error(&error));
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let error = client.batch_execute("SET statement_timeout = 'soon'").await.expect_err("a bad timeout");
    assert_eq!(error.code().map(|c| c.code()), Some("22023"), "{}", pg_error(&error));
    client.batch_execute("SET statement_timeout = 0").await.expect("no timeout");
    assert_eq!(postgres_rows(&client, "SELECT count(*) FROM t").await, vec!["20000.000000".to_string()]);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_query_frees_the_server() {
    let (server, _client) = server_with_a_long_query(&[]).await;
    let psql = crate::pg_cluster::postgres_bin().join("psql");
    let mut client = Command::new(psql)
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "tester", "-d", "changeflow", "-c", LONG_QUERY])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start psql");
    // The query is running once the server burns CPU (on a busy machine, later).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = cpu_seconds(server.pid());
        std::thread::sleep(Duration::from_secs(1));
        if cpu_seconds(server.pid()) - before > 0.3 {
            break;
        }
        assert!(Instant::now() < deadline, "the query never ran:\n{}", server.log());
    }
    client.kill().expect("kill psql");
    let _ = client.wait();
    std::thread::sleep(Duration::from_secs(1));
    let after = cpu_seconds(server.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(server.pid()) - after;
    assert!(used < 0.3, "the server used {used:.2} s of CPU in the 2 s after its client went away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sinks_write_only_inside_the_sink_directory() {
    let sink_dir = crate::scratch::scratch_dir().join("confined-sinks");
    let _ = std::fs::remove_dir_all(&sink_dir);
    let server = Server::start_with(&[], &["--sink-dir", sink_dir.to_str().expect("utf-8")], &[]);
    let client = server.client().await;
    client.batch_execute("CREATE TABLE t (id INT PRIMARY KEY)").await.expect("table");
    let outside = crate::scratch::scratch_dir().join("outside.jsonl");
    for (path, why) in [
        (outside.to_str().expect("utf-8"), "outside the sink directory"),
        ("../escape.jsonl", "'..'"),
        ("-", "standard output"),
    ] {
        let error = client
            .batch_execute(&format!("CREATE SINK s FROM t INTO FILE WITH (path = '{path}')"))
            .await
            .expect_err(path);
        assert!(pg_error(&error).contains(why), "{path}: {}", pg_error(&error));
    }
    assert!(!outside.exists());
    client.batch_execute("CREATE SINK s FROM t INTO FILE WITH (path = 'out/t.jsonl')").await.expect("inside");
    client.batch_execute("INSERT INTO t VALUES (7)").await.expect("insert");
    let written = sink_dir.join("out").join("t.jsonl");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&written).unwrap_or_default().contains("\"id\":7") {
        assert!(Instant::now() < deadline, "nothing written to {}:\n{}", written.display(), server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&sink_dir);
}

/// Starts up as `user` and sends a SCRAM client-first message by hand; returns the type of
/// the server's answer and its body.
fn scram_first_answer(port: u16, user: &str) -> (u8, Vec<u8>) {
    use std::io::Write;
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut startup = 196_608i32.to_be_bytes().to_vec();
    for part in ["user", user, "database", "changeflow"] {
        startup.extend_from_slice(part.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut message = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    message.extend_from_slice(&startup);
    socket.write_all(&message).expect("startup");
    let (kind, body) = read_message(&mut socket);
    assert_eq!((kind, &body[..4]), (b'R', &10i32.to_be_bytes()[..]), "SASL authentication is asked for");
    let client_first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO";
    let mut initial = b"SCRAM-SHA-256\0".to_vec();
    initial.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    initial.extend_from_slice(client_first);
    let mut message = vec![b'p'];
    message.extend_from_slice(&((initial.len() + 4) as i32).to_be_bytes());
    message.extend_from_slice(&initial);
    socket.write_all(&message).expect("client-first");
    read_message(&mut socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_is_challenged_like_a_known_one() {
    let users = sql_file("users_challenge.txt", "alice:wonderland\n");
    let server = Server::start_with(&[], &["--users", users.to_str().expect("path")], &[]);
    let salt = |body: &[u8]| {
        let text = String::from_utf8_lossy(&body[4..]).to_string();
        text.split(',').find(|part| part.starts_with("s=")).map(str::to_string)
    };
    let (kind, known) = scram_first_answer(server.port, "alice");
    assert_eq!((kind, &known[..4]), (b'R', &11i32.to_be_bytes()[..]), "a challenge for alice");
    let (kind, unknown) = scram_first_answer(server.port, "mallory");
    assert_eq!(kind, b'R', "an unknown user gets a challenge, not an error: {}", String::from_utf8_lossy(&unknown));
    assert_eq!(&unknown[..4], &11i32.to_be_bytes()[..]);
    let (_, again) = scram_first_answer(server.port, "mallory");
    assert!(salt(&unknown).is_some() && salt(&unknown) == salt(&again), "the same salt each time");
    assert_ne!(salt(&unknown), salt(&known));
    // And the proof fails as a wrong password does.
    let error = server.connect("mallory", Some("wonderland")).await.expect_err("unknown user");
    assert_eq!(error.code().map(|c| c.code()), Some("28P01"), "{}", pg_error(&error));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_is_streamed_and_pauses_while_the_client_does_not_read() {
    let (server, _client) = server_with_a_long_query(&[]).await;
    let mut socket = started_up(server.port);
    // 400 million rows: collected whole they would take minutes and gigabytes.
    send_query(&mut socket, "SELECT a.id, b.id FROM t a, t b");
    let started = Instant::now();
    loop {
        let (kind, body) = read_message(&mut socket);
        assert_ne!(kind, b'E', "{}", String::from_utf8_lossy(&body));
        if kind == b'D' {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(15), "the first row took {:?}", started.elapsed());
    // Not read any further: once the socket's buffers fill, the query waits.
    std::thread::sleep(Duration::from_secs(3));
    let before = cpu_seconds(server.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(server.pid()) - before;
    assert!(used < 0.3, "the server used {used:.2} s of CPU for a client that reads nothing");
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_memory_limit_fails_with_53200() {
    let (_server, client) = server_with_a_long_query(&["--query-memory-mb", "1"]).await;
    // Two million groups: far more than 1 MiB of aggregate state.
    let grouped =
        "SELECT count(*) FROM (SELECT a.id * 100 + b.id AS k, count(*) FROM t a, t b WHERE b.id <= 100 GROUP BY k) x";
    let error = client.simple_query(grouped).await.expect_err("past the memory limit");
    assert_eq!(error.code().map(|c| c.code()), Some("53200"), "{}", pg_error(&error));
    // Queries within the limit go on.
    assert_eq!(postgres_rows(&client, "SELECT count(*) FROM t").await, vec!["20000.000000".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_client_that_stops_reading_is_disconnected() {
    let server = Server::start_with(&[], &["--subscribe-buffer-mb", "1"], &[]);
    let writer = server.client().await;
    writer.batch_execute("CREATE TABLE t (id int PRIMARY KEY, pad text)").await.expect("create");
    let mut socket = started_up(server.port);
    send_query(&mut socket, "SUBSCRIBE t WITH (snapshot = false)");
    while read_message(&mut socket).0 != b'T' {}
    // From here the subscriber reads nothing while about 2 MB of changes a statement come
    // (the socket's buffers take several MB before the server's writes block).
    let metric = |name: &str| {
        let (_, body) = server.http_get("/metrics");
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")).and_then(|v| v.trim().parse::<i64>().ok()))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    let started = Instant::now();
    let mut next_id = 0;
    while metric("changeflow_connections") > 1 || metric("changeflow_subscriptions") > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the subscriber is still connected after {next_id} rows:\n{}",
            server.log()
        );
        let rows: Vec<String> = (next_id..next_id + 1_000).map(|id| format!("({id}, repeat('x', 2000))")).collect();
        next_id += 1_000;
        writer.batch_execute(&format!("INSERT INTO t VALUES {}", rows.join(", "))).await.expect("insert");
    }
    assert!(server.log().contains("stopped reading"), "no log line says why:\n{}", server.log());
    // The socket delivers what was buffered, then ends: the server closed it.
    use std::io::Read;
    socket.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match socket.read(&mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the server left the subscriber's socket open")
            }
            // Reset: closed with data still unread on its side.
            Err(_) => break,
        }
    }
    // The server and the writer go on.
    assert_eq!(postgres_rows(&writer, "SELECT count(*) FROM t").await, vec![format!("{next_id}.000000")]);
}
