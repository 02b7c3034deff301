//! Elastic membership: nodes added, drained and replaced while a mount
//! keeps uploading, with every chunk on exactly R = 3 of the members'
//! disks afterwards, never fewer than 2 copies during a drain, and every
//! file read back byte for byte. Also the refusals: a remove that would
//! leave fewer nodes than copies, a node that was not admitted, and a
//! node whose certificate is not of the cluster's CA.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quizfs::client::ClusterClient;
use quizfs_proto::{ChunkHash, ROOT_INO, placement::REPLICAS};
use quizfs_tests::{Cluster, Mount, Writer, bin, chunk_hashes, pattern, verify_files, wait_until};

/// One acknowledged upload through the mount: path, seed, length.
type Upload = (PathBuf, u64, usize);

/// Uploads through a mount until stopped: mostly 100 KiB images (carried
/// in their commit), every fourth 600 KiB (chunk uploads to the holders).
/// Any failed call is recorded and fails the test.
struct Load {
    done: Arc<Mutex<Vec<Upload>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(dir: &Path, prefix: &str) -> Self {
        let done = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, e, s) = (done.clone(), errors.clone(), stop.clone());
        let (dir, prefix) = (dir.to_path_buf(), prefix.to_string());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let path = dir.join(format!("{prefix}{i:05}.jpg"));
                let len = if i % 4 == 3 { 600 * 1024 } else { 100 * 1024 };
                let seed = 7000 + i;
                match std::fs::write(&path, pattern(seed, len)) {
                    Ok(()) => d.lock().unwrap().push((path, seed, len)),
                    Err(err) => e.lock().unwrap().push(format!("{}: {err}", path.display())),
                }
                i += 1;
            }
        });
        Self {
            done,
            errors,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.done.lock().unwrap().len()
    }

    async fn wait_more(&self, n: usize) {
        let target = self.count() + n;
        wait_until(Duration::from_secs(120), "more uploads", || async {
            let errors = self.errors.lock().unwrap().clone();
            assert!(errors.is_empty(), "failed uploads: {errors:?}");
            let c = self.count();
            if c >= target {
                Ok(())
            } else {
                Err(format!("{c} of {target}"))
            }
        })
        .await
    }

    fn stop(mut self) -> Vec<Upload> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the load thread did not panic");
        }
        let errors = self.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "failed uploads: {errors:?}");
        println!("uploads: {} acknowledged, 0 failed", self.count());
        self.done.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `quizfs ARGS` with the cluster's certificate: exit code, stdout
/// and stderr.
fn cli(cluster: &Cluster, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("quizfs"))
        .args(args)
        .args(cluster.cli_tls_args())
        .output()
        .expect("run quizfs");
    let r = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!("quizfs {}: exit {}\n{}{}", args.join(" "), r.0, r.1, r.2);
    r
}

/// Starts a new node through `storaged --join` and admits it with
/// `quizfs node add`; returns its index.
fn add_node(cluster: &mut Cluster) -> usize {
    let i = cluster.new_node(true);
    cluster.spawn(i);
    let (addr, server) = (cluster.addr(i), cluster.addr(0));
    let (code, out, _) = cli(
        cluster,
        &["node", "add", &addr, "--server", &server, "--wait", "120"],
    );
    assert_eq!(code, 0, "node add: {out}");
    assert!(out.contains("is a member"), "{out}");
    i
}

/// The chunk hashes of every upload (inode from the mount's stat).
async fn hashes_of(client: &ClusterClient, files: &[Upload]) -> Vec<ChunkHash> {
    let mut out = Vec::new();
    for (path, _, _) in files {
        let ino = std::fs::metadata(path).expect("stat an upload").ino();
        out.extend(chunk_hashes(client, ino).await);
    }
    out
}

/// For each hash, which of `members` hold a good copy on disk.
fn copies(cluster: &Cluster, members: &[usize], hashes: &[ChunkHash]) -> Vec<Vec<usize>> {
    hashes
        .iter()
        .map(|h| {
            members
                .iter()
                .copied()
                .filter(|i| cluster.has_good_chunk(*i, h))
                .collect()
        })
        .collect()
}

