//! The `changeflow` binary as a user runs it: `run` in each format, error positions, `check`.

use std::path::PathBuf;
use std::process::Command;

/// The repl crate's directory, as cargo reports it when running the test.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()))
}

fn changeflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_changeflow"))
}

fn temp_sql(name: &str, text: &str) -> PathBuf {
    let dir = crate::scratch::scratch_dir().join("cli");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write sql");
    path
}

const PIPELINE: &str = "
CREATE TABLE t (id INT PRIMARY KEY, grp TEXT, v INT);
CREATE MATERIALIZED VIEW s AS SELECT grp, sum(v) AS total FROM t GROUP BY grp;
INSERT INTO t VALUES (1, 'a', 1), (2, 'a', 2), (3, NULL, 5);
SELECT * FROM s ORDER BY grp;
UPDATE t SET grp = 'b' WHERE id = 2;
SELECT grp, total FROM s ORDER BY grp NULLS FIRST;
";

#[test]
fn run_prints_csv_with_blank_lines_between_results() {
    let file = temp_sql("pipeline.sql", PIPELINE);
    let output = changeflow().args(["run", "--format", "csv"]).arg(&file).output().expect("run");
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "grp,total\na,3\n,5\n\ngrp,total\n,5\na,1\nb,2\n");
}

#[test]
fn run_prints_json_rows() {
    let file = temp_sql("json.sql", PIPELINE);
    let output = changeflow().args(["run", "--format", "json"]).arg(&file).output().expect("run");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("{\"grp\":\"a\",\"total\":3}\n{\"grp\":null,\"total\":5}\n"), "{stdout}");
}

#[test]
fn an_untyped_null_is_null_in_csv_and_json() {
    let file = temp_sql("null.sql", "SELECT NULL AS n, '' AS empty, 1 AS one;");
    let output = changeflow().args(["run", "--format", "json"]).arg(&file).output().expect("run");
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "{\"n\":null,\"empty\":\"\",\"one\":1}\n");
    let output = changeflow().args(["run", "--format", "csv"]).arg(&file).output().expect("run");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "n,empty,one\n,\"\",1\n");
}

#[test]
fn run_prints_tables_and_status_lines() {
    let file = temp_sql("table.sql", PIPELINE);
    let output = changeflow().arg("run").arg(&file).output().expect("run");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("INSERT 0 3"), "{stdout}");
    assert!(stdout.contains(" grp | total \n-----+-------\n a   |     3\n"), "{stdout}");
    assert!(stdout.contains("(3 rows)"), "{stdout}");
}

