//! GlusterFS replica 3 on this machine, for the side-by-side comparison:
//! three `glusterd` (Debian's `glusterfs-server`), each in its own network
//! namespace (GlusterFS refuses loopback bricks) and its own mount
//! namespace, where a private `/var/lib/glusterd`, `/run` and
//! `/var/log/glusterfs` are bind-mounted; the volume `nas` with
//! `network.ping-timeout 5`, mounted in the caller's namespace with
//! `mount -t glusterfs`. Dropping a [`Gluster`] unmounts it, ends every
//! process in its namespaces (all started by it) and deletes them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::failover::{Fault, System};
use crate::netns::Net;

/// The volume's ping timeout, as the reference deployment sets it.
pub const PING_TIMEOUT_SECS: u32 = 5;

/// A running GlusterFS replica-3 volume and its mount.
#[derive(Debug)]
pub struct Gluster {
    net: Net,
    base: tempfile::TempDir,
    glusterd: Vec<Option<Child>>,
    stopped: Vec<u32>,
    /// Where the volume is mounted.
    pub mount: PathBuf,
    mounted: bool,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what}: {}", text.trim()))
    }
}

impl Gluster {
    /// Creates the namespaces, starts the daemons, creates, starts and
    /// mounts the volume. Needs root and `glusterfs-server`.
    pub fn start() -> Result<Self, String> {
        if Command::new("glusterd").arg("--version").output().is_err() {
            return Err("glusterd not found: apt-get install glusterfs-server".into());
        }
        let net = Net::create(3)?;
        let base = tempfile::Builder::new()
            .prefix("quizfs-gluster-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let mount = base.path().join("mnt");
        let mut g = Self {
            net,
            base,
            glusterd: (0..3).map(|_| None).collect(),
            stopped: Vec::new(),
            mount,
            mounted: false,
        };
        for i in 0..3 {
            for sub in ["lib", "run", "log", "brick"] {
                std::fs::create_dir_all(g.node_dir(i).join(sub))
                    .map_err(|e| format!("node dir: {e}"))?;
            }
            // The package's templates (option groups, hooks).
            run(
                Command::new("cp")
                    .arg("-a")
                    .arg("/var/lib/glusterd/.")
                    .arg(g.node_dir(i).join("lib")),
                "copy /var/lib/glusterd",
            )?;
            g.spawn(i)?;
        }
        g.wait_cli(0, Duration::from_secs(20))?;
        for i in 1..3 {
            g.wait_cli(i, Duration::from_secs(20))?;
            let ip = g.net.ips[i].clone();
            g.cli(0, &["peer", "probe", &ip])?;
        }
        crate::harness::block_until(Duration::from_secs(30), "gluster peers connected", || {
            let s = g.cli(0, &["peer", "status"]).unwrap_or_default();
            (s.matches("Peer in Cluster (Connected)").count() == 2)
                .then_some(())
                .ok_or(s)
        })?;
        let bricks: Vec<String> = (0..3)
            .map(|i| format!("{}:{}", g.net.ips[i], g.node_dir(i).join("brick").display()))
            .collect();
        let mut args = vec!["volume", "create", "nas", "replica", "3"];
        args.extend(bricks.iter().map(String::as_str));
        // The bricks share the root file system with everything else.
        args.push("force");
        g.cli(0, &args)?;
        let pt = PING_TIMEOUT_SECS.to_string();
        g.cli(0, &["volume", "set", "nas", "network.ping-timeout", &pt])?;
        g.cli(0, &["volume", "start", "nas"])?;
        std::fs::create_dir_all(&g.mount).map_err(|e| format!("mountpoint: {e}"))?;
        let spec = format!("{}:/nas", g.net.ips[0]);
        let backup = format!("backup-volfile-servers={}:{}", g.net.ips[1], g.net.ips[2]);
        run(
            Command::new("mount")
                .args(["-t", "glusterfs", "-o", &backup, &spec])
                .arg(&g.mount),
            "mount -t glusterfs",
        )?;
        g.mounted = true;
        Ok(g)
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.base.path().join(format!("nas{}", i + 1))
    }

    /// Starts node `i`'s glusterd in its namespaces; it starts the brick
    /// and self-heal daemons of a started volume itself.
    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let d = self.node_dir(i);
        let script = format!(
            "mount --bind {lib} /var/lib/glusterd && mount --bind {run} /run && \
             mount --bind {log} /var/log/glusterfs && exec glusterd -N",
            lib = d.join("lib").display(),
            run = d.join("run").display(),
            log = d.join("log").display(),
        );
        let out = std::fs::File::create(d.join("glusterd.out")).map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.namespaces[i]])
            .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("start glusterd: {e}"))?;
        self.glusterd[i] = Some(child);
        Ok(())
    }

    /// Runs the gluster CLI against node `i`'s glusterd.
    fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let pid = self.glusterd[i]
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| format!("nas{} is not running", i + 1))?;
        run(
            Command::new("nsenter")
                .args([
                    "-t",
                    &pid.to_string(),
                    "-m",
                    "-n",
                    "gluster",
                    "--mode=script",
                ])
                .args(args),
            &format!("gluster {} on nas{}", args.join(" "), i + 1),
        )
    }

    fn wait_cli(&self, i: usize, timeout: Duration) -> Result<(), String> {
        crate::harness::block_until(timeout, "glusterd answers", || {
            self.cli(i, &["peer", "status"]).map(|_| ())
        })
    }

    /// Every process in node `i`'s network namespace.
    fn node_pids(&self, i: usize) -> Vec<u32> {
        run(
            Command::new("ip").args(["netns", "pids", &self.net.namespaces[i]]),
            "ip netns pids",
        )
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
    }

    fn signal_node(&self, i: usize, sig: i32) -> Vec<u32> {
        let pids = self.node_pids(i);
        for &p in &pids {
            crate::harness::signal(p, sig);
        }
        pids
    }

    /// True when `heal info` from node `from` shows every brick connected
    /// and no entry left to heal.
    fn healed(&self, from: usize) -> Result<(), String> {
        let s = self.cli(from, &["volume", "heal", "nas", "info"])?;
        let connected = s.matches("Status: Connected").count();
        let pending: u64 = s
            .lines()
            .filter_map(|l| l.strip_prefix("Number of entries:"))
            .map(|n| n.trim().parse::<u64>().unwrap_or(u64::MAX))
            .sum();
        if connected == 3 && pending == 0 {
            Ok(())
        } else {
            Err(format!(
                "{connected} bricks connected, {pending} entries to heal"
            ))
        }
    }
}

