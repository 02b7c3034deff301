//! Close-to-open across mounts while the Raft leader changes: a writer on
//! one mount publishes numbered versions of two files (one overwritten in
//! place, one replaced by rename), readers on two other mounts open, read
//! and close them in a loop, and one clock (all mounts are on this machine)
//! orders every event. A read is stale when it shows a version older than
//! the newest one whose `close` returned before the read's `open` started
//! (for the renamed file: whose `rename` returned an entry timeout before).
//! The leader is killed and restarted, frozen past the election timeout,
//! cut off the network and restored, and a follower is frozen; every case
//! must end with no stale, torn or failed read and no failed write.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quizfs_bench::load::close;
use quizfs_tests::{Cluster, Mount, wait_until};

/// Size of each published version.
const SIZE: usize = 64 << 10;
/// Blocks per version; each starts with the version and block number.
const BLOCK: usize = 4096;
/// The mounts' entry timeout (the default): how long a name may still
/// lead to the file it named before a rename.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(1);
/// Versions the writer must publish during each fault and after it.
const VERSIONS_PER_PHASE: u64 = 40;

/// The two files, by how they are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    InPlace,
    Renamed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::InPlace => "in-place",
            Kind::Renamed => "renamed",
        }
    }
}

/// The content of version `v`: every block names the version and itself
/// and is filled with a byte that depends on both, so a read mixing
/// versions or blocks is seen.
fn content(v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE);
    for b in 0..SIZE / BLOCK {
        let head = format!("v{v:010} b{b:04}\n");
        out.extend_from_slice(head.as_bytes());
        let fill = ((v * 31 + b as u64) % 251) as u8;
        out.resize((b + 1) * BLOCK, fill);
    }
    out
}

/// The version a read shows, or why it is torn.
fn version_of(data: &[u8]) -> Result<u64, String> {
    if data.len() != SIZE {
        return Err(format!("{} bytes", data.len()));
    }
    let v: u64 = std::str::from_utf8(&data[1..11])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no version in {:?}", &data[..16]))?;
    if data != content(v).as_slice() {
        return Err(format!("starts as v{v} but mixes other content"));
    }
    Ok(v)
}

/// What the check found: counts, and the first few of each kind.
#[derive(Debug, Default)]
struct Found {
    reads: u64,
    count: [u64; 3],
    samples: [Vec<String>; 3],
}

/// Kinds of bad outcome, indexes of `Found`.
const STALE: usize = 0;
const TORN: usize = 1;
const ERROR: usize = 2;

/// The shared record: versions as their `close` or `rename` returned.
#[derive(Debug)]
struct Shared {
    start: Instant,
    stop: AtomicBool,
    published: [Mutex<Vec<(u64, Instant)>>; 2],
    written: AtomicU64,
    found: Mutex<Found>,
    /// The current phase, for the report.
    phase: Mutex<String>,
    /// The longest publish of each phase (a pause the writer saw).
    longest: Mutex<Vec<(String, Duration)>>,
}

impl Shared {
    fn at(&self, t: Instant) -> String {
        format!("{:.3}s", t.duration_since(self.start).as_secs_f64())
    }

    fn note(&self, kind: usize, msg: String) {
        let phase = self.phase.lock().unwrap().clone();
        let mut f = self.found.lock().unwrap();
        f.count[kind] += 1;
        if f.samples[kind].len() < 20 {
            f.samples[kind].push(format!("[{phase}] {msg}"));
        }
    }

    /// The newest version of `kind` published before `t`, and when.
    fn newest_before(&self, kind: Kind, t: Instant) -> Option<(u64, Instant)> {
        let p = self.published[kind as usize].lock().unwrap();
        let i = p.partition_point(|&(_, at)| at < t);
        i.checked_sub(1).map(|i| p[i])
    }
}

