//! The harness that runs a real quizfs cluster on this machine, shared by
//! the integration tests and the failover benchmark: `storaged` processes
//! on 127.0.0.21.. (or each in its own network namespace, see [`Net`]),
//! each with its own data directory and log; faults by PID (SIGKILL,
//! SIGSTOP/SIGCONT, wipe, restart) and by link (cut, restore); `quizfs
//! mount -f` processes; and waits on conditions with a deadline that report
//! what they saw. Dropping a [`Cluster`] or a [`Mount`] ends its processes,
//! also when a test panics, and then prints the log tails.

// Harness code: a poisoned lock or a failed set-up step is a failure of the
// test or benchmark that asked for it.
#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quizfs::client::{ClientOptions, ClusterClient};
use quizfs_proto::{self as pb, ChunkHash, cluster_client::ClusterClient as ClusterRpc};

pub use crate::netns::Net;

/// Path of a workspace binary: `$QUIZFS_BIN_DIR/name`, else next to the
/// test binary's directory (`target/debug/deps/..`).
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("QUIZFS_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let dir = exe.parent().expect("the test binary is in a directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent")
    } else {
        dir
    };
    dir.join(name)
}

/// Waits (blocking the thread) until `probe` returns `Ok`, polling; on
/// timeout returns an error with the last state the probe reported.
pub fn block_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(state) if start.elapsed() > timeout => {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}; last state: {state}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits until `probe` returns `Ok`, polling; on timeout panics with the
/// last state the probe reported.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(state) => last = state,
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peak resident memory of a process in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sends a signal to a process we started.
pub fn signal(pid: u32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a PID of a child this harness started.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// One storage daemon.
#[derive(Debug)]
pub struct Node {
    /// Loopback address, e.g. 127.0.0.21.
    pub ip: String,
    /// Data directory.
    pub dir: PathBuf,
    /// Log file (appended across restarts).
    pub log: PathBuf,
    /// The running process.
    pub child: Option<Child>,
}

impl Node {
    /// PID of the running process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }
}

/// Name of the client certificate the harness issues for its mounts.
pub const TEST_CLIENT: &str = "test";

/// A cluster of real `storaged` processes.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, nas1 first.
    pub nodes: Vec<Node>,
    /// The port every node listens on (each on its own address).
    pub port: u16,
    /// Extra flags given to every node.
    pub extra: Vec<String>,
    /// The namespaces the nodes run in, if any (dropped after the nodes).
    pub net: Option<Net>,
    /// The cluster's CA directory (`quizfs cert init`), with a read-write
    /// client certificate for volume `nas` in `clients/test/`; `None` when
    /// the nodes run with `--insecure`.
    pub ca: Option<PathBuf>,
    /// Data directories that are size-limited tmpfs mounts, unmounted when
    /// the cluster is dropped.
    pub small_disks: Vec<PathBuf>,
    _tmp: tempfile::TempDir,
}