impl System for Gluster {
    fn name(&self) -> String {
        "GlusterFS".into()
    }

    fn mount_dir(&self) -> PathBuf {
        self.mount.clone()
    }

    fn nodes(&self) -> usize {
        3
    }

    async fn leader(&mut self) -> Option<usize> {
        None
    }

    async fn fail(&mut self, node: usize, fault: Fault) {
        match fault {
            Fault::Kill => {
                self.signal_node(node, libc::SIGKILL);
                if let Some(mut c) = self.glusterd[node].take() {
                    let _ = c.wait();
                }
            }
            Fault::Freeze => self.stopped = self.signal_node(node, libc::SIGSTOP),
            Fault::Cut => {
                if let Err(e) = self.net.cut(node) {
                    eprintln!("cut nas{}: {e}", node + 1);
                }
            }
        }
    }

    async fn recover(&mut self, node: usize, fault: Fault) {
        match fault {
            Fault::Kill => {
                // A killed node's processes may take a moment to be gone.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !self.node_pids(node).is_empty() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if let Err(e) = self.spawn(node) {
                    eprintln!("restart nas{}: {e}", node + 1);
                }
            }
            Fault::Freeze => {
                for p in std::mem::take(&mut self.stopped) {
                    crate::harness::signal(p, libc::SIGCONT);
                }
            }
            Fault::Cut => {
                if let Err(e) = self.net.restore(node) {
                    eprintln!("restore nas{}: {e}", node + 1);
                }
            }
        }
    }

    async fn wait_healed(&mut self, node: usize, timeout: Duration) -> bool {
        let from = (node + 1) % 3;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.healed(from).is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

/// Unmounts `path` (lazily if it is busy).
pub fn unmount(path: &Path) {
    if crate::harness::is_mounted(path) && run(Command::new("umount").arg(path), "umount").is_err()
    {
        let _ = run(Command::new("umount").arg("-l").arg(path), "umount -l");
    }
}

impl Drop for Gluster {
    fn drop(&mut self) {
        for p in std::mem::take(&mut self.stopped) {
            crate::harness::signal(p, libc::SIGCONT);
        }
        if self.mounted {
            unmount(&self.mount);
        }
        for i in 0..3 {
            // Everything in the node's namespace was started by this value
            // (glusterd and the brick and heal daemons it spawned).
            let pids = self.signal_node(i, libc::SIGKILL);
            if let Some(mut c) = self.glusterd[i].take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while pids
                .iter()
                .any(|p| Path::new(&format!("/proc/{p}")).exists())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