fn publish(dir: &Path, kind: Kind, v: u64) -> std::io::Result<()> {
    let data = content(v);
    match kind {
        Kind::InPlace => {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.join(kind.name()))?;
            f.write_all(&data)?;
            close(f)
        }
        Kind::Renamed => {
            let tmp = dir.join(format!(".tmp-{v}"));
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            close(f)?;
            std::fs::rename(&tmp, dir.join(kind.name()))
        }
    }
}

fn writer(shared: Arc<Shared>, dir: PathBuf) {
    let mut v = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        v += 1;
        for kind in [Kind::InPlace, Kind::Renamed] {
            // A failed publish is retried with the same version: the
            // checker counts the failure, and the order stays one clock.
            let began = Instant::now();
            loop {
                match publish(&dir, kind, v) {
                    Ok(()) => break,
                    Err(e) => shared.note(ERROR, format!("write {} v{v}: {e}", kind.name())),
                }
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            let now = Instant::now();
            shared.published[kind as usize]
                .lock()
                .unwrap()
                .push((v, now));
            let took = now - began;
            let phase = shared.phase.lock().unwrap().clone();
            let mut longest = shared.longest.lock().unwrap();
            match longest.last_mut() {
                Some((p, d)) if *p == phase => *d = (*d).max(took),
                _ => longest.push((phase, took)),
            }
        }
        shared.written.store(v, Ordering::Relaxed);
    }
}

fn read_whole(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut data = Vec::with_capacity(SIZE);
    f.read_to_end(&mut data)?;
    close(f)?;
    Ok(data)
}

fn reader(shared: Arc<Shared>, dir: PathBuf, who: String) {
    // Nothing to read before the first version exists.
    while shared.written.load(Ordering::Relaxed) == 0 {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::yield_now();
    }
    let mut last = [0u64; 2];
    while !shared.stop.load(Ordering::Relaxed) {
        for kind in [Kind::InPlace, Kind::Renamed] {
            let opened = Instant::now();
            let got = read_whole(&dir.join(kind.name()));
            let done = Instant::now();
            shared.found.lock().unwrap().reads += 1;
            let v = match got {
                Err(e) => {
                    shared.note(
                        ERROR,
                        format!("{who} read {} at {}: {e}", kind.name(), shared.at(opened)),
                    );
                    continue;
                }
                Ok(data) => match version_of(&data) {
                    Err(why) => {
                        shared.note(
                            TORN,
                            format!("{who} read {} at {}: {why}", kind.name(), shared.at(opened)),
                        );
                        continue;
                    }
                    Ok(v) => v,
                },
            };
            let bound = match kind {
                Kind::InPlace => opened,
                Kind::Renamed => opened.checked_sub(ENTRY_TIMEOUT).unwrap_or(shared.start),
            };
            if let Some((newest, at)) = shared.newest_before(kind, bound) {
                if v < newest {
                    shared.note(
                        STALE,
                        format!(
                            "{who} read {} v{v} (open at {}, read done at {}; \
                             previous read v{}) when v{newest}'s publish returned at {}, \
                             {:.1} ms before the open",
                            kind.name(),
                            shared.at(opened),
                            shared.at(done),
                            last[kind as usize],
                            shared.at(at),
                            (bound - at).as_secs_f64() * 1e3,
                        ),
                    );
                }
            }
            last[kind as usize] = v;
        }
    }
}

