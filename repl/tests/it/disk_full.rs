//! A full disk under `changeflow serve --data-dir`, on a small tmpfs of its own (mounted by
//! the test, which runs as root as the PostgreSQL harness does): a write that cannot be
//! journaled fails and leaves nothing behind, the writes acknowledged once space is back
//! survive `kill -9`, and checkpoints resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::durability::start;
use crate::serve_server::sql_file;
use crate::support::{pg_error, postgres_rows};

/// A tmpfs of a few megabytes, unmounted (and removed) on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(name: &str, size: &str) -> Self {
        let path = crate::scratch::scratch_dir().join(name);
        let _ = Command::new("umount").arg("-l").arg(&path).output();
        std::fs::create_dir_all(&path).expect("mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mounting a tmpfs at {} failed (the tests run as root): {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Self { path }
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0x5a_u8; 16 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let small = [0x5a_u8; 64];
        while file.write_all(&small).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn checkpoints_written(log: &str) -> usize {
    log.matches("checkpoint written").count()
}

async fn ids(client: &tokio_postgres::Client) -> Vec<String> {
    postgres_rows(client, "SELECT id FROM t").await
}

fn expected(ids: impl Iterator<Item = i32>) -> Vec<String> {
    let mut rows: Vec<String> = ids.map(|id| format!("{id}.000000")).collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_write_and_loses_no_acknowledged_one() {
    let disk = SmallDisk::mount("disk-full", "8m");
    let dir = disk.path.join("data");
    let schema = sql_file("disk_full.sql", "CREATE TABLE t (id INT PRIMARY KEY, body TEXT);\n");
    let server = start(&[&schema], &dir);
    let client = server.client().await;
    for id in 1..=100 {
        client.execute("INSERT INTO t VALUES ($1, 'small')", &[&id]).await.expect("insert");
    }

    let filler = disk.fill();
    let big = "x".repeat(230 * 1024);
    let error = client.execute("INSERT INTO t VALUES (1000, $1)", &[&big]).await.expect_err("a write on a full disk");
    assert!(pg_error(&error).contains("No space left on device"), "{}", pg_error(&error));
    assert_eq!(ids(&client).await, expected(1..=100), "the failed write was applied");
    let before = checkpoints_written(&server.log());
    std::fs::remove_file(&filler).expect("free the space");

    for id in 101..=105 {
        client.execute("INSERT INTO t VALUES ($1, 'after')", &[&id]).await.expect("insert once space is back");
    }
    // Checkpoints resume once there is room again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoints_written(&server.log()) <= before {
        assert!(Instant::now() < deadline, "no checkpoint after the disk had room again\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!server.log().contains("File exists"), "{}", server.log());
    for id in 106..=110 {
        client.execute("INSERT INTO t VALUES ($1, 'journal only')", &[&id]).await.expect("insert");
    }
    server.kill();

    let server = start(&[&schema], &dir);
    let client = server.client().await;
    assert_eq!(ids(&client).await, expected(1..=110), "acknowledged writes were lost:\n{}", server.log());
    drop(client);
    server.kill();
    assert!(Path::new(&dir).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_on_a_full_disk_leaves_no_partial_record_before_later_ones() {
    // Without checkpoints in the way: every write stays in the journal until the restart.
    let disk = SmallDisk::mount("disk-full-journal", "8m");
    let dir = disk.path.join("data");
    let schema = sql_file("disk_full_journal.sql", "CREATE TABLE t (id INT PRIMARY KEY, body TEXT);\n");
    let dir_text = dir.to_str().expect("utf-8 path");
    let server = crate::serve_server::Server::start_with(
        &[&schema],
        &["--data-dir", dir_text, "--checkpoint-interval", "3600", "--checkpoint-epochs", "100000"],
        &[],
    );
    let client = server.client().await;
    client.execute("INSERT INTO t VALUES (1, 'before')", &[]).await.expect("insert");
    let filler = disk.fill();
    // Room for part of the record: the write is cut short by the full disk.
    let room = std::fs::OpenOptions::new().write(true).open(&filler).expect("filler");
    let size = room.metadata().expect("size").len();
    room.set_len(size - 100 * 1024).expect("free 100 KiB");
    drop(room);
    let big = "y".repeat(230 * 1024);
    client.execute("INSERT INTO t VALUES (2, $1)", &[&big]).await.expect_err("the write does not fit");
    std::fs::remove_file(&filler).expect("free the space");
    for id in 3..=7 {
        client.execute("INSERT INTO t VALUES ($1, 'after')", &[&id]).await.expect("insert");
    }
    server.kill();
    let server = start(&[&schema], &dir);
    let client = server.client().await;
    assert_eq!(ids(&client).await, expected([1, 3, 4, 5, 6, 7].into_iter()), "{}", server.log());
    server.kill();
}
