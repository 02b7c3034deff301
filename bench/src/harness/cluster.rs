//! A cluster of real `storaged` processes: starting it, its addresses and
//! certificates, and ending every process and namespace when dropped.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quizfs_proto as pb;

use super::{Net, bin};

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
    /// Started with `storaged --join` through this address (a node added
    /// after the bootstrap), instead of `--peers`.
    pub join: Option<String>,
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
    /// Data directories that are `quizfs-lazyfs` mounts (disks that forget
    /// what was not synced), one per node; see [`Cluster::power_cut`].
    pub lazy_disks: Vec<LazyDisk>,
    pub(super) _tmp: tempfile::TempDir,
}

/// A port free on every address in `ips`, with the next one free too (the
/// nodes' metrics listen there).
fn free_port(ips: &[String]) -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind((ips[0].as_str(), 0)).expect("bind an ephemeral port");
        let port = l.local_addr().expect("bound socket has an address").port();
        if port == u16::MAX {
            continue;
        }
        let next = TcpListener::bind((ips[0].as_str(), port + 1)).is_ok();
        if next
            && ips[1..].iter().all(|ip| {
                TcpListener::bind((ip.as_str(), port)).is_ok()
                    && TcpListener::bind((ip.as_str(), port + 1)).is_ok()
            })
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A node's data directory on a `quizfs-lazyfs` mount: content written but
/// not fsynced lives only in the lazyfs process, and is lost when it dies.
#[derive(Debug)]
pub struct LazyDisk {
    /// What the disk holds: the directory lazyfs writes synced content to.
    pub backing: PathBuf,
    /// The node's data directory, where lazyfs is mounted.
    pub mountpoint: PathBuf,
    /// The lazyfs process.
    pub child: Option<Child>,
}

