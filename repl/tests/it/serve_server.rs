//! A `changeflow serve` process for tests: free ports on 127.0.0.1, waits until it accepts
//! connections, SIGTERM on request, killed on drop; its stderr is kept for failure messages.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::pg_cluster::free_port;

pub struct Server {
    child: Child,
    pub port: u16,
    pub metrics_port: u16,
    log: PathBuf,
}

/// Writes SQL to a temp file for the server to run at start.
pub fn sql_file(name: &str, text: &str) -> PathBuf {
    let dir = crate::scratch::scratch_dir().join("serve");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write sql");
    path
}

impl Server {
    pub fn start(files: &[&Path]) -> Self {
        Self::start_with(files, &[], &[])
    }

    pub fn start_with(files: &[&Path], args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut server = Self::spawn_with(files, args, envs);
        server.wait_until_listening();
        server
    }

    /// Starts the process without waiting for it to listen.
    pub fn spawn_with(files: &[&Path], args: &[&str], envs: &[(&str, &str)]) -> Self {
        let port = free_port();
        let metrics_port = free_port();
        let log = crate::scratch::scratch_dir().join(format!("serve-{port}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_changeflow"));
        command.arg("serve");
        if !args.contains(&"--data-dir") {
            command.arg("--in-memory");
        }
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(args)
            .args(files)
            .env_remove("CHANGEFLOW_USERS")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command.spawn().expect("start changeflow serve");
        Self { child, port, metrics_port, log }
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("changeflow serve exited with {status} before listening:\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("changeflow serve did not listen on port {} within 60 s:\n{}", self.port, self.log());
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the server's stderr goes.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, user: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname=changeflow", self.port)
    }

    /// A tokio-postgres client (no TLS); its connection runs on a task.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.connect("tester", None).await.unwrap_or_else(|e| panic!("connect: {e}\n{}", self.log()))
    }

    pub async fn connect(
        &self,
        user: &str,
        password: Option<&str>,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = self.url(user).parse().expect("config");
        if let Some(password) = password {
            config.password(password);
        }
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// GET a path of the metrics server; returns status line and body.
    pub fn http_get(&self, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("connect to metrics");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (head.lines().next().unwrap_or_default().to_string(), body.to_string())
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!("changeflow serve did not stop within {within:?} of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Server {
    /// `kill -9`: the process gets no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
