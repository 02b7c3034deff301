//! The integration tests' helpers: the cluster harness shared with the
//! benchmarks (`quizfs_bench::harness`, re-exported here), test content
//! (patterns, hashes), a client-level writer, and checks that files read
//! back and that a node holds every chunk.

// Test code: a poisoned lock or a failed call is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use quizfs::client::ClusterClient;
pub use quizfs_bench::harness::*;
use quizfs_proto::ChunkHash;

/// Deterministic pseudo-random bytes (xorshift), for test content: the same
/// generator as the benchmark load's uploads.
pub use quizfs_bench::load::content as pattern;

/// The POSIX errno a call failed with (it must have failed with one).
pub fn errno<T: std::fmt::Debug>(r: Result<T, quizfs::client::ClientError>) -> i32 {
    match r {
        Err(quizfs::client::ClientError::Posix { errno, .. }) => errno,
        other => panic!("expected a POSIX error, got {other:?}"),
    }
}

/// The names in a directory, in order.
pub async fn names(c: &ClusterClient, dir: u64) -> Vec<String> {
    c.readdir_all(dir)
        .await
        .expect("readdir")
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

/// The chunk hashes of a file, from its layout.
pub async fn chunk_hashes(client: &ClusterClient, ino: u64) -> Vec<ChunkHash> {
    let (_, extents) = client.layout(ino).await.expect("layout");
    let mut hashes: Vec<ChunkHash> = extents.iter().map(|(_, p)| p.src).collect();
    hashes.dedup();
    hashes
}

/// An endless-looking stream of pseudo-random bytes of a set length, for
/// writing large files without holding them in memory.
#[derive(Debug)]
pub struct PatternReader {
    remaining: u64,
    x: u64,
    hasher: blake3::Hasher,
}

impl PatternReader {
    /// `len` bytes from `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            remaining: len,
            x: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            hasher: blake3::Hasher::new(),
        }
    }

    /// Hash of everything read so far.
    pub fn hash(&self) -> blake3::Hash {
        self.hasher.finalize()
    }
}

impl tokio::io::AsyncRead for PatternReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.remaining) as usize / 8 * 8;
        let n = if n == 0 {
            (buf.remaining() as u64).min(self.remaining) as usize
        } else {
            n
        };
        let mut out = vec![0u8; n];
        for chunk in out.chunks_mut(8) {
            let mut x = self.x;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.x = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        self.hasher.update(&out);
        self.remaining -= n as u64;
        buf.put_slice(&out);
        std::task::Poll::Ready(Ok(()))
    }
}

/// A writer that only hashes what it is given.
#[derive(Debug, Default)]
pub struct HashSink {
    /// The running hash.
    pub hasher: blake3::Hasher,
}

impl tokio::io::AsyncWrite for HashSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.hasher.update(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A writer that keeps writing 100 KiB files until stopped, recording each
/// acknowledged one; any failed call fails the test.
#[derive(Debug)]
pub struct Writer {
    /// (name, inode, seed) of every acknowledged file.
    pub done: std::sync::Arc<std::sync::Mutex<Vec<(String, u64, u64)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl Writer {
    /// Starts writing through `client` into directory `dir`.
    pub fn start(client: ClusterClient, dir: u64, prefix: &str) -> Self {
        let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, s, prefix) = (done.clone(), stop.clone(), prefix.to_string());
        let task = tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut i = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("{prefix}{i:05}.jpg");
                let seed = 1000 + i;
                let t = Instant::now();
                let attr = client
                    .create_file(dir, name.as_bytes(), &pattern(seed, 100 * 1024))
                    .await
                    .unwrap_or_else(|e| panic!("acknowledged write {name} failed: {e}"));
                longest = longest.max(t.elapsed());
                d.lock().unwrap().push((name, attr.ino, seed));
                i += 1;
            }
            longest
        });
        Self { done, stop, task }
    }

    /// Files acknowledged so far.
    pub fn count(&self) -> usize {
        self.done.lock().unwrap().len()
    }

    /// Waits until `n` more files than now are acknowledged.
    pub async fn wait_more(&self, n: usize, timeout: Duration) {
        let target = self.count() + n;
        wait_until(
            timeout,
            &format!("{n} more acknowledged writes"),
            || async {
                let c = self.count();
                if c >= target {
                    Ok(())
                } else {
                    Err(format!("{c} of {target}"))
                }
            },
        )
        .await
    }

    /// Stops and returns the longest single write and every file written.
    pub async fn stop(self) -> (Duration, Vec<(String, u64, u64)>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let longest = self.task.await.expect("the writer task did not panic");
        let done = self.done.lock().unwrap().clone();
        (longest, done)
    }
}

/// Checks that every file reads back byte for byte.
pub async fn verify_files(client: &ClusterClient, files: &[(String, u64, u64)]) {
    for (name, ino, seed) in files {
        let back = client
            .read_file(*ino)
            .await
            .unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert!(back == pattern(*seed, 100 * 1024), "{name} differs");
    }
}

/// Waits until node `i` holds a good copy of every chunk of `inodes` and
/// reports no heal backlog.
pub async fn wait_node_has_all_chunks(
    cluster: &Cluster,
    client: &ClusterClient,
    i: usize,
    inodes: &[u64],
) {
    let mut hashes = Vec::new();
    for ino in inodes {
        hashes.extend(chunk_hashes(client, *ino).await);
    }
    wait_until(
        Duration::from_secs(60),
        &format!("nas{} to hold every chunk", i + 1),
        || async {
            let missing = hashes
                .iter()
                .filter(|h| !cluster.has_good_chunk(i, h))
                .count();
            let backlog = cluster.status(i).await.map(|s| s.heal_backlog);
            if missing == 0 && backlog == Some(0) {
                Ok(())
            } else {
                Err(format!(
                    "{missing} of {} missing, backlog {backlog:?}",
                    hashes.len()
                ))
            }
        },
    )
    .await
}

/// Runs a Python check script from `tests/posix/` with `args`; panics with
/// its output unless it exits 0. Returns its standard output.
pub fn run_script(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("posix")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `quizfs ARGS` against `cluster` (with its client certificate, or
/// `--insecure`): its exit code and standard output.
pub fn quizfs_cli(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("quizfs"))
        .args(args)
        .args(cluster.cli_tls_args())
        .output()
        .expect("run quizfs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The value of the unlabelled sample `name` in node `i`'s metrics.
pub fn node_metric(cluster: &Cluster, i: usize, name: &str) -> f64 {
    let (code, body) =
        quizfs_bench::nodestats::http_get(&cluster.metrics_addr(i), "/metrics").unwrap();
    assert_eq!(code, 200, "nas{}: /metrics {code}", i + 1);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} on nas{}", i + 1))
}
