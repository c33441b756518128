//! A throwaway PostgreSQL cluster for tests and benchmarks: initdb'd in a temp dir (as the
//! `postgres` user when running as root), `wal_level` chosen by the caller, a free port on
//! 127.0.0.1, stopped and removed on drop. Shared by the integration tests and the benches.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Clusters started by this process, numbering their temp dirs.
static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// A PostgreSQL cluster in a temp dir, on a free port, stopped on drop.
pub struct PostgresCluster {
    pub port: u16,
    data_dir: PathBuf,
    bin: PathBuf,
    as_postgres_user: bool,
    options: String,
}

pub fn postgres_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    candidates.sort();
    candidates.into_iter().rev().find(|bin| bin.join("initdb").exists()).unwrap_or_else(|| {
        panic!("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: run ./scripts/test.sh, which installs them")
    })
}

/// A port free on 127.0.0.1 now and not handed out before in this process (tests run in
/// parallel threads, and the kernel may offer a just-released port again).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

impl PostgresCluster {
    pub fn start() -> Self {
        Self::start_with("logical")
    }

    /// A cluster with the given `wal_level`.
    pub fn start_with(wal_level: &str) -> Self {
        let bin = postgres_bin();
        let as_postgres_user = running_as_root();
        let base = std::env::temp_dir().join(format!(
            "changeflow-pg-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&base).expect("create temp dir");
        let data_dir = base.join("data");
        if as_postgres_user {
            let status = Command::new("chown").arg("-R").arg("postgres").arg(&base).status().expect("chown");
            assert!(status.success(), "chown of {} to postgres failed", base.display());
        }
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level={wal_level} -c fsync=off \
             -c synchronous_commit=off -c TimeZone=UTC",
            path(&base)
        );
        let cluster = Self { port, data_dir: data_dir.clone(), bin: bin.clone(), as_postgres_user, options };
        cluster.run(
            &bin.join("initdb"),
            &["-D", path(&data_dir), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        );
        cluster.start_server();
        cluster
    }

    pub fn start_server(&self) {
        let log = self.data_dir.parent().expect("base dir").join("log");
        self.run(
            &self.bin.join("pg_ctl"),
            &["-D", path(&self.data_dir), "-o", &self.options, "-l", path(&log), "-w", "start"],
        );
    }

    /// Stops the server: `fast` (clean) or `immediate` (a crash).
    pub fn stop_server(&self, mode: &str) {
        self.run(&self.bin.join("pg_ctl"), &["-D", path(&self.data_dir), "-m", mode, "-w", "stop"]);
    }

    /// The path of one of PostgreSQL's programs (psql, pg_recvlogical, ...).
    #[allow(dead_code)] // used by the benches
    pub fn bin_path(&self, program: &str) -> PathBuf {
        self.bin.join(program)
    }

    /// A connection string for changeflow's POSTGRES source.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &Path, args: &[&str]) {
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let output = command.args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{} failed: {}\n{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        let config = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port);
        let (client, connection) =
            tokio_postgres::connect(&config, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

/// Certificates for a TLS test: a CA, a server certificate it signed for `localhost` only,
/// and a second CA that signed nothing the server has.
#[allow(dead_code)] // used by some test modules only
pub struct TestCertificates {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

#[allow(dead_code)] // used by some test modules only
impl TestCertificates {
    /// Made with the `openssl` command in `dir`.
    pub fn make(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("certificate dir");
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is needed to make test certificates (apt-get install openssl)");
            assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=changeflow test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
            .expect("ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        Self {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

#[allow(dead_code)] // used by some test modules only
impl PostgresCluster {
    /// Turns TLS on with the given certificate, gives `postgres` a password, and accepts TCP
    /// connections only over TLS with that password (plain ones are rejected). Local socket
    /// connections stay trusted for the harness ([`PostgresCluster::connect_local`]).
    pub fn require_tls_and_password(&self, certificates: &TestCertificates, password: &str) {
        let cert = self.data_dir.join("server.crt");
        let key = self.data_dir.join("server.key");
        std::fs::copy(&certificates.server_cert, &cert).expect("copy certificate");
        std::fs::copy(&certificates.server_key, &key).expect("copy key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("key mode");
        if self.as_postgres_user {
            let status = Command::new("chown").arg("postgres").arg(&cert).arg(&key).status().expect("chown");
            assert!(status.success(), "chown of the server certificate failed");
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))
            .expect("postgresql.conf");
        use std::io::Write;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\npassword_encryption = 'scram-sha-256'"
        )
        .expect("write postgresql.conf");
        std::fs::write(
            self.data_dir.join("pg_hba.conf"),
            "local all all trust\nlocal replication all trust\n\
             hostnossl all all 127.0.0.1/32 reject\nhostnossl replication all 127.0.0.1/32 reject\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\nhostssl replication all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        self.stop_server("fast");
        self.start_server();
        let sql = format!("ALTER USER postgres PASSWORD '{password}'");
        self.run(
            &self.bin.join("psql"),
            &[
                "-h",
                path(self.socket_dir()),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                &sql,
            ],
        );
    }

    fn socket_dir(&self) -> &Path {
        self.data_dir.parent().expect("base dir")
    }

    /// A client over the local socket (trusted, whatever TCP requires).
    pub async fn connect_local(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config.host_path(self.socket_dir()).port(self.port).user("postgres").dbname("postgres");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("connect over the local socket");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        let bin = self.bin.join("pg_ctl");
        let data = self.data_dir.clone();
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let _ = command.args(["-D", path(&data), "-m", "immediate", "stop"]).output();
        if let Some(base) = data.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// initdb refuses to run as root; the harness then runs it as the `postgres` user.
fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}