/// A writer on one mount and two readers on each of the others.
struct Checker {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Checker {
    fn start(write_dir: &Path, read_dirs: &[PathBuf]) -> Self {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            published: [Mutex::default(), Mutex::default()],
            written: AtomicU64::new(0),
            found: Mutex::default(),
            phase: Mutex::new("start".into()),
            longest: Mutex::default(),
        });
        let mut threads = Vec::new();
        let (s, d) = (shared.clone(), write_dir.to_path_buf());
        threads.push(std::thread::spawn(move || writer(s, d)));
        for (m, dir) in read_dirs.iter().enumerate() {
            for r in 0..2 {
                let (s, d) = (shared.clone(), dir.clone());
                let who = format!("mount{}/reader{r}", m + 2);
                threads.push(std::thread::spawn(move || reader(s, d, who)));
            }
        }
        Self { shared, threads }
    }

    fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Waits until the writer has published `n` more versions.
    async fn progress(&self, n: u64, what: &str) {
        let target = self.written() + n;
        wait_until(Duration::from_secs(60), what, || async {
            let w = self.written();
            if w >= target {
                Ok(())
            } else {
                Err(format!("at v{w} of v{target}"))
            }
        })
        .await;
    }

    fn phase(&self, name: &str) {
        println!(
            "{} v{}: {name}",
            self.shared.at(Instant::now()),
            self.written()
        );
        *self.shared.phase.lock().unwrap() = name.to_string();
    }

    fn stop(self) -> Found {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a checker thread panicked");
        }
        for (phase, d) in self.shared.longest.lock().unwrap().iter() {
            println!("longest publish during {phase}: {} ms", d.as_millis());
        }
        std::mem::take(&mut *self.shared.found.lock().unwrap())
    }
}

/// Stops the checker even when the test fails, so that the mounts can go.
struct Running(Option<Checker>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.shared.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// The leader, once one other than `not` is in place.
async fn new_leader(cluster: &Cluster, not: usize) -> usize {
    wait_until(Duration::from_secs(20), "a new leader", || async {
        match cluster.leader().await {
            Some(l) if l != not => Ok(l),
            other => Err(format!("leader {other:?}")),
        }
    })
    .await
}

/// The faults, each done and undone while the checker runs.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    FreezeLeader,
    FreezeFollower,
    CutLeader,
}