#[test]
fn run_stops_at_the_first_error_with_its_position() {
    let file = temp_sql("bad.sql", "CREATE TABLE t (id INT);\nSELECT 1;\n\nSELECT * FROM missing;\nSELECT 2;\n");
    let output = changeflow().args(["run", "--format", "csv"]).arg(&file).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{}:4:1: ", file.display())), "{stderr}");
    assert!(stderr.contains("relation \"missing\" does not exist"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "?column?\n1\n", "the statement after the error must not run");
}

#[test]
fn check_reports_every_error_without_executing() {
    let file = temp_sql(
        "check.sql",
        "CREATE TABLE t (id INT PRIMARY KEY, v INT);\n\
         CREATE MATERIALIZED VIEW ok AS SELECT v, count(*) FROM t GROUP BY v;\n\
         CREATE MATERIALIZED VIEW w AS SELECT id, rank() OVER (ORDER BY v) FROM t;\n\
         INSERT INTO t VALUES (1, 2);\n\
         SELEC 1;\n\
         INSERT INTO nowhere VALUES (1);\n\
         CREATE SOURCE g FROM DATAGEN WITH (scenario = 'nope');\n",
    );
    let output = changeflow().arg("check").arg(&file).output().expect("check");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = file.display().to_string();
    assert!(
        stderr.contains(&format!("{name}:3:1: cannot maintain this view incrementally: window functions")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{name}:5:1: syntax error")), "{stderr}");
    assert!(stderr.contains(&format!("{name}:6:1: ")) && stderr.contains("nowhere"), "{stderr}");
    assert!(stderr.contains(&format!("{name}:7:1: ")) && stderr.contains("unknown DATAGEN scenario"), "{stderr}");
    assert!(stderr.contains("7 statements checked, 4 errors"), "{stderr}");
}

#[test]
fn check_accepts_the_examples() {
    let examples = manifest_dir().join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("examples dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let output = changeflow().arg("check").args(&files).output().expect("check");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn the_main_example_runs() {
    let example = manifest_dir().join("../examples/session_calendar.sql");
    let output = changeflow().args(["run", "--format", "csv"]).arg(&example).output().expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // After the transaction: session 3 is sold out and session 4 is cancelled.
    assert!(stdout.ends_with("city,open_sessions,seats_left\nLisbon,2,35\nOslo,0,0\n"), "{stdout}");
}

#[test]
fn check_validates_sinks_without_writing_anything() {
    let out = crate::scratch::scratch_dir().join("cli-never-written.jsonl");
    let file = temp_sql(
        "sinks.sql",
        &format!(
            "CREATE TABLE t (id INT PRIMARY KEY, v TEXT);\n\
             CREATE SINK ok FROM t INTO FILE WITH (path = '{out}', format = 'debezium-json');\n\
             CREATE SINK bad FROM t INTO FILE WITH (path = '{out}', format = 'avro');\n\
             CREATE SINK nowhere FROM t INTO KAFKA WITH (topic = 'x');\n\
             DROP TABLE t;\n",
            out = out.display()
        ),
    );
    let output = changeflow().arg("check").arg(&file).output().expect("check");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = file.display().to_string();
    assert!(stderr.contains(&format!("{name}:3:1: sink \"bad\": unknown format 'avro'")), "{stderr}");
    assert!(stderr.contains(&format!("{name}:4:1: unknown sink system \"kafka\"")), "{stderr}");
    assert!(stderr.contains(&format!("{name}:5:1: cannot drop \"t\": sink ok delivers it")), "{stderr}");
    assert!(!out.exists(), "check wrote the sink's file");
}

/// The REPL, fed lines on stdin: a statement over several lines, one followed by a
/// comment, and the describing commands.
#[test]
fn the_repl_ends_statements_at_semicolons_and_describes_relations() {
    use std::io::Write;
    let home = crate::scratch::scratch_dir().join("repl-home");
    std::fs::create_dir_all(&home).expect("home");
    let mut child = changeflow()
        .env("HOME", &home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the REPL");
    let input = "CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL);\n\
                 CREATE MATERIALIZED VIEW v AS\n  SELECT name, count(*) AS n\n  FROM t GROUP BY name;\n\
                 SELECT 40 + 2 AS answer; -- a note after the statement\n\
                 CREATE SECRET hidden AS 'not-in-history';\n\
                 \\dt\n\\dm\n\\d v\n\\d nope\n";
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("REPL output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains(" answer \n--------\n     42\n"), "{stdout}");
    assert!(stdout.contains(" t    | table\n"), "{stdout}");
    assert!(stdout.contains(" v    | materialized view\n"), "{stdout}");
    assert!(stdout.contains("Materialized view \"v\""), "{stdout}");
    assert!(stdout.contains(" n      | bigint | not null"), "{stdout}");
    assert!(stdout.contains("View definition:\n SELECT name, count(*) AS n FROM t GROUP BY name;"), "{stdout}");
    assert!(stderr.contains("Did not find any relation named \"nope\"."), "{stderr}");
    let history = std::fs::read_to_string(home.join(".changeflow_history")).unwrap_or_default();
    assert!(history.contains("SELECT 40 + 2") && !history.contains("not-in-history"), "{history}");
}
