//! Every node serves Prometheus metrics and a health check over HTTP: the
//! figures follow what the cluster does (writes, chunks, Raft's position,
//! one leader), `/health` answers 200 in a healthy cluster and 503 with
//! one line why on a node left without a majority, and an unknown path
//! gets 404. The example Prometheus configuration and alert rules in
//! `deploy/prometheus/` pass `promtool`'s checks and its rule tests, and
//! every metric they name is one the nodes export.

use std::time::Duration;

use quizfs_bench::nodestats::http_get as get;
use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, Mount, pattern, wait_until};

/// The value of the sample named exactly `name` (with its labels, if any).
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn metrics(cluster: &Cluster, i: usize) -> String {
    let (code, body) = get(&cluster.metrics_addr(i), "/metrics").expect("metrics answer");
    assert_eq!(code, 200, "nas{}: /metrics {code}: {body}", i + 1);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_cluster_and_health_tells_a_lost_majority() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    let leader = cluster.leader().await.expect("a leader");

    // Every node is healthy and names the same leader.
    for i in 0..3 {
        let (code, body) = get(&cluster.metrics_addr(i), "/health").unwrap();
        println!("nas{} /health: {code} {}", i + 1, body.trim());
        assert_eq!(code, 200, "nas{}: {body}", i + 1);
        assert!(body.starts_with("ok: leader "), "{body}");
    }

    // Writes show on the leader's counters and every node's chunks.
    let before = sample(&metrics(&cluster, leader), "quizfs_raft_proposals_total").unwrap();
    // Ten different contents: ten chunks (equal ones would be one).
    let len = 300_000;
    for n in 0..10 {
        client
            .create_file(ROOT_INO, format!("m{n}").as_bytes(), &pattern(n, len))
            .await
            .unwrap();
    }
    let m = metrics(&cluster, leader);
    let after = sample(&m, "quizfs_raft_proposals_total").unwrap();
    println!("leader's proposals: {before} before, {after} after 10 files");
    assert!(after >= before + 10.0, "{before} -> {after}");
    assert!(sample(&m, "quizfs_raft_propose_seconds_count").unwrap() >= 10.0);
    assert_eq!(sample(&m, "quizfs_raft_is_leader"), Some(1.0));
    let applied = sample(&m, "quizfs_raft_applied_index").unwrap();
    assert!(applied >= 10.0, "applied index {applied}");
    for i in 0..3 {
        let want = 10.0 * len as f64;
        wait_until(
            Duration::from_secs(20),
            "every node to count the chunks",
            || async {
                let m = metrics(&cluster, i);
                let bytes = sample(&m, "quizfs_chunk_bytes").unwrap_or(0.0);
                if bytes >= want {
                    Ok(m)
                } else {
                    Err(format!("nas{}: {bytes} chunk bytes", i + 1))
                }
            },
        )
        .await;
        let m = metrics(&cluster, i);
        assert!(sample(&m, "quizfs_raft_log_flush_seconds_count").unwrap() >= 1.0);
        assert!(sample(&m, "quizfs_disk_free_bytes").unwrap() > 0.0);
        assert_eq!(
            sample(&m, "quizfs_raft_is_leader"),
            Some(f64::from(u8::from(i == leader)))
        );
        assert!(
            m.lines()
                .any(|l| l.starts_with("quizfs_rpc_seconds_count{")),
            "nas{}: no RPC latency",
            i + 1
        );
    }

    let (code, _) = get(&cluster.metrics_addr(leader), "/nothing").unwrap();
    assert_eq!(code, 404);

    // Every metric the example alert rules use is exported.
    let exported = metrics(&cluster, leader);
    for name in rule_metrics() {
        assert!(
            exported.lines().any(|l| !l.starts_with('#')
                && l.strip_prefix(name.as_str())
                    .is_some_and(|r| r.starts_with([' ', '{']))),
            "alerts.yml uses {name}, which no node exports"
        );
    }

    // The two other nodes die: the leader, alone, says it is not healthy.
    for i in (0..3).filter(|i| *i != leader) {
        cluster.kill(i);
    }
    let addr = cluster.metrics_addr(leader);
    let why = wait_until(
        Duration::from_secs(10),
        "the lone leader's health to fail",
        || async {
            match get(&addr, "/health") {
                Ok((503, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    println!("lone node's /health: 503 {}", why.trim());
    assert!(why.contains("majority"), "{why}");
}

/// `deploy/prometheus/`, from the tests' directory.
fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// The quizfs metric names the alert rules use.
fn rule_metrics() -> Vec<String> {
    let rules = std::fs::read_to_string(deploy_dir().join("alerts.yml")).unwrap();
    let mut names: Vec<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("quizfs_"))
        .map(String::from)
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 3, "{names:?}");
    names
}

#[test]
fn the_example_prometheus_configuration_and_alert_rules_check() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(deploy_dir())
            .output()
            .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("promtool {}: {}", args.join(" "), text.trim());
        assert!(out.status.success(), "promtool {args:?}: {text}");
    };
    run(&["check", "config", "prometheus.yml"]);
    run(&["test", "rules", "alerts_test.yml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_serves_its_own_metrics_and_health() {
    let mut cluster = Cluster::start(3, &[]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::new(&cluster, 0, &format!("metrics={addr}")).await;
    let scrape = || {
        let (code, body) = get(&addr, "/metrics").expect("the mount's metrics answer");
        assert_eq!(code, 200, "{body}");
        body
    };
    // Writes, reads and a name that is not there.
    for n in 0..5u64 {
        let data = pattern(900 + n, 150_000);
        let p = m.join(&format!("m{n}.jpg"));
        std::fs::write(&p, &data).unwrap();
        assert!(std::fs::read(&p).unwrap() == data);
    }
    assert!(std::fs::metadata(m.join("not-there.jpg")).is_err());
    let body = scrape();
    let writes = sample(&body, r#"quizfs_mount_op_seconds_count{op="write"}"#).unwrap();
    assert!(writes >= 5.0, "{writes} writes counted");
    assert!(sample(&body, r#"quizfs_mount_op_seconds_count{op="lookup"}"#).unwrap() >= 1.0);
    let enoent = sample(
        &body,
        r#"quizfs_mount_op_errors_total{op="lookup",errno="ENOENT"}"#,
    )
    .unwrap();
    assert!(enoent >= 1.0, "{body}");
    for i in 0..3 {
        let up = format!(r#"quizfs_mount_node_up{{node="{}"}}"#, cluster.addr(i));
        assert_eq!(sample(&body, &up), Some(1.0), "{up}\n{body}");
    }
    for family in [
        "quizfs_mount_call_retries_total",
        "quizfs_mount_leader_changes_total",
        "quizfs_mount_cache_hits_total",
        "quizfs_mount_cache_misses_total",
        "quizfs_mount_dirty_bytes",
    ] {
        assert!(sample(&body, family).is_some(), "{family}\n{body}");
    }
    let (code, health) = get(&addr, "/health").unwrap();
    assert_eq!(code, 200, "{health}");
    assert!(health.starts_with("ok: 3 of 3 nodes up"), "{health}");

    // The leader killed: the mount sees it down, learns the new leader,
    // and a write goes on.
    let changes = sample(&body, "quizfs_mount_leader_changes_total").unwrap();
    let leader = cluster.leader().await.expect("a leader");
    cluster.kill(leader);
    std::fs::write(m.join("after.jpg"), pattern(999, 100_000)).unwrap();
    let dead = format!(r#"quizfs_mount_node_up{{node="{}"}}"#, cluster.addr(leader));
    wait_until(
        Duration::from_secs(10),
        "the mount to count the failover",
        || async {
            let body = scrape();
            let now = sample(&body, "quizfs_mount_leader_changes_total").unwrap_or(0.0);
            if sample(&body, &dead) == Some(0.0) && now > changes {
                Ok(())
            } else {
                Err(format!(
                    "leader changes {changes} -> {now}; {dead} {:?}",
                    sample(&body, &dead)
                ))
            }
        },
    )
    .await;
    let (code, health) = get(&addr, "/health").unwrap();
    assert_eq!(code, 200, "two of three up: {health}");
    println!(
        "mount /health with nas{} down: {}",
        leader + 1,
        health.trim()
    );
}

/// The leader's count of chunk uploads it received (`Chunks/Put` calls).
fn puts(cluster: &Cluster, leader: usize) -> f64 {
    sample(
        &metrics(cluster, leader),
        "quizfs_rpc_seconds_count{method=\"/quizfs.v1.Chunks/Put\"}",
    )
    .unwrap_or(0.0)
}

/// Writes `n` files of 100 KiB named `prefix`N on `threads` threads at
/// once; returns every name with its content.
fn upload(m: &Mount, prefix: &str, n: u64, threads: u64) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = (0..n * threads)
        .map(|i| {
            let seed = i + n * threads * u64::from(prefix.as_bytes()[0]);
            (format!("{prefix}{i}.jpg"), pattern(seed, 100 * 1024))
        })
        .collect();
    std::thread::scope(|s| {
        for part in files.chunks(n as usize) {
            s.spawn(move || {
                for (name, data) in part {
                    std::fs::write(m.join(name), data).unwrap();
                }
            });
        }
    });
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_uploads_ride_in_their_commit_unless_inline_max_is_0() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await.expect("a leader");
    let carrying = Mount::new(&cluster, 0, "").await;
    let uploading = Mount::new(&cluster, 1, "inline_max=0").await;

    // One writer at a time on a default mount: no chunk upload at all,
    // the data went inside the commits.
    let before = puts(&cluster, leader);
    let mut files = upload(&carrying, "c", 10, 1);
    let after = puts(&cluster, leader);
    println!(
        "default mount, one writer: {} chunk uploads",
        after - before
    );
    assert_eq!(after, before, "a small file was uploaded as a chunk");

    // With inline_max=0 every file is uploaded as a chunk first.
    let before = after;
    files.extend(upload(&uploading, "u", 10, 1));
    let after = puts(&cluster, leader);
    println!("inline_max=0: {} chunk uploads", after - before);
    assert!(after >= before + 10.0, "{before} -> {after}");

    // Many writers at once on a default mount: at most two commits carry
    // data at a time, the others upload their chunks.
    let before = after;
    files.extend(upload(&carrying, "m", 4, 12));
    let after = puts(&cluster, leader);
    println!(
        "default mount, 12 writers: {} chunk uploads",
        after - before
    );
    assert!(after > before, "12 writers at once all carried their data");

    // The carried chunks reach every node's disk (the 5 s sync), and every
    // file reads back whole through the other mount.
    for i in 0..3 {
        wait_until(
            Duration::from_secs(30),
            "every node to sync the carried chunks",
            || async {
                let m = metrics(&cluster, i);
                match sample(&m, "quizfs_carried_sync_seconds_count") {
                    Some(n) if n >= 1.0 && sample(&m, "quizfs_carried_bytes") == Some(0.0) => {
                        Ok(())
                    }
                    n => Err(format!("nas{}: {n:?} syncs", i + 1)),
                }
            },
        )
        .await;
    }
    for (name, data) in &files {
        let got = std::fs::read(uploading.join(name)).unwrap();
        assert!(got == *data, "{name} differs");
    }
}
