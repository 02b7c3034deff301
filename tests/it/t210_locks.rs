//! File locks across mounts: `flock`, `fcntl` byte ranges, OFD locks,
//! EDEADLK and EINTR from two mounts (`tests/posix/locks.py`); SQLite in
//! rollback-journal mode written from two mounts, taking turns through
//! its own locks; a leader killed while locks are held keeps them; a
//! mount frozen past the session timeout loses its locks to the other
//! mount within the lease and is told so when it comes back; a mount
//! SIGKILLed loses them the same way.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use quizfs_tests::{Cluster, Mount, node_metric, run_script, signal, wait_until};

/// The session timeout of the expiry tests.
const TIMEOUT_S: u64 = 3;
/// Transactions each of the two SQLite writers makes.
const SQLITE_TXNS: &str = "1250";

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("posix/locks.py")
}

/// `locks.py hold FILE` (a process holding an exclusive lock on FILE), or
/// another mode of the script that takes orders on its standard input.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Holder {
    fn start(file: &Path) -> Self {
        let mut h = Self::spawn("hold", file);
        assert_eq!(h.line(), "locked", "the holder did not get its lock");
        h
    }

    fn spawn(mode: &str, file: &Path) -> Self {
        let mut child = Command::new("python3")
            .arg(script())
            .arg(mode)
            .arg(file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdin, out }
    }

    /// Sends one order; returns the answer line.
    fn ask(&mut self, order: &str) -> String {
        writeln!(self.stdin, "{order}").unwrap();
        self.line()
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).unwrap();
        s.trim().to_string()
    }

    /// Locks the file again: "ok" or the errno's name.
    fn relock(&mut self) -> String {
        self.ask("relock")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A non-blocking exclusive lock attempt on `file`: "ok" or the errno name.
fn try_lock(file: &Path) -> String {
    run_script("locks.py", &["try", file.to_str().unwrap()])
        .trim()
        .to_string()
}

/// Waits (F_SETLKW) for an exclusive lock on `file`; the seconds waited.
fn take_lock(file: &Path, limit_s: u64) -> f64 {
    let out = run_script(
        "locks.py",
        &["take", file.to_str().unwrap(), &limit_s.to_string()],
    );
    out.trim().parse().unwrap()
}

/// Waits until node `i` counts some queued lock request (`some`), or none.
async fn await_waiters(cluster: &Cluster, i: usize, some: bool, what: &str) {
    wait_until(Duration::from_secs(20), what, || {
        let n = node_metric(cluster, i, "quizfs_lock_waiters");
        async move {
            if (n >= 1.0) == some {
                Ok(())
            } else {
                Err(format!("{n} waiting"))
            }
        }
    })
    .await;
}

fn path_of(m: &Mount) -> String {
    m.join("")
        .to_str()
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flock_fcntl_and_ofd_locks_hold_across_two_mounts() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let b = Mount::new(&cluster, 1, "").await;
    let (pa, pb) = (path_of(&a), path_of(&b));
    let metrics: Vec<String> = (0..3).map(|i| cluster.metrics_addr(i)).collect();
    let out = run_script("locks.py", &["flock", &pa, &pb, &metrics.join(",")]);
    print!("{out}");
    let out = run_script("locks.py", &["fcntl", &pa, &pb, &metrics.join(",")]);
    print!("{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_rollback_journal_mode_from_two_mounts_loses_nothing() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let b = Mount::new(&cluster, 1, "").await;
    let out = run_script(
        "locks.py",
        &["sqlite", &path_of(&a), &path_of(&b), SQLITE_TXNS],
    );
    print!("{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_survive_a_leader_kill_and_go_with_a_dead_or_frozen_mounts_session() {
    let timeout = format!("{TIMEOUT_S}s");
    let mut cluster = Cluster::start(3, &["--session-timeout", &timeout]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let b = Mount::new(&cluster, 1, "").await;
    std::fs::write(a.join("deploy.lock"), b"").unwrap();
    std::fs::write(a.join("cache.lock"), b"").unwrap();
    let mut holder = Holder::start(&a.join("deploy.lock"));
    assert_eq!(try_lock(&b.join("deploy.lock")), "EAGAIN");
    // A process on B waits for it through everything that follows.
    let mut waiter = Command::new("python3")
        .arg(script())
        .args(["take", b.join("deploy.lock").to_str().unwrap(), "120"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let waited_out = BufReader::new(waiter.stdout.take().unwrap());
    await_waiters(&cluster, 1, true, "B's wait queued").await;

    // The leader killed while the lock is held and B waits: the new
    // leader has the lock and B's queued request.
    let leader = cluster.leader().await.expect("a leader");
    cluster.kill(leader);
    let killed = Instant::now();
    wait_until(Duration::from_secs(30), "a new leader", || {
        let c = &cluster;
        async move { c.leader().await.ok_or_else(|| "none yet".to_string()) }
    })
    .await;
    assert_eq!(
        try_lock(&b.join("deploy.lock")),
        "EAGAIN",
        "the lock went with the leader"
    );
    println!(
        "lock held through a leader kill (new leader after {:.2} s)",
        killed.elapsed().as_secs_f64()
    );
    cluster.spawn(leader);
    assert_eq!(holder.relock(), "ok", "the holder still holds its lock");

    // Mount A frozen past the session timeout: B gets the lock within the
    // lease; A, thawed, is told its lock is gone.
    signal(a.pid(), libc::SIGSTOP);
    let frozen = Instant::now();
    let got = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let mut out = waited_out;
        out.read_line(&mut line).unwrap();
        let _ = waiter.wait();
        line
    });
    let got = tokio::time::timeout(Duration::from_secs(6 * TIMEOUT_S), got)
        .await
        .expect("B's waiter never got the frozen mount's lock")
        .unwrap();
    assert!(!got.trim().is_empty(), "B's waiter ended without the lock");
    let waited = frozen.elapsed().as_secs_f64();
    println!(
        "B's waiter, queued since before the leader kill, got the frozen mount's lock \
         {waited:.2} s after the freeze (session timeout {TIMEOUT_S} s)"
    );
    assert!(
        waited <= 2.0 * TIMEOUT_S as f64,
        "B waited {waited:.2} s for a lock whose mount was frozen"
    );
    signal(a.pid(), libc::SIGCONT);
    assert_eq!(
        holder.relock(),
        "ENOLCK",
        "a mount back from an expired session still believes in its lock"
    );
    let log = a.log_tail(400);
    assert!(
        log.contains("released by the cluster"),
        "the mount's log does not say why:\n{log}"
    );
    drop(holder);
    // Closed, the file can be locked afresh on A.
    let holder = Holder::start(&a.join("deploy.lock"));
    drop(holder);

    // Mount A SIGKILLed while a process holds a lock through it.
    let holder = Holder::start(&a.join("cache.lock"));
    assert_eq!(try_lock(&b.join("cache.lock")), "EAGAIN");
    signal(a.pid(), libc::SIGKILL);
    let waited = take_lock(&b.join("cache.lock"), 6 * TIMEOUT_S);
    println!("B got the killed mount's lock after {waited:.2} s");
    assert!(
        waited <= 2.0 * TIMEOUT_S as f64,
        "B waited {waited:.2} s for a lock whose mount was killed"
    );
    drop(holder);
    // Nothing is left in the lock tables: every lock was released by its
    // close or went with its session.
    let leader = cluster.leader().await.expect("a leader");
    wait_until(Duration::from_secs(10), "empty lock tables", || {
        let now = (
            node_metric(&cluster, leader, "quizfs_file_locks"),
            node_metric(&cluster, leader, "quizfs_lock_waiters"),
        );
        async move {
            if now == (0.0, 0.0) {
                Ok(())
            } else {
                Err(format!("(held, waiting) {now:?}"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_fails_leaves_no_lock_behind_once_its_file_is_closed() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    // B gives up on the cluster after 2 s.
    let b = Mount::new(&cluster, 1, "op_timeout=2").await;
    std::fs::write(a.join("stray.lock"), b"").unwrap();
    let holder = Holder::start(&a.join("stray.lock"));
    let mut waiter = Holder::spawn("waitfail", &b.join("stray.lock"));
    assert_eq!(waiter.line(), "waiting");
    await_waiters(&cluster, 2, true, "B's request queued").await;
    // Two nodes frozen: B's wait fails, its request stays queued.
    let leader = cluster.leader().await.expect("a leader");
    let other = (0..3).find(|&i| i != leader && i != 2).unwrap();
    cluster.freeze(leader);
    cluster.freeze(other);
    let failed = waiter.line();
    cluster.thaw(leader);
    cluster.thaw(other);
    println!("B's wait with two nodes frozen: {failed}");
    assert_ne!(failed, "ok", "the wait could not have been granted");
    // A lets go: the queued request of B's failed wait is granted, and
    // holds the lock while B keeps the file open.
    drop(holder);
    await_waiters(&cluster, 2, false, "the stray request granted").await;
    assert_eq!(try_lock(&a.join("stray.lock")), "EAGAIN");
    // B closes the file: the lock goes with it.
    assert_eq!(waiter.ask("close"), "closed");
    assert_eq!(
        try_lock(&a.join("stray.lock")),
        "ok",
        "a lock granted after its wait failed outlived the file's close"
    );
}