impl LazyDisk {
    fn mount(backing: PathBuf, mountpoint: PathBuf) -> Self {
        std::fs::create_dir_all(&backing).expect("create a lazy disk's backing directory");
        std::fs::create_dir_all(&mountpoint).expect("create a lazy disk's mountpoint");
        let child = Command::new(bin("quizfs-lazyfs"))
            .arg(&backing)
            .arg(&mountpoint)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin("quizfs-lazyfs").display()));
        let disk = Self {
            backing,
            mountpoint,
            child: Some(child),
        };
        super::block_until(Duration::from_secs(10), "lazyfs to mount", || {
            if super::mount::is_mounted(&disk.mountpoint) {
                Ok(())
            } else {
                Err(format!("{} not mounted yet", disk.mountpoint.display()))
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        disk
    }

    /// Kills lazyfs (its unsynced content is gone) and detaches the mount.
    fn lose_power(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // umount2 itself, not umount(8), which is one more process to start.
        if let Ok(p) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
            #[allow(unsafe_code)]
            // SAFETY: a NUL-terminated path that lives across the call.
            let _ = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Which disks the nodes' data directories are on.
enum Disks {
    Plain,
    /// A tmpfs of this many MiB each.
    Small(u64),
    /// A `quizfs-lazyfs` mount each.
    Lazy,
}

impl Cluster {
    /// Starts `n` nodes on 127.0.0.21.. with `extra` flags and waits until
    /// they have a leader and every node has applied the bootstrap.
    pub async fn start(n: usize, extra: &[&str]) -> Self {
        Self::start_with(n, extra, None, Disks::Plain).await
    }

    /// Starts `n` nodes whose data directories are each a tmpfs of `mib`
    /// MiB, so that a full disk can be tested. Needs root.
    pub async fn start_with_small_disks(n: usize, extra: &[&str], mib: u64) -> Self {
        Self::start_with(n, extra, None, Disks::Small(mib)).await
    }

    /// Starts `n` nodes whose data directories are `quizfs-lazyfs` mounts,
    /// so that [`Cluster::power_cut`] can take every unsynced write away.
    pub async fn start_on_lazy_disks(n: usize, extra: &[&str]) -> Self {
        Self::start_with(n, extra, None, Disks::Lazy).await
    }

    /// A power cut of every node at once: each node's disk loses what was
    /// not synced (its lazyfs dies first, so nothing more reaches the
    /// disk), then every node is SIGKILLed. The disks come back, holding
    /// what was synced; the nodes stay down until [`Cluster::spawn`].
    ///
    /// It starts processes (lazyfs), and a process started by a process
    /// that has files of a quizfs mount open closes them at `exec`, which
    /// flushes them to a cluster that is down: run the writers in other
    /// processes.
    pub fn power_cut(&mut self) {
        assert!(!self.lazy_disks.is_empty(), "power_cut needs lazy disks");
        for d in &mut self.lazy_disks {
            if let Some(c) = d.child.as_mut() {
                let _ = c.kill();
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for d in &mut self.lazy_disks {
            d.lose_power();
            *d = LazyDisk::mount(d.backing.clone(), d.mountpoint.clone());
        }
    }

    /// Starts `n` nodes each in its own network namespace (see [`Net`]),
    /// so that a node can be cut off the network. Needs root.
    pub async fn start_in_netns(n: usize, extra: &[&str]) -> Self {
        let net = Net::create(n).unwrap_or_else(|e| panic!("network namespaces: {e}"));
        Self::start_with(n, extra, Some(net), Disks::Plain).await
    }

    async fn start_with(n: usize, extra: &[&str], net: Option<Net>, disks: Disks) -> Self {
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
                join: None,
            })
            .collect();
        let mut c = Self {
            nodes,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            net,
            ca,
            small_disks: Vec::new(),
            lazy_disks: Vec::new(),
            _tmp: tmp,
        };
        if let Disks::Lazy = disks {
            for i in 0..n {
                let backing = c._tmp.path().join(format!("nas{}.disk", i + 1));
                let disk = LazyDisk::mount(backing, c.nodes[i].dir.clone());
                c.lazy_disks.push(disk);
            }
        }
        if let Disks::Small(mib) = disks {
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

    /// Prepares node `nas{N+1}` on the next loopback address, with a node
    /// certificate of the cluster's CA (`with_cert`) or of another CA, to
    /// be started by [`Cluster::spawn`] with `storaged --join` through
    /// nas1; returns its index. `quizfs node add` admits it.
    pub fn new_node(&mut self, with_cert: bool) -> usize {
        let i = self.nodes.len();
        assert!(self.net.is_none(), "new nodes run on loopback only");
        let ip = format!("127.0.0.{}", 21 + i);
        if let Some(ca) = &self.ca {
            let peer = format!("{ip}:{}", self.port);
            if with_cert {
                quizfs::cert::Ca::open(ca)
                    .and_then(|c| c.issue_node(&peer, quizfs::cert::Validity::days(30)))
                    .expect("issue the new node's certificate");
            } else {
                // A CA of its own, whose node certificate the cluster's
                // CA did not sign.
                let other = self._tmp.path().join(format!("other-ca-{i}"));
                quizfs::cert::init(&other, &[peer], 30, 30).expect("create another CA");
                std::fs::create_dir_all(ca.join("nodes")).expect("nodes dir");
                let _ = std::fs::remove_dir_all(ca.join("nodes").join(&ip));
                std::fs::rename(other.join("nodes").join(&ip), ca.join("nodes").join(&ip))
                    .expect("move the foreign node certificate into place");
            }
        }
        self.nodes.push(Node {
            dir: self._tmp.path().join(format!("nas{}", i + 1)),
            log: self._tmp.path().join(format!("nas{}.log", i + 1)),
            ip,
            child: None,
            join: Some(self.addr(0)),
        });
        i
    }

    /// `--peers` value: the bootstrap nodes.
    pub fn peers(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.join.is_none())
            .map(|n| format!("{}:{}", n.ip, self.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `host:port` of node `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].ip, self.port)
    }

    /// `host:port` of node `i`'s metrics and health check (the node's own
    /// address, the port after its gRPC port), unless `extra` sets
    /// `--metrics-listen` itself.
    pub fn metrics_addr(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].ip, self.port + 1)
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
        let bootstrap = match &node.join {
            Some(via) => ["--join".to_string(), via.clone()],
            None => ["--peers".to_string(), self.peers()],
        };
        let child = cmd
            .args(bootstrap)
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
            .args(
                (!self.extra.iter().any(|a| a == "--metrics-listen"))
                    .then(|| ["--metrics-listen".to_string(), self.metrics_addr(i)])
                    .into_iter()
                    .flatten(),
            )
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
        for d in &mut self.lazy_disks {
            d.lose_power();
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