fn free_port(ips: &[String]) -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind((ips[0].as_str(), 0)).expect("bind an ephemeral port");
        let port = l.local_addr().expect("bound socket has an address").port();
        if ips[1..]
            .iter()
            .all(|ip| TcpListener::bind((ip.as_str(), port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

impl Cluster {
    /// Starts `n` nodes on 127.0.0.21.. with `extra` flags and waits until
    /// they have a leader and every node has applied the bootstrap.
    pub async fn start(n: usize, extra: &[&str]) -> Self {
        Self::start_with(n, extra, None, None).await
    }

    /// Starts `n` nodes whose data directories are each a tmpfs of `mib`
    /// MiB, so that a full disk can be tested. Needs root.
    pub async fn start_with_small_disks(n: usize, extra: &[&str], mib: u64) -> Self {
        Self::start_with(n, extra, None, Some(mib)).await
    }

    /// Starts `n` nodes each in its own network namespace (see [`Net`]),
    /// so that a node can be cut off the network. Needs root.
    pub async fn start_in_netns(n: usize, extra: &[&str]) -> Self {
        let net = Net::create(n).unwrap_or_else(|e| panic!("network namespaces: {e}"));
        Self::start_with(n, extra, Some(net), None).await
    }

    async fn start_with(n: usize, extra: &[&str], net: Option<Net>, disk_mib: Option<u64>) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("quizfs-it-")
            .tempdir()
            .expect("create a temp dir");
        let (ips, port) = match &net {
            Some(net) => (net.ips.clone(), pb::DEFAULT_PORT),
            None => {
                let ips: Vec<String> = (0..n).map(|i| format!("127.0.0.{}", 21 + i)).collect();
                let port = free_port(&ips);
                (ips, port)
            }
        };
        // TLS unless the caller asks for plaintext, as storaged does.
        let ca = (!extra.contains(&"--insecure")).then(|| {
            let ca = tmp.path().join("ca");
            let peers: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
            quizfs::cert::init(&ca, &peers, 30, 30).expect("create the cluster's certificates");
            quizfs::cert::Ca::open(&ca)
                .and_then(|c| {
                    c.issue_client(
                        TEST_CLIENT,
                        false,
                        &["nas".into()],
                        quizfs::cert::Validity::days(30),
                    )
                })
                .expect("issue the test client's certificate");
            ca
        });
        let nodes = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Node {
                ip: ip.clone(),
                dir: tmp.path().join(format!("nas{}", i + 1)),
                log: tmp.path().join(format!("nas{}.log", i + 1)),
                child: None,
            })
            .collect();
        let mut c = Self {
            nodes,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            net,
            ca,
            small_disks: Vec::new(),
            _tmp: tmp,
        };
        if let Some(mib) = disk_mib {
            for i in 0..n {
                let dir = c.nodes[i].dir.clone();
                std::fs::create_dir_all(&dir).expect("create a data directory");
                let ok = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                    .arg(&dir)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(
                    ok,
                    "mount a {mib} MiB tmpfs on {} (needs root)",
                    dir.display()
                );
                c.small_disks.push(dir);
            }
        }
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_healthy(Duration::from_secs(30)).await;
        c
    }

    /// The TLS directory of the test client (read-write, volume `nas`).
    pub fn client_tls_dir(&self) -> Option<PathBuf> {
        self.ca
            .as_ref()
            .map(|ca| ca.join("clients").join(TEST_CLIENT))
    }

    /// How a client dials this cluster: the test client's certificate, or
    /// plaintext when the nodes run with `--insecure`.
    pub fn transport(&self) -> pb::tls::Transport {
        match self.client_tls_dir() {
            Some(dir) => pb::tls::Transport::Tls(std::sync::Arc::new(
                pb::tls::TlsFiles::load(&dir, pb::tls::Role::Client, "-o insecure")
                    .expect("load the test client's certificate"),
            )),
            None => pb::tls::Transport::Insecure,
        }
    }

    /// The mount options (`tls_dir=...` or `insecure`) and the `quizfs
    /// status` flags that reach this cluster.
    pub fn mount_tls_option(&self) -> String {
        match self.client_tls_dir() {
            Some(dir) => format!("tls_dir={}", dir.display()),
            None => "insecure".into(),
        }
    }

    /// `quizfs status` / `heal info` flags that reach this cluster.
    pub fn cli_tls_args(&self) -> Vec<String> {
        match self.client_tls_dir() {
            Some(dir) => vec!["--tls-dir".into(), dir.display().to_string()],
            None => vec!["--insecure".into()],
        }
    }

    /// `--peers` value.
    pub fn peers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}:{}", n.ip, self.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `host:port` of node `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].ip, self.port)
    }

    /// Starts node `i`'s process.
    pub fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let mut cmd = match &self.net {
            Some(net) => net.command(i, &bin("storaged")),
            None => Command::new(bin("storaged")),
        };
        let child = cmd
            .arg("--peers")
            .arg(self.peers())
            .arg("--listen")
            .arg(format!("{}:{}", node.ip, self.port))
            .arg("--data-dir")
            .arg(&node.dir)
            .args(self.ca.iter().flat_map(|ca| {
                [
                    "--tls-dir".into(),
                    ca.join("nodes").join(&node.ip).into_os_string(),
                ]
            }))
            .args(&self.extra)
            .env(
                "RUST_LOG",
                "info,openraft=warn,sled=warn,h2=warn,tower=warn",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin("storaged").display()));
        self.nodes[i].child = Some(child);
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM to node `i` and waits up to `timeout` for it to exit;
    /// returns its exit status.
    pub async fn terminate(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.nodes[i].child.take().expect("node is running");
        signal(child.id(), libc::SIGTERM);
        let status = wait_until(timeout, "the node to exit after SIGTERM", || {
            let r = child.try_wait();
            async move {
                match r {
                    Ok(Some(s)) => Ok(s),
                    Ok(None) => Err("still running".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        status
    }

    /// Freezes node `i` (SIGSTOP): its sockets stay open, nothing answers.
    pub fn freeze(&self, i: usize) {
        signal(self.nodes[i].pid(), libc::SIGSTOP);
    }

    /// Thaws node `i` (SIGCONT).
    pub fn thaw(&self, i: usize) {
        signal(self.nodes[i].pid(), libc::SIGCONT);
    }

    /// Cuts node `i` off the network (its link goes down; the process
    /// runs on). Needs a cluster started with [`Cluster::start_in_netns`].
    pub fn cut(&self, i: usize) {
        let net = self
            .net
            .as_ref()
            .expect("cut needs a cluster in namespaces");
        net.cut(i)
            .unwrap_or_else(|e| panic!("cut nas{}: {e}", i + 1));
    }

    /// Brings node `i`'s link back up.
    pub fn restore(&self, i: usize) {
        let net = self
            .net
            .as_ref()
            .expect("restore needs a cluster in namespaces");
        net.restore(i)
            .unwrap_or_else(|e| panic!("restore nas{}: {e}", i + 1));
    }

    /// Deletes node `i`'s data directory (the node must be stopped).
    pub fn wipe(&self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "wipe a stopped node only");
        std::fs::remove_dir_all(&self.nodes[i].dir).expect("remove data dir");
    }

    /// A client connected through nas1, with the other nodes as backups.
    pub async fn client(&self) -> ClusterClient {
        self.client_with(ClientOptions::default()).await
    }

    /// A client with the given options, and this cluster's transport.
    pub async fn client_with(&self, mut opts: ClientOptions) -> ClusterClient {
        opts.transport = self.transport();
        let servers: Vec<String> = (0..self.nodes.len()).map(|i| self.addr(i)).collect();
        ClusterClient::connect(&servers, opts)
            .await
            .expect("client connects")
    }

    /// Node `i`'s own status, if it answers within a second.
    pub async fn status(&self, i: usize) -> Option<pb::NodeStatusReply> {
        let ch = quizfs::client::membership::channel(&self.addr(i), &self.transport()).ok()?;
        let mut rpc = ClusterRpc::new(ch);
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            rpc.node_status(pb::NodeStatusRequest {}),
        )
        .await;
        r.ok()?.ok().map(|r| r.into_inner())
    }

    /// Index of the node that reports itself leader.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some()
                && self.status(i).await.is_some_and(|s| s.role == "leader")
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until the running nodes have one leader and have all applied
    /// the same index.
    pub async fn wait_healthy(&self, timeout: Duration) {
        wait_until(
            timeout,
            "a leader and every running node caught up",
            || async {
                let mut seen = Vec::new();
                for i in 0..self.nodes.len() {
                    if self.nodes[i].child.is_some() {
                        seen.push(self.status(i).await);
                    }
                }
                let desc = format!(
                    "{:?}",
                    seen.iter()
                        .map(|s| s.as_ref().map(|s| (s.role.clone(), s.last_applied)))
                        .collect::<Vec<_>>()
                );
                let all: Vec<_> = seen.into_iter().flatten().collect();
                let leaders = all.iter().filter(|s| s.role == "leader").count();
                let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
                let applied: Vec<u64> = all.iter().map(|s| s.last_applied).collect();
                if all.len() == running
                    && leaders == 1
                    && applied.iter().all(|a| *a == applied[0] && *a > 1)
                {
                    Ok(())
                } else {
                    Err(desc)
                }
            },
        )
        .await
    }

    /// Waits until node `i` has caught up with the leader as it is now and
    /// a heal scan at or past that point left nothing missing; false if
    /// that did not happen within `timeout`.
    pub async fn wait_node_healed(&self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let target = loop {
            if let Some(l) = self.leader().await {
                if let Some(s) = self.status(l).await {
                    break s.last_applied;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        while Instant::now() < deadline {
            if let Some(s) = self.status(i).await {
                if s.last_applied >= target && s.heal_scanned_index >= target && s.heal_backlog == 0
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Path of a chunk file on node `i`.
    pub fn chunk_path(&self, i: usize, hash: &ChunkHash) -> PathBuf {
        let hex = hash.to_hex();
        self.nodes[i]
            .dir
            .join("chunks")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(hex)
    }

    /// Whether node `i` holds a chunk file whose content matches its hash.
    pub fn has_good_chunk(&self, i: usize, hash: &ChunkHash) -> bool {
        std::fs::read(self.chunk_path(i, hash)).is_ok_and(|d| ChunkHash::of(&d) == *hash)
    }

    /// Last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let s = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Data directory of node `i`.
    pub fn dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // A frozen process must be thawed to die promptly on some
                // kernels; SIGKILL works on stopped processes on Linux.
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for d in &self.small_disks {
            let _ = Command::new("umount").arg("-l").arg(d).status();
        }
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                let log = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                for (at, _) in lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.contains("panicked"))
                {
                    eprintln!(
                        "----- panic in nas{} -----\n{}",
                        i + 1,
                        lines[at..(at + 4).min(lines.len())].join("\n")
                    );
                }
                eprintln!(
                    "----- log tail of nas{} -----\n{}",
                    i + 1,
                    self.log_tail(i, 40)
                );
            }
        }
    }
}

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
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            eprintln!(
                "----- client warnings and errors ({}) -----\n{}",
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
