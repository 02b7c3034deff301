//! `quizfs mount -f` processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Cluster, bin};

/// Whether `path` is a mount point now (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A `quizfs mount -f` process serving a mount point in its own temp dir.
/// Dropping it unmounts (lazily, so a busy mount cannot hang the test),
/// waits for the process, and kills it by PID if it does not end.
#[derive(Debug)]
pub struct Mount {
    /// The mount point.
    pub path: PathBuf,
    /// The client process.
    pub child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Mount {
    /// Mounts `SERVER:/nas` (SERVER = node `server` of `cluster`) with
    /// `options` (`-o`) and the cluster's client certificate, in the
    /// foreground, and waits until it is mounted.
    pub async fn new(cluster: &Cluster, server: usize, options: &str) -> Self {
        let tls = cluster.mount_tls_option();
        let options = if options.is_empty() {
            tls
        } else {
            format!("{options},{tls}")
        };
        Self::with_spec(&format!("{}:/nas", cluster.addr(server)), &options).await
    }

    /// Mounts `spec` with `options`, and waits until it is mounted.
    pub async fn with_spec(spec: &str, options: &str) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("quizfs-mnt-")
            .tempdir()
            .expect("create a temp dir");
        let path = tmp.path().join("mnt");
        std::fs::create_dir(&path).expect("create the mount point");
        let log = tmp.path().join("client.log");
        let mut cmd = Command::new(bin("quizfs"));
        cmd.arg("mount").arg(spec).arg(&path).arg("-f");
        if !options.is_empty() {
            cmd.arg("-o").arg(options);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("QUIZFS_MOUNT_LOG").unwrap_or_else(|_| "info,quizfs=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the client log"))
            .spawn()
            .expect("start quizfs mount");
        let mut m = Self {
            path,
            child: Some(child),
            log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&m.path) {
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("quizfs mount exited with {st}:\n{}", m.log_tail(20));
            }
            assert!(
                Instant::now() < deadline,
                "not mounted after 20 s:\n{}",
                m.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m
    }

    /// PID of the client process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// A path inside the mount.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The last lines of the client's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits (up to `timeout`) for the client process to exit after an
    /// unmount, returning its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let problems: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("WARN") || l.contains("ERROR") || l.contains("answered an error")
                })
                .collect();
            eprintln!(
                "----- client warnings, errors and error answers ({}) -----\n{}",
                self.path.display(),
                problems[problems.len().saturating_sub(40)..].join("\n")
            );
            eprintln!(
                "----- client log tail ({}) -----\n{}",
                self.path.display(),
                self.log_tail(40)
            );
        }
    }
}
