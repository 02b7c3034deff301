//! A power cut of all three nodes at once. Each node's data directory is a
//! `quizfs-lazyfs` disk, which keeps written content in memory until it is
//! fsynced; the cut kills the disks and then the nodes, so every byte that
//! was not synced is gone on every node, as after a real power cut. Then
//! every node starts again from what its disk holds.
//!
//! While the cut happens, `tests/posix/power_cut_writer.py` writes as
//! applications do: uploads (`open(O_CREAT|O_TRUNC)`, write, `close`);
//! renamed uploads (a temporary name, `close`, `rename` into place); a file
//! overwritten version after version with an `fsync` each; SQLite
//! transactions (rollback journal, `synchronous=full`); and a 16 MiB file
//! written once in 4,096 scattered pieces and fsynced, whose commit is a
//! large Raft entry and a state machine record over sled's inline limit
//! (sled keeps those in blob files of their own). On a fresh mount after the
//! cluster is back: every upload whose `close` (or rename) returned is there
//! byte for byte; the overwritten file holds its last fsynced version, a
//! later one, or (a later version's truncation committed without its data)
//! nothing; the database passes `integrity_check` with every transaction
//! whose COMMIT returned; the scattered file holds what was fsynced. Two
//! cuts in a row, so that a node that recovered from one recovers from the
//! next too; snapshots and log purges happen every 40 entries meanwhile.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quizfs_tests::{Cluster, Mount, wait_until};

/// What the writer reported: acknowledged uploads (name, length), the last
/// fsynced version of `versioned.bin`, and committed SQLite transactions
/// (database, number).
#[derive(Default)]
struct Acked {
    files: Vec<(String, usize)>,
    synced: Option<String>,
    txns: Vec<(String, u64)>,
    scattered: Option<String>,
}

/// The content the writer gives `name`: lines of the name and the line's
/// offset (as `power_cut_writer.py`'s `content`).
fn content(name: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let line = format!("{name} {:010}\n", out.len());
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
    out
}

