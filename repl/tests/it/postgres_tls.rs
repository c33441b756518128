//! TLS and credentials of the PostgreSQL source and sink, against a PostgreSQL that accepts
//! TCP connections only over TLS and with a password: every `sslmode` with the certificate
//! checks it promises, passwords from secrets, files and the environment, and none of them
//! shown in SHOW, errors or the data directory.

use std::time::{Duration, Instant};

use changeflow_engine::Database;

use crate::pg_cluster::{PostgresCluster, TestCertificates};
use crate::serve_server::{Server, sql_file};
use crate::support::{execute, execute_ok, output_rows, pg_error};

const PASSWORD: &str = "S3cret-tls-26";

/// A cluster that requires TLS and a password on TCP, with a table `t` of two rows.
async fn secured_cluster(name: &str) -> (PostgresCluster, TestCertificates, tokio_postgres::Client) {
    let cluster = PostgresCluster::start();
    let certificates = TestCertificates::make(&crate::scratch::scratch_dir().join(format!("certs-{name}")));
    cluster.require_tls_and_password(&certificates, PASSWORD);
    let admin = cluster.connect_local().await;
    admin
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        .await
        .expect("create t");
    (cluster, certificates, admin)
}

async fn rows(database: &Database, sql: &str) -> Vec<Vec<Option<String>>> {
    let output = execute(database, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    output_rows(&output[0])
}

async fn wait_for_rows(database: &Database, sql: &str, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = rows(database, sql).await.len();
        if found == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {found} rows, expected {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_and_a_sink_reach_postgresql_over_verified_tls_with_a_secret_password() {
    let (cluster, certificates, admin) = secured_cluster("verified").await;
    let database = Database::new(changeflow_connectors::registry());
    let port = cluster.port;
    let ca = certificates.ca.display().to_string();
    execute_ok(&database, &format!("CREATE SECRET pg_pass AS '{PASSWORD}'")).await;
    execute_ok(
        &database,
        &format!(
            "CREATE SOURCE core FROM POSTGRES WITH (url = 'postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}', \
             password = SECRET pg_pass) FOR TABLES (public.t)"
        ),
    )
    .await;
    wait_for_rows(&database, "SELECT * FROM t", 2).await;
    admin.batch_execute("INSERT INTO t VALUES (3, 'three')").await.expect("insert");
    wait_for_rows(&database, "SELECT * FROM t", 3).await;

    // The snapshot, catalog and replication connections all used TLS (plain ones are
    // rejected by the server, so streaming proves it too).
    let walsenders = admin
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.backend_type = 'walsender' AND a.application_name = 'changeflow'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    assert!(!walsenders.is_empty() && walsenders.iter().all(|r| r.get::<_, bool>(0)), "replication not over TLS");

    // A sink with the CA given as options, and the same secret.
    execute_ok(
        &database,
        &format!(
            "CREATE SINK copy FROM t INTO POSTGRES WITH (url = 'host=localhost port={port} user=postgres dbname=postgres', \
             sslmode = 'verify-ca', sslrootcert = '{ca}', password = SECRET pg_pass, table = 't_copy', create_table = 'true')"
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let copied = admin.query("SELECT id FROM t_copy", &[]).await.map(|r| r.len()).unwrap_or(0);
        if copied == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the sink delivered {copied} of 3 rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Names only, values nowhere.
    assert_eq!(rows(&database, "SHOW SECRETS").await, vec![vec![Some("pg_pass".to_string())]]);
    let definition = format!("{:?}", rows(&database, "SHOW CREATE SOURCE core").await);
    assert!(definition.contains("password = SECRET pg_pass"), "{definition}");
    let definition = format!("{:?}", rows(&database, "SHOW CREATE SOURCE t").await);
    assert!(definition.contains("CREATE SOURCE core FROM POSTGRES"), "a source relation's definition: {definition}");
    for show in ["SHOW SOURCES", "SHOW SINKS", "SHOW SECRETS", "SHOW CREATE SINK copy", "SHOW CREATE SOURCE core"] {
        let text = format!("{:?}", rows(&database, show).await);
        assert!(!text.contains(PASSWORD), "{show} shows the password: {text}");
    }
    let error = execute(&database, "DROP SECRET pg_pass").await.expect_err("in use");
    assert!(error.contains("source \"core\" depends on it"), "{error}");
    let error = execute(&database, "CREATE SECRET pg_pass AS 'other'").await.expect_err("exists");
    assert!(error.contains("already exists") && !error.contains("other"), "{error}");
    execute_ok(&database, "DROP SINK copy; DROP SOURCE core; DROP SECRET pg_pass").await;
    assert!(rows(&database, "SHOW SECRETS").await.is_empty());
    database.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_checks_what_it_promises() {
    let (cluster, certificates, _admin) = secured_cluster("modes").await;
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(&database, &format!("CREATE SECRET pg_pass AS '{PASSWORD}'")).await;
    let port = cluster.port;
    let ca = certificates.ca.display().to_string();
    let other_ca = certificates.other_ca.display().to_string();
    // CREATE SINK reaches its target first, so each attempt connects (and fails) at once.
    let attempt = |name: &str, host: &str, tls: String| {
        format!(
            "CREATE SINK {name} FROM t_local INTO POSTGRES WITH (url = 'postgres://postgres@{host}:{port}/postgres', \
             password = SECRET pg_pass, table = 't_{name}', create_table = 'true', {tls})"
        )
    };
    execute_ok(&database, "CREATE TABLE t_local (id int PRIMARY KEY)").await;
    let accepted = [
        ("prefer_default", "127.0.0.1", "columns = 'id'".to_string()),
        ("required", "127.0.0.1", "sslmode = 'require'".to_string()),
        ("ca_by_ip", "127.0.0.1", format!("sslmode = 'verify-ca', sslrootcert = '{ca}'")),
        ("full_by_name", "localhost", format!("sslmode = 'verify-full', sslrootcert = '{ca}'")),
    ];
    for (name, host, tls) in accepted {
        let sql = attempt(name, host, tls);
        execute(&database, &sql).await.unwrap_or_else(|e| panic!("{sql}\nfailed: {e}"));
    }
    let refused = [
        // The certificate names localhost, not 127.0.0.1.
        ("full_by_ip", "127.0.0.1", format!("sslmode = 'verify-full', sslrootcert = '{ca}'"), "certificate"),
        ("wrong_ca", "localhost", format!("sslmode = 'verify-full', sslrootcert = '{other_ca}'"), "certificate"),
        ("ca_wrong_ca", "127.0.0.1", format!("sslmode = 'verify-ca', sslrootcert = '{other_ca}'"), "certificate"),
        // The server refuses plain connections, in its own words.
        ("plain", "127.0.0.1", "sslmode = 'disable'".to_string(), "no encryption"),
        ("no_root", "localhost", "sslmode = 'verify-full'".to_string(), "sslrootcert"),
        ("bad_mode", "localhost", "sslmode = 'sometimes'".to_string(), "sometimes"),
    ];
    for (name, host, tls, expected) in refused {
        let sql = attempt(name, host, tls);
        let error = execute(&database, &sql).await.expect_err(&sql);
        assert!(error.contains(expected), "{name}: expected '{expected}' in: {error}");
        assert!(!error.contains(PASSWORD), "{name}: the error shows the password: {error}");
    }
    // A wrong password, through the replication connection of a source too.
    execute_ok(&database, "CREATE SECRET wrong AS 'not-the-password'").await;
    let error = execute(
        &database,
        &format!(
            "CREATE SOURCE s FROM POSTGRES WITH (url = 'postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require', \
             password = SECRET wrong) FOR TABLES (public.t)"
        ),
    )
    .await
    .expect_err("wrong password");
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");
    let error = execute(
        &database,
        "CREATE SOURCE s FROM POSTGRES WITH (url = 'postgres://x@h/d', password = SECRET nope) FOR ALL TABLES",
    )
    .await
    .expect_err("no such secret");
    assert!(error.contains("secret \"nope\"") && error.contains("does not exist"), "{error}");
    database.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_from_files_and_the_environment_under_serve_only_when_allowed() {
    let (cluster, _certificates, _admin) = secured_cluster("host").await;
    let port = cluster.port;
    let password_file = crate::scratch::scratch_dir().join("pg-password-26");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    let source = |option: &str| {
        format!(
            "CREATE SOURCE s FROM POSTGRES WITH (url = 'postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require', \
             {option}) FOR TABLES (public.t)"
        )
    };
    let by_file = source(&format!("password_file = '{}'", password_file.display()));
    let by_env = source("password_env = 'CF_TEST_PG_PASSWORD'");

    // A server's clients may not read its files or variables...
    let server = Server::start_with(&[], &[], &[("CF_TEST_PG_PASSWORD", PASSWORD)]);
    let client = server.client().await;
    for sql in [&by_file, &by_env] {
        let error = client.batch_execute(sql).await.expect_err("refused");
        assert!(pg_error(&error).contains("--allow-host-credentials"), "{}", pg_error(&error));
    }
    drop(server);

    // ...unless the operator allows it; startup files of the operator may too.
    let data_dir = crate::scratch::scratch_dir().join("host-credentials-data");
    let startup = sql_file("host-credentials.sql", &format!("{by_env};"));
    let server = Server::start_with(
        &[&startup],
        &["--data-dir", data_dir.to_str().expect("utf-8"), "--allow-host-credentials"],
        &[("CF_TEST_PG_PASSWORD", PASSWORD)],
    );
    let client = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.query("SELECT * FROM t", &[]).await.map(|r| r.len()).unwrap_or(0) != 2 {
        assert!(Instant::now() < deadline, "the source did not load t:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.batch_execute("DROP SOURCE s").await.expect("drop");
    client.batch_execute(&by_file).await.unwrap_or_else(|e| panic!("{}\n{}", pg_error(&e), server.log()));
    client.batch_execute("DROP SOURCE s").await.expect("drop");
    drop(server);
    // The data directory holds the definitions, readable by its owner only, and none of
    // them holds the password.
    for entry in walk(&data_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains(PASSWORD), "{} holds the password", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_survives_restarts_and_a_startup_file_rotates_it() {
    let (cluster, certificates, admin) = secured_cluster("restart").await;
    let port = cluster.port;
    let ca = certificates.ca.display().to_string();
    let startup = |password: &str| {
        sql_file(
            &format!("secret-{password}.sql"),
            &format!(
                "CREATE SECRET pg_pass AS '{password}';\n\
                 CREATE SOURCE core FROM POSTGRES WITH (url = 'postgres://postgres@localhost:{port}/postgres', \
                 sslmode = 'verify-full', sslrootcert = '{ca}', password = SECRET pg_pass) FOR TABLES (public.t);\n"
            ),
        )
    };
    let data_dir = crate::scratch::scratch_dir().join("secret-restart-data");
    let args = ["--data-dir", data_dir.to_str().expect("utf-8")];
    let count = |client: tokio_postgres::Client| async move {
        client.query("SELECT * FROM t", &[]).await.map(|r| r.len()).unwrap_or(0)
    };
    let wait_for = |server: &Server, expected: usize| {
        let url = server.url("tester");
        let log = server.log_path();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
                tokio::spawn(connection);
                if count(client).await == expected {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "t did not reach {expected} rows:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    let first = startup(PASSWORD);
    let mut server = Server::start_with(&[&first], &args, &[]);
    wait_for(&server, 2).await;
    server.terminate(Duration::from_secs(30));

    // The same files again: the secret and the source come back and stream on.
    admin.batch_execute("INSERT INTO t VALUES (3, 'three')").await.expect("insert");
    let mut server = Server::start_with(&[&first], &args, &[]);
    wait_for(&server, 3).await;
    server.terminate(Duration::from_secs(30));

    // The password is rotated upstream and in the startup file: the restored source fails
    // with the old one, then retries with the new value.
    admin
        .batch_execute("ALTER USER postgres PASSWORD 'rotated-26'; INSERT INTO t VALUES (4, 'four')")
        .await
        .expect("rotate");
    let rotated = startup("rotated-26");
    let server = Server::start_with(&[&rotated], &args, &[]);
    wait_for(&server, 4).await;
    let log = server.log();
    assert!(!log.contains(PASSWORD) && !log.contains("rotated-26"), "the log shows a password:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_say_what_postgresql_said_and_where() {
    let cluster = PostgresCluster::start();
    let database = Database::new(changeflow_connectors::registry());
    execute_ok(&database, "CREATE TABLE x (id int PRIMARY KEY)").await;
    let port = cluster.port;
    let closed = crate::pg_cluster::free_port();
    for (url, expected) in [
        (format!("postgres://postgres@127.0.0.1:{port}/nodb"), "database \"nodb\" does not exist (SQLSTATE 3D000)"),
        (format!("postgres://nobody@127.0.0.1:{port}/postgres"), "role \"nobody\" does not exist (SQLSTATE 28000)"),
        (format!("postgres://postgres@127.0.0.1:{closed}/postgres"), "Connection refused"),
    ] {
        let sql =
            format!("CREATE SINK s FROM x INTO POSTGRES WITH (url = '{url}', table = 't', create_table = 'true')");
        let error = execute(&database, &sql).await.expect_err(&sql);
        let target = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).expect("host:port");
        assert!(error.contains(expected) && error.contains(target), "{url}: {error}");
        let source = format!("CREATE SOURCE s FROM POSTGRES WITH (url = '{url}') FOR ALL TABLES");
        let error = execute(&database, &source).await.expect_err(&source);
        assert!(error.contains(expected) && error.contains(target), "{url}: {error}");
    }
    database.shutdown().await;
}