/// Does `fault`, waits for versions published through it, undoes it,
/// and waits for versions published after it.
async fn fault_phase(cluster: &mut Cluster, checker: &Checker, fault: Fault) {
    let (during, after) = match fault {
        Fault::KillLeader => ("leader SIGKILL", "killed leader restarted"),
        Fault::FreezeLeader => ("leader SIGSTOP", "frozen leader thawed"),
        Fault::FreezeFollower => ("follower SIGSTOP", "frozen follower thawed"),
        Fault::CutLeader => ("leader cut off", "cut leader restored"),
    };
    checker.phase(during);
    let leader = cluster.leader().await.expect("a leader");
    let node = match fault {
        Fault::FreezeFollower => (leader + 1) % 3,
        _ => leader,
    };
    match fault {
        Fault::KillLeader => cluster.kill(node),
        Fault::FreezeLeader | Fault::FreezeFollower => cluster.freeze(node),
        Fault::CutLeader => cluster.cut(node),
    }
    if !matches!(fault, Fault::FreezeFollower) {
        new_leader(cluster, node).await;
    }
    checker
        .progress(VERSIONS_PER_PHASE, &format!("versions during {during}"))
        .await;
    checker.phase(after);
    match fault {
        Fault::KillLeader => cluster.spawn(node),
        Fault::FreezeLeader | Fault::FreezeFollower => cluster.thaw(node),
        Fault::CutLeader => cluster.restore(node),
    }
    cluster.wait_healthy(Duration::from_secs(30)).await;
    checker
        .progress(VERSIONS_PER_PHASE, &format!("versions after {after}"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_to_open_holds_while_the_leader_changes() {
    let mut cluster = Cluster::start_in_netns(3, &[]).await;
    let mut mounts = Vec::new();
    for i in 0..3 {
        let backups: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| cluster.addr(j))
            .collect();
        mounts.push(
            Mount::new(
                &cluster,
                i,
                &format!("backup_servers={}", backups.join(",")),
            )
            .await,
        );
    }
    let dir = mounts[0].join("c2o");
    std::fs::create_dir(&dir).unwrap();
    let read_dirs: Vec<PathBuf> = mounts[1..].iter().map(|m| m.join("c2o")).collect();
    for d in &read_dirs {
        wait_until(
            Duration::from_secs(5),
            "the directory on the other mounts",
            || async {
                if d.is_dir() {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await;
    }
    println!("start: {:?}", std::time::SystemTime::now());
    let mut running = Running(Some(Checker::start(&dir, &read_dirs)));
    let checker = running.0.as_ref().unwrap();
    checker.phase("no fault");
    checker
        .progress(VERSIONS_PER_PHASE, "versions before any fault")
        .await;

    for fault in [
        Fault::KillLeader,
        Fault::FreezeLeader,
        Fault::FreezeFollower,
        Fault::CutLeader,
    ] {
        fault_phase(&mut cluster, checker, fault).await;
    }

    let written = checker.written();
    let found = running.0.take().unwrap().stop();
    let [stale, torn, errors] = found.count;
    println!(
        "close-to-open under leader changes: {written} versions of each file, {} reads, \
         {stale} stale, {torn} torn, {errors} errors",
        found.reads
    );
    for line in found.samples.iter().flatten() {
        println!("  {line}");
    }
    if let Ok(keep) = std::env::var("T67_LOGS") {
        std::fs::create_dir_all(&keep).unwrap();
        for (i, m) in mounts.iter().enumerate() {
            std::fs::write(format!("{keep}/mount{}.log", i + 1), m.log_tail(usize::MAX)).unwrap();
        }
        for i in 0..3 {
            std::fs::write(
                format!("{keep}/nas{}.log", i + 1),
                cluster.log_tail(i, usize::MAX),
            )
            .unwrap();
        }
    }
    assert!(found.reads > 1000, "only {} reads", found.reads);
    assert!(
        stale + torn + errors == 0,
        "{stale} stale, {torn} torn, {errors} failed (the first of each listed above)"
    );
}

/// What another descriptor of the file on the writer's mount does while
/// a version is half written, before it is closed.
#[derive(Debug, Clone, Copy)]
enum Other {
    /// Opened for reading and read.
    Reader,
    /// Wrote the version before and fsync'd it (its late release is
    /// what the kernel sends after a close, asynchronously).
    CommittedWriter,
    /// Opened for writing, wrote nothing.
    IdleWriter,
}

/// A close publishes only the writes of its own descriptor: while one
/// descriptor has cut the file with `open(O_TRUNC)` and written half of
/// the next version, closing any other descriptor of the file on that
/// mount (one that only read, one whose writes are committed, one that
/// wrote nothing) leaves the other mount reading the previous version
/// whole; the writer's own close publishes the new one whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_publishes_only_its_own_descriptors_writes() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let b = Mount::new(&cluster, 1, "").await;
    let seen = |v: u64, what: &str| {
        let got = read_whole(&b.join("f")).unwrap();
        assert_eq!(
            version_of(&got),
            Ok(v),
            "the other mount, {what}: expected v{v} whole"
        );
    };
    let path = a.join("f");
    std::fs::write(&path, content(1)).unwrap();
    seen(1, "after the first version");
    let mut v = 1;
    for other in [Other::Reader, Other::CommittedWriter, Other::IdleWriter] {
        let o = match other {
            Other::Reader => {
                let mut f = File::open(&path).unwrap();
                let mut data = Vec::new();
                f.read_to_end(&mut data).unwrap();
                assert_eq!(version_of(&data), Ok(v));
                f
            }
            Other::CommittedWriter => {
                v += 1;
                let mut f = OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all(&content(v)).unwrap();
                f.sync_all().unwrap();
                f
            }
            Other::IdleWriter => OpenOptions::new().write(true).open(&path).unwrap(),
        };
        seen(v, &format!("with a {other:?} open"));
        let mut w = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let next = content(v + 1);
        w.write_all(&next[..SIZE / 2]).unwrap();
        close(o).unwrap();
        seen(
            v,
            &format!("after a {other:?} closed while v{} was half written", v + 1),
        );
        w.write_all(&next[SIZE / 2..]).unwrap();
        close(w).unwrap();
        v += 1;
        seen(v, &format!("after the writer of v{v} closed"));
    }
}
