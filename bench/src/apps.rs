//! Workloads that run real applications on the measured directory:
//!
//! - `sqlite`: Python's sqlite3 (the system's SQLite library) in
//!   rollback-journal mode: N autocommit inserts (each a transaction with
//!   its fsyncs), then one M-row transaction;
//! - `dbench`: Debian's dbench with its default load file (file-server
//!   operations), 4 clients for a fixed time: throughput and the longest
//!   single operation.

use std::path::Path;
use std::process::Command;

use crate::workloads::{Report, Sizes};

/// The SQLite run, as a Python program: prints the seconds of each phase.
const SQLITE_SCRIPT: &str = r#"
import os, sqlite3, sys, time
path, auto, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=delete")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
db.execute("CREATE INDEX t_k ON t (k)")
t = time.monotonic()
for i in range(auto):
    db.execute("INSERT INTO t VALUES (?, ?, ?)", (i, i * 7919 % 10007, os.urandom(200)))
a = time.monotonic() - t
t = time.monotonic()
db.execute("BEGIN")
for i in range(auto, auto + rows):
    db.execute("INSERT INTO t VALUES (?, ?, ?)", (i, i * 7919 % 10007, os.urandom(200)))
db.execute("COMMIT")
b = time.monotonic() - t
ok = db.execute("PRAGMA integrity_check").fetchone()[0]
n = db.execute("SELECT count(*) FROM t").fetchone()[0]
db.close()
if ok != "ok" or n != auto + rows:
    sys.exit(f"integrity_check {ok}, {n} rows")
print(a, b)
"#;

/// Runs the SQLite workload in `dir`.
pub(crate) fn sqlite(dir: &Path, sizes: &Sizes, report: &mut Report) -> Result<(), String> {
    let (auto, rows) = sizes.sqlite;
    let db = dir.join("bench.db");
    let out = Command::new("python3")
        .args(["-c", SQLITE_SCRIPT])
        .arg(&db)
        .args([auto.to_string(), rows.to_string()])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sqlite run failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [a, b] = secs[..] else {
        return Err(format!("sqlite run printed {text:?}"));
    };
    report.add(
        "sqlite_autocommit",
        &format!("SQLite {auto} autocommit inserts"),
        "inserts/s",
        true,
        auto as f64 / a,
    );
    report.add(
        "sqlite_txn",
        &format!("SQLite one {rows}-row transaction"),
        "s",
        false,
        b,
    );
    Ok(())
}

/// Where Debian's dbench keeps its default load file.
const DBENCH_LOAD: &str = "/usr/share/dbench/client.txt";

/// Runs dbench (4 clients) in `dir` for `sizes.dbench_secs`.
pub(crate) fn dbench(dir: &Path, sizes: &Sizes, report: &mut Report) -> Result<(), String> {
    let secs = sizes.dbench_secs;
    let out = Command::new("dbench")
        .args(["-t", &secs.to_string(), "-c", DBENCH_LOAD, "-D"])
        .arg(dir)
        .arg("4")
        .output()
        .map_err(|e| format!("dbench (Debian package dbench): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "dbench failed: {}",
            text.lines().rev().take(3).collect::<Vec<_>>().join(" / ")
        ));
    }
    // "Throughput 9.70 MB/sec  4 clients  4 procs  max_latency=50.392 ms"
    let line = text
        .lines()
        .find(|l| l.starts_with("Throughput"))
        .ok_or("dbench printed no throughput")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let mbs: f64 = words
        .get(1)
        .and_then(|w| w.parse().ok())
        .ok_or("dbench throughput unreadable")?;
    let max_ms: f64 = line
        .split("max_latency=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .ok_or("dbench max latency unreadable")?;
    report.add("dbench_mbs", "dbench, 4 clients", "MB/s", true, mbs);
    report.add(
        "dbench_max_ms",
        "dbench, longest operation",
        "ms",
        false,
        max_ms,
    );
    Ok(())
}