/// Waits until every hash is on exactly R (three) of `members` and (with
/// `settled`) no member has anything left to fetch or delete; returns the
/// chunks each member holds.
async fn wait_placed(
    cluster: &Cluster,
    members: &[usize],
    hashes: &[ChunkHash],
    settled: bool,
) -> HashMap<usize, usize> {
    wait_copies(cluster, members, hashes, REPLICAS, settled).await
}

/// [`wait_placed`] for `r` copies.
async fn wait_copies(
    cluster: &Cluster,
    members: &[usize],
    hashes: &[ChunkHash],
    r: usize,
    settled: bool,
) -> HashMap<usize, usize> {
    wait_until(
        Duration::from_secs(180),
        &format!("every chunk on exactly {r} members"),
        || async {
            let c = copies(cluster, members, hashes);
            let wrong = c.iter().filter(|h| h.len() != r).count();
            let mut busy = Vec::new();
            for &i in members.iter().filter(|_| settled) {
                match cluster.status(i).await {
                    Some(s) if s.heal_backlog == 0 && s.surplus == 0 => {}
                    s => busy.push((i, s.map(|s| (s.heal_backlog, s.surplus)))),
                }
            }
            if wrong == 0 && busy.is_empty() {
                let mut share = HashMap::new();
                for holders in &c {
                    for i in holders {
                        *share.entry(*i).or_insert(0) += 1;
                    }
                }
                Ok(share)
            } else {
                Err(format!(
                    "{wrong} of {} chunks not on exactly {r} members; busy (backlog, surplus): {busy:?}",
                    hashes.len()
                ))
            }
        },
    )
    .await
}