/// Starts the writer on `dir`, and a thread that records what it
/// acknowledges (it ends when the writer does).
fn start_writer(
    dir: &Path,
    round: u32,
    acked: Arc<Mutex<Acked>>,
) -> (Child, std::thread::JoinHandle<()>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("posix/power_cut_writer.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(dir)
        .arg(round.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start power_cut_writer.py");
    let out = child.stdout.take().expect("the writer's stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut a = acked.lock().unwrap();
            match line.split(' ').collect::<Vec<_>>()[..] {
                ["ack", name, len] => a.files.push((name.into(), len.parse().unwrap())),
                ["synced", tag] => a.synced = Some(tag.into()),
                ["txn", db, n] => a.txns.push((db.into(), n.parse().unwrap())),
                ["scattered", hex] => a.scattered = Some(hex.into()),
                _ => panic!("the writer said {line:?}"),
            }
        }
    });
    (child, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_of_every_node_loses_no_closed_file() {
    // Snapshots and log purges every few dozen entries, so that the cuts
    // also meet a state machine restored from a snapshot.
    let mut cluster =
        Cluster::start_on_lazy_disks(3, &["--snapshot-logs", "40", "--keep-logs", "5"]).await;
    let servers = format!("backup_servers={},{}", cluster.addr(1), cluster.addr(2));
    let acked: Arc<Mutex<Acked>> = Arc::default();
    for round in 0..2u32 {
        let mount = Mount::new(&cluster, 0, &servers).await;
        let (mut writer, reader) = start_writer(&mount.path, round, acked.clone());
        // Cut while all four kinds of writes run, once each has made progress.
        let before = acked.lock().unwrap().files.len();
        wait_until(Duration::from_secs(60), "uploads before the cut", || {
            let (n, v, t, sc) = {
                let a = acked.lock().unwrap();
                let db = format!("cut-{round}.db");
                let t = a.txns.iter().filter(|(d, _)| *d == db).count();
                (a.files.len(), a.synced.clone(), t, a.scattered.is_some())
            };
            async move {
                let versioned = v
                    .as_ref()
                    .is_some_and(|v| v.starts_with(&format!("v{round}-")));
                if n >= before + 40 && versioned && t >= 3 && sc {
                    Ok(())
                } else {
                    Err(format!(
                        "{} uploads, version {v:?}, {t} transactions, scattered file fsynced: {sc}",
                        n - before
                    ))
                }
            }
        })
        .await;
        println!(
            "--- power cut {} after {} acknowledged uploads",
            round + 1,
            acked.lock().unwrap().files.len()
        );
        cluster.power_cut();
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster.wait_healthy(Duration::from_secs(60)).await;
        let rewritten: Vec<f64> = (0..3)
            .map(|i| quizfs_tests::node_metric(&cluster, i, "quizfs_carried_rewritten_chunks"))
            .collect();
        println!(
            "--- chunks carried in commits that start-up wrote again from the log: {rewritten:?}"
        );
        // The writer finishes the operation in progress against the
        // restarted cluster (or sees it fail), then stops.
        drop(writer.stdin.take());
        let status = writer.wait().expect("wait for the writer");
        assert!(status.success(), "the writer failed: {status}");
        reader.join().expect("the writer's reader thread");
        drop(mount);

        let check = Mount::new(&cluster, 1, &servers).await;
        let (files, synced) = {
            let a = acked.lock().unwrap();
            (
                a.files.clone(),
                a.synced.clone().expect("a version was fsynced"),
            )
        };
        let mut lost = Vec::new();
        for (name, len) in &files {
            match std::fs::read(check.join(name)) {
                Ok(got) if got == content(name, *len) => {}
                Ok(got) => lost.push(format!("{name}: {} bytes, not its content", got.len())),
                Err(e) => lost.push(format!("{name}: {e}")),
            }
        }
        assert!(
            lost.is_empty(),
            "after power cut {}: {} of {} acknowledged uploads lost or damaged: {:?}",
            round + 1,
            lost.len(),
            files.len(),
            &lost[..lost.len().min(10)]
        );
        let got = std::fs::read(check.join("versioned.bin")).expect("read versioned.bin");
        let (prefix, last) = synced.rsplit_once('-').expect("a version tag");
        let last: u64 = last.parse().expect("a version number");
        let version = (last..last + 4)
            .map(|v| format!("{prefix}-{v}"))
            .find(|tag| got == content(tag, 64 << 10));
        assert!(
            version.is_some() || got.is_empty(),
            "versioned.bin holds neither {synced} (fsynced), a later version, nor nothing ({} bytes)",
            got.len()
        );
        println!(
            "--- after power cut {}: all {} acknowledged uploads intact; versioned.bin is {} ({synced} fsynced)",
            round + 1,
            files.len(),
            version.as_deref().unwrap_or("empty")
        );
        let db = format!("cut-{round}.db");
        let txns: Vec<String> = acked
            .lock()
            .unwrap()
            .txns
            .iter()
            .filter(|(d, _)| *d == db)
            .map(|(_, n)| n.to_string())
            .collect();
        assert!(
            !txns.is_empty(),
            "no SQLite transaction committed before the cut"
        );
        let path = check.join(&db).display().to_string();
        let mut args = vec!["verify", path.as_str()];
        args.extend(txns.iter().map(String::as_str));
        print!("{}", quizfs_tests::run_script("sqlite_crash.py", &args));
        let hex = acked.lock().unwrap().scattered.take().expect("scattered");
        let path = check.join(&format!("scattered-{round}.bin"));
        let path = path.display().to_string();
        print!(
            "{}",
            quizfs_tests::run_script("power_cut_writer.py", &["sha256", &path, &hex])
        );
        let snapshots = cluster
            .lazy_disks
            .iter()
            .filter(|d| d.backing.join("snapshots/current.snap").exists())
            .count();
        assert!(snapshots > 0, "no node's disk holds a snapshot");
    }
}
