//! The benchmark in its short form, so it cannot rot: `quizfs-bench
//! compare --short` on the local disk and on quizfs (its own cluster in
//! network namespaces, a mount, every workload, a kill of a follower and
//! of the leader), and `quizfs-bench run` and `quizfs-bench scale` (in
//! miniature) on a mount of a loopback cluster. Every figure must be
//! measured, positive and finite, and the Markdown sections, JSON and
//! charts must be written.

use std::process::Command;

use quizfs_bench::compare::Results;
use quizfs_bench::workloads::{Report, ScaleRow};
use quizfs_tests::{Cluster, Mount, bin};

const KEYS: [&str; 27] = [
    "seq_write",
    "seq_read_warm",
    "seq_read_cold",
    "upload_files",
    "upload_mib",
    "upload_p50",
    "upload_p99",
    "upload_readback",
    "upload3_files",
    "upload3_p99",
    "upload16_files",
    "upload16_p99",
    "upload16d_files",
    "upload16d_p99",
    "meta_create",
    "meta_stat",
    "meta_rename",
    "meta_unlink",
    "ls_l",
    "rand_read_qd1",
    "rand_read_qd16",
    "rand_write_qd1",
    "rand_write_qd16",
    "sqlite_autocommit",
    "sqlite_txn",
    "dbench_mbs",
    "dbench_max_ms",
];

fn check(report: &Report) {
    assert!(
        report.errors.is_empty(),
        "{}: {:?}",
        report.system,
        report.errors
    );
    for key in KEYS {
        let f = report
            .figure(key)
            .unwrap_or_else(|| panic!("{}: {key} not measured", report.system));
        assert!(
            f.samples.iter().all(|v| v.is_finite() && *v > 0.0),
            "{}: {key} = {:?}",
            report.system,
            f.samples
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_comparison_measures_every_figure_and_writes_its_report() {
    let out = tempfile::tempdir().unwrap();
    let md = out.path().join("BENCHMARKS.md");
    std::fs::write(&md, "# Benchmarks\n\nkept text\n").unwrap();
    let (json, charts) = (out.path().join("c.json"), out.path().join("charts"));
    let status = tokio::task::spawn_blocking({
        let (md, json, charts) = (md.clone(), json.clone(), charts.clone());
        move || {
            Command::new(bin("quizfs-bench"))
                .args(["compare", "--short", "--systems", "local,quizfs"])
                .args(["--faults", "kill", "--down-secs", "2"])
                .arg("--scratch")
                .arg(std::env::temp_dir())
                .arg("--markdown")
                .arg(&md)
                .arg("--json")
                .arg(&json)
                .arg("--charts")
                .arg(&charts)
                .status()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "quizfs-bench compare failed: {status}");
    let results: Results = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(results.errors.is_empty(), "{:?}", results.errors);
    assert_eq!(results.reports.len(), 2);
    for r in &results.reports {
        check(r);
    }
    // Kill of a follower and of the leader, without a failed operation.
    assert_eq!(results.failover.len(), 2, "{:?}", results.failover);
    for f in &results.failover {
        assert_eq!((f.failed, f.lost), (0, 0), "{f:?}");
        assert!(f.heal_s.is_some(), "{f:?} did not heal");
    }
    let doc = std::fs::read_to_string(&md).unwrap();
    assert!(doc.contains("kept text"), "the rest of the file is kept");
    assert!(doc.contains("| seq write 32 MiB"), "{doc}");
    assert!(doc.contains("<!-- compare:end -->"));
    for chart in [
        "seq", "uploads", "metadata", "random", "sqlite", "dbench", "failover",
    ] {
        let svg = std::fs::read_to_string(charts.join(format!("{chart}.svg"))).unwrap();
        assert!(svg.contains("<rect"), "{chart}.svg has no bars");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quizfs_bench_run_measures_a_mount() {
    let cluster = Cluster::start(3, &[]).await;
    let mount = Mount::new(&cluster, 0, "").await;
    let json = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new(bin("quizfs-bench"))
        .args(["run", "--short", "--name", "quizfs", "--workloads"])
        .arg("seq,uploads,meta")
        .arg("--json")
        .arg(json.path())
        .arg(&mount.path)
        .status()
        .unwrap();
    assert!(status.success());
    let report: Report = serde_json::from_slice(&std::fs::read(json.path()).unwrap()).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report
            .figure("upload_files")
            .is_some_and(|f| f.median() > 0.0)
    );
    assert!(report.figure("random").is_none());
    // The workloads leave nothing behind.
    assert_eq!(std::fs::read_dir(&mount.path).unwrap().count(), 0);
    let bad = Command::new(bin("quizfs-bench"))
        .args(["run", "--workloads", "nope"])
        .arg(&mount.path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown workload"));

    // Each operation's latency, one at a time: every operation measured
    // as often as asked, nothing left behind.
    let lat_json = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(bin("quizfs-bench"))
        .args(["oplat", "--count", "5", "--json"])
        .arg(lat_json.path())
        .arg(&mount.path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("upload: close"), "{table}");
    let rows: Vec<quizfs_bench::workloads::oplat::OpLatency> =
        serde_json::from_slice(&std::fs::read(lat_json.path()).unwrap()).unwrap();
    assert_eq!(rows.len(), 14, "{rows:?}");
    for r in &rows {
        assert_eq!(r.samples_ms.len(), 5, "{}", r.op);
        assert!(r.samples_ms.iter().all(|&ms| ms > 0.0), "{r:?}");
    }
    assert_eq!(std::fs::read_dir(&mount.path).unwrap().count(), 0);

    // The scaling table in miniature, on the same mount.
    let scale_json = tempfile::NamedTempFile::new().unwrap();
    let md = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        md.path(),
        "# B\n\n<!-- scale:begin -->\nold\n<!-- scale:end -->\ntail\n",
    )
    .unwrap();
    let status = Command::new(bin("quizfs-bench"))
        .arg("scale")
        .arg("--dir")
        .arg(&mount.path)
        .args(["--levels", "40,120", "--seq-mib", "2,6", "--probe", "15"])
        .args(["--reps", "1", "--fillers", "3", "--markdown"])
        .arg(md.path())
        .arg("--json")
        .arg(scale_json.path())
        .status()
        .unwrap();
    assert!(status.success());
    let rows: Vec<ScaleRow> =
        serde_json::from_slice(&std::fs::read(scale_json.path()).unwrap()).unwrap();
    let levels: Vec<(usize, u64)> = rows.iter().map(|r| (r.files, r.seq_mib)).collect();
    assert_eq!(levels, [(40, 0), (120, 0), (0, 2), (0, 6)]);
    for r in &rows {
        let keys: &[&str] = if r.seq_mib == 0 {
            &[
                "upload_files",
                "upload_p99",
                "meta_create",
                "meta_stat",
                "meta_rename",
                "meta_unlink",
            ]
        } else {
            &["seq_write", "seq_read_warm", "seq_read_cold"]
        };
        for k in keys {
            let f = r.report.figure(k).unwrap_or_else(|| panic!("{k} missing"));
            assert!(f.median() > 0.0 && f.median().is_finite(), "{k}: {f:?}");
        }
    }
    let doc = std::fs::read_to_string(md.path()).unwrap();
    assert!(
        !doc.contains("\nold\n") && doc.ends_with("<!-- scale:end -->\ntail\n"),
        "{doc}"
    );
    assert!(
        doc.contains("| 120 |") && doc.contains("| 6 MiB |"),
        "{doc}"
    );
    // It removed the fill and the probes.
    assert_eq!(std::fs::read_dir(&mount.path).unwrap().count(), 0);
    drop(mount);
}