/// Reads every upload back through `mnt` and compares it byte for byte.
fn verify_uploads(mnt: &Path, files: &[Upload]) {
    for (path, seed, len) in files {
        let p = mnt.join(path.file_name().unwrap());
        let back = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        assert!(back == pattern(*seed, *len), "{} differs", p.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_from_three_to_five_nodes_under_uploads() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    let mount = Mount::new(&cluster, 0, "").await;
    let load = Load::start(&mount.path, "grow");
    load.wait_more(40).await;
    let a = add_node(&mut cluster);
    load.wait_more(20).await;
    let b = add_node(&mut cluster);
    load.wait_more(40).await;
    let files = load.stop();

    let (code, out, _) = cli(&cluster, &["status", &cluster.addr(0)]);
    assert_eq!(code, 0);
    for i in [a, b] {
        let line = out
            .lines()
            .find(|l| l.contains(&cluster.addr(i)))
            .unwrap_or_else(|| panic!("nas{} in status:\n{out}", i + 1));
        assert!(line.contains(" up ") && line.contains("learner"), "{line}");
    }
    assert_eq!(
        out.lines().filter(|l| l.contains("voter")).count(),
        3,
        "{out}"
    );

    let hashes = hashes_of(&client, &files).await;
    let members: Vec<usize> = (0..5).collect();
    let share = wait_placed(&cluster, &members, &hashes, true).await;
    println!(
        "chunks per node after the rebalance: {share:?} of {}",
        hashes.len()
    );
    // Each node's share is R/N of the chunks; sampling noise aside, the
    // new nodes hold their part.
    let expected = hashes.len() * REPLICAS / members.len();
    for i in [a, b] {
        let got = share.get(&i).copied().unwrap_or(0);
        assert!(
            got * 2 >= expected,
            "nas{} holds {got} chunks, its share is about {expected}",
            i + 1
        );
    }
    verify_uploads(&mount.path, &files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_a_voter_under_uploads_while_another_node_dies() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    let _a = add_node(&mut cluster);
    let b = add_node(&mut cluster);
    let mount = Mount::new(&cluster, 0, "").await;
    let load = Load::start(&mount.path, "drain");
    load.wait_more(60).await;

    // The voter to remove: not the leader, so the leader stays put.
    let leader = cluster.leader().await.expect("a leader");
    let gone = (0..3).find(|i| *i != leader).unwrap();
    let (gone_addr, server) = (cluster.addr(gone), cluster.addr(leader));
    // The chunks written so far, once on their three holders' disks, are
    // sampled on every disk all along the drain. (A chunk carried in its
    // commit is durable in the Raft log before it reaches the disks, so a
    // newer one may be on no disk yet.)
    let before = load.done.lock().unwrap().clone();
    let before = hashes_of(&client, &before).await;
    wait_placed(&cluster, &(0..5).collect::<Vec<_>>(), &before, false).await;
    let sampling = Arc::new(AtomicBool::new(true));
    let lowest = Arc::new(Mutex::new((usize::MAX, 0usize)));
    let known: Arc<Mutex<Vec<ChunkHash>>> = Arc::new(Mutex::new(before));
    let sampler = {
        let dirs: Vec<PathBuf> = (0..5).map(|i| cluster.dir(i).to_path_buf()).collect();
        let (sampling, lowest, known) = (sampling.clone(), lowest.clone(), known.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let hashes = known.lock().unwrap().clone();
                for h in &hashes {
                    let hex = h.to_hex();
                    let n = dirs
                        .iter()
                        .filter(|d| {
                            d.join("chunks")
                                .join(&hex[0..2])
                                .join(&hex[2..4])
                                .join(&hex)
                                .exists()
                        })
                        .count();
                    let mut l = lowest.lock().unwrap();
                    l.0 = l.0.min(n);
                    l.1 += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let remover = {
        let args: Vec<String> = ["node", "remove", &gone_addr, "--server", &server]
            .iter()
            .map(|s| s.to_string())
            .chain(cluster.cli_tls_args())
            .collect();
        std::thread::spawn(move || {
            Command::new(bin("quizfs"))
                .args(&args)
                .output()
                .expect("run quizfs node remove")
        })
    };
    // Another node dies while the drain runs, and comes back.
    wait_until(Duration::from_secs(30), "the drain to start", || async {
        match cluster.status(gone).await {
            Some(s) if s.draining => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    println!("--- kill nas{} during the drain", b + 1);
    cluster.kill(b);
    load.wait_more(20).await;
    println!("--- restart nas{}", b + 1);
    cluster.spawn(b);
    let out = remover.join().expect("the remover thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node remove failed");
    assert!(stdout.contains("removed"), "{stdout}");
    load.wait_more(20).await;
    let files = load.stop();

    // A learner took the voter's place.
    let m = quizfs::client::membership::members_of(&cluster.addr(leader), client.options())
        .await
        .expect("members");
    assert!(m.members.iter().all(|x| x.addr != gone_addr), "{m:?}");
    assert_eq!(m.members.iter().filter(|x| x.voter).count(), 3, "{m:?}");

    let hashes = hashes_of(&client, &files).await;
    let members: Vec<usize> = (0..5).filter(|i| *i != gone).collect();
    wait_placed(&cluster, &members, &hashes, true).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("the sampler thread");
    let (low, samples) = *lowest.lock().unwrap();
    println!("fewest copies of a chunk seen during the drain: {low} ({samples} samples)");
    assert!(samples > 0 && low >= 2, "a chunk fell to {low} copies");
    verify_uploads(&mount.path, &files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_dead_voter_then_kill_the_leader_of_five() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    let a = add_node(&mut cluster);
    let b = add_node(&mut cluster);
    let writer = Writer::start(client.clone(), ROOT_INO, "rep");
    writer.wait_more(30, Duration::from_secs(60)).await;
    let leader = cluster.leader().await.expect("a leader");
    let dead = (0..3).find(|i| *i != leader).unwrap();
    println!("--- nas{} dies for good", dead + 1);
    cluster.kill(dead);
    writer.wait_more(10, Duration::from_secs(60)).await;

    let fresh = cluster.new_node(true);
    cluster.spawn(fresh);
    let (old, new, server) = (
        cluster.addr(dead),
        cluster.addr(fresh),
        cluster.addr(leader),
    );
    let (code, out, _) = cli(
        &cluster,
        &[
            "node", "replace", &old, &new, "--server", &server, "--wait", "120",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let m = quizfs::client::membership::members_of(&server, client.options())
        .await
        .expect("members");
    assert!(m.members.iter().all(|x| x.addr != old), "{m:?}");
    assert!(
        m.members.iter().any(|x| x.addr == new && x.voter),
        "the replacement takes the dead voter's place: {m:?}"
    );
    writer.wait_more(10, Duration::from_secs(60)).await;

    println!("--- kill the leader of five, nas{}", leader + 1);
    let before = writer.count();
    let t = Instant::now();
    cluster.kill(leader);
    writer.wait_more(20, Duration::from_secs(60)).await;
    let (longest, files) = writer.stop().await;
    println!(
        "pause_max_ms with five nodes: {} ({} writes in {:?} after the kill)",
        longest.as_millis(),
        files.len() - before,
        t.elapsed()
    );
    // The same bound as the three-node leader kill's pause.
    assert!(longest < Duration::from_secs(5), "pause {longest:?}");
    verify_files(&client, &files).await;
    cluster.spawn(leader);
    let inodes: Vec<u64> = files.iter().map(|(_, ino, _)| *ino).collect();
    let mut hashes = Vec::new();
    for ino in inodes {
        hashes.extend(chunk_hashes(&client, ino).await);
    }
    let members = [leader, 3 - leader - dead, a, b, fresh];
    let share = wait_placed(&cluster, &members, &hashes, true).await;
    println!("chunks per node: {share:?} of {}", hashes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_voters_when_asked_and_their_leader_killed() {
    let mut cluster = Cluster::start(3, &["--voters", "5"]).await;
    let client = cluster.client().await;
    add_node(&mut cluster);
    add_node(&mut cluster);
    let server = cluster.addr(0);
    let m = quizfs::client::membership::members_of(&server, client.options())
        .await
        .expect("members");
    assert_eq!(m.members.iter().filter(|x| x.voter).count(), 5, "{m:?}");
    let writer = Writer::start(client.clone(), ROOT_INO, "five");
    writer.wait_more(20, Duration::from_secs(60)).await;
    // Two of five down: a majority of three still commits.
    let leader = cluster.leader().await.expect("a leader");
    let other = (0..5).find(|i| *i != leader).unwrap();
    println!(
        "--- kill nas{} and then the leader nas{}",
        other + 1,
        leader + 1
    );
    cluster.kill(other);
    writer.wait_more(10, Duration::from_secs(60)).await;
    cluster.kill(leader);
    writer.wait_more(20, Duration::from_secs(60)).await;
    let (longest, files) = writer.stop().await;
    println!(
        "pause_max_ms with five voters, two killed: {}",
        longest.as_millis()
    );
    assert!(longest < Duration::from_secs(5), "pause {longest:?}");
    verify_files(&client, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_when_asked_and_the_leader_of_three_removed() {
    let cluster = Cluster::start(3, &["--replicas", "2"]).await;
    let client = cluster.client().await;
    let mount = Mount::new(&cluster, 0, "").await;
    let load = Load::start(&mount.path, "two");
    load.wait_more(40).await;
    let files = load.stop();
    let (code, out, _) = cli(&cluster, &["status", &cluster.addr(0)]);
    assert_eq!(code, 0);
    assert!(out.contains("copies 2"), "{out}");
    let hashes = hashes_of(&client, &files).await;
    let all: Vec<usize> = (0..3).collect();
    wait_copies(&cluster, &all, &hashes, 2, false).await;
    // Two copies on three nodes: one node may go, and its chunks move;
    // the leader itself, which hands over once the change is committed.
    let gone = cluster.leader().await.expect("a leader");
    let server = cluster.addr((gone + 1) % 3);
    let gone_addr = cluster.addr(gone);
    let (code, out, _) = cli(
        &cluster,
        &["node", "remove", &gone_addr, "--server", &server],
    );
    assert_eq!(code, 0, "{out}");
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != gone).collect();
    wait_copies(&cluster, &rest, &hashes, 2, false).await;
    let m = quizfs::client::membership::members_of(&server, client.options())
        .await
        .expect("members");
    assert!(m.members.iter().all(|x| x.addr != gone_addr), "{m:?}");
    // Now the last two cannot shrink further.
    let other = rest[0];
    let (code, _, err) = cli(
        &cluster,
        &["node", "remove", &cluster.addr(other), "--server", &server],
    );
    assert_ne!(code, 0);
    assert!(err.contains("would leave 1 nodes for 2 copies"), "{err}");
    verify_uploads(&mount.path, &files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writes_each_chunk_to_its_holders_only() {
    // Healers that never scan: every copy on disk is one the client put.
    let mut cluster = Cluster::start(3, &["--heal-interval-ms", "3600000"]).await;
    add_node(&mut cluster);
    add_node(&mut cluster);
    let client = cluster.client().await;
    let server = cluster.addr(0);
    wait_until(
        Duration::from_secs(10),
        "the client to know 5 nodes",
        || async {
            match client.nodes().len() {
                5 => Ok(()),
                n => Err(format!("{n}")),
            }
        },
    )
    .await;
    let m = quizfs::client::membership::members_of(&server, client.options())
        .await
        .expect("members");
    let ids: Vec<u64> = m.members.iter().map(|x| x.id).collect();
    let index = |id: u64| {
        let addr = &m.members.iter().find(|x| x.id == id).unwrap().addr;
        (0..5).find(|i| cluster.addr(*i) == *addr).unwrap()
    };
    let mut hashes = Vec::new();
    for i in 0..8u64 {
        // Past the inline limit: each file's chunk is uploaded, not
        // carried in its commit.
        let attr = client
            .create_file(
                ROOT_INO,
                format!("big{i}").as_bytes(),
                &pattern(50 + i, 1 << 20),
            )
            .await
            .expect("write");
        hashes.extend(chunk_hashes(&client, attr.ino).await);
    }
    // A majority of the holders has each chunk when the write returns;
    // the third upload finishes in the background.
    wait_until(
        Duration::from_secs(30),
        "every chunk on its three holders",
        || async {
            for h in &hashes {
                let mut want: Vec<usize> = quizfs_proto::placement::holders(h, &ids, REPLICAS)
                    .into_iter()
                    .map(index)
                    .collect();
                want.sort();
                let got: Vec<usize> = (0..5).filter(|i| cluster.has_good_chunk(*i, h)).collect();
                if got != want {
                    return Err(format!("{}: on {got:?}, holders {want:?}", h.to_hex()));
                }
            }
            Ok(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_reason() {
    let mut cluster = Cluster::start(3, &[]).await;
    let server = cluster.addr(0);
    // Three nodes hold three copies: none can go.
    let victim = cluster.addr(2);
    let (code, _, err) = cli(&cluster, &["node", "remove", &victim, "--server", &server]);
    assert_ne!(code, 0);
    assert!(
        err.contains("would leave 2 nodes for 3 copies"),
        "the refusal says why: {err}"
    );
    let (code, _, err) = cli(
        &cluster,
        &["node", "remove", "127.0.0.99:1", "--server", &server],
    );
    assert_ne!(code, 0);
    assert!(err.contains("not a member"), "{err}");

    // A node that was not admitted waits, and says what to run.
    let i = cluster.new_node(true);
    cluster.spawn(i);
    let addr = cluster.addr(i);
    wait_until(
        Duration::from_secs(30),
        "the refusal in its log",
        || async {
            let log = cluster.log_tail(i, 50);
            if log.contains("not admitted") && log.contains("quizfs node add") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
    let (code, out, _) = cli(
        &cluster,
        &["node", "add", &addr, "--server", &server, "--wait", "120"],
    );
    assert_eq!(code, 0, "{out}");
    // Repeating it changes nothing.
    let (code, out, _) = cli(&cluster, &["node", "add", &addr, "--server", &server]);
    assert_eq!(code, 0);
    assert!(out.contains("is a member"), "{out}");

    // A node whose certificate another CA signed never joins.
    let j = cluster.new_node(false);
    cluster.spawn(j);
    let foreign = cluster.addr(j);
    let (code, out, _) = cli(
        &cluster,
        &["node", "add", &foreign, "--server", &server, "--wait", "10"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("has not joined"), "{out}");
    let log = cluster.log_tail(j, 80);
    println!("the foreign node's log:\n{log}");
    assert!(
        log.to_lowercase().contains("certificate"),
        "the foreign node's log names the certificate"
    );
    let m = quizfs::client::membership::members_of(&server, cluster.client().await.options())
        .await
        .expect("members");
    assert_eq!(m.members.len(), 4, "{m:?}");
}
