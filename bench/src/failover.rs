//! The failover workload: under the application [`load`](crate::load) on a
//! mount, one storage node is killed (SIGKILL), frozen (SIGSTOP: its
//! connections stay open and nothing answers) or cut off the network (link
//! down), first a follower and then the leader where the system has one;
//! after a while it comes back (restart, SIGCONT, link up). Each case
//! reports the failed operations, the files lost or corrupt, the longest
//! single system call, and the time the returning node took to heal.
//!
//! The workload knows nothing of quizfs: a [`System`] adapter starts,
//! faults and inspects the system under test. [`Quizfs`] is the adapter for
//! quizfs; another system (GlusterFS) needs only its own adapter.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::load::{self, Load, LoadOptions};

/// How a node fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then a restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Freeze,
    /// Link down, then up.
    Cut,
}

impl Fault {
    /// The name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Freeze => "freeze",
            Self::Cut => "cut",
        }
    }

    /// Parses `kill`, `freeze` (or `stop`), `cut`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "kill" => Some(Self::Kill),
            "freeze" | "stop" => Some(Self::Freeze),
            "cut" => Some(Self::Cut),
            _ => None,
        }
    }
}

/// The adapter between the workload and one system under test.
#[allow(async_fn_in_trait)]
pub trait System {
    /// Name for the table.
    fn name(&self) -> String;
    /// The mounted directory the load runs in.
    fn mount_dir(&self) -> PathBuf;
    /// Number of storage nodes.
    fn nodes(&self) -> usize;
    /// The node that currently leads, if the system has a leader.
    async fn leader(&mut self) -> Option<usize>;
    /// Applies `fault` to `node`.
    async fn fail(&mut self, node: usize, fault: Fault);
    /// Undoes `fault` on `node` (restart, SIGCONT, link up).
    async fn recover(&mut self, node: usize, fault: Fault);
    /// Waits until `node` holds everything written while it was away;
    /// false if it did not within `timeout`.
    async fn wait_healed(&mut self, node: usize, timeout: Duration) -> bool;
}

/// How long each phase of a case lasts.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Load before the fault.
    pub before: Duration,
    /// Time the node stays failed, under load.
    pub down: Duration,
    /// Load after the node has healed.
    pub after: Duration,
    /// Longest wait for the heal.
    pub heal_timeout: Duration,
    /// The load.
    pub load: LoadOptions,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            before: Duration::from_secs(2),
            down: Duration::from_secs(5),
            after: Duration::from_secs(1),
            heal_timeout: Duration::from_secs(60),
            load: LoadOptions::default(),
        }
    }
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct Row {
    /// `kill follower nas2`, `cut leader nas1`, ...
    pub case: String,
    /// The node that failed (index).
    pub node: usize,
    /// The directory the case's load wrote in.
    pub dir: PathBuf,
    /// System calls made by the load.
    pub ops: u64,
    /// Uploads completed.
    pub uploads: u64,
    /// Uploads completed while the node was away.
    pub uploads_while_down: u64,
    /// Failed operations, described.
    pub failures: Vec<String>,
    /// Uploads missing or differing at the end.
    pub lost: Vec<String>,
    /// Longest single system call over the whole case.
    pub longest: Duration,
    /// Which call.
    pub longest_what: String,
    /// Time from the node's return until it had healed; `None` if it had
    /// not within the plan's timeout.
    pub heal: Option<Duration>,
}

/// Runs one case: `fault` on the leader (`on_leader`) or on a follower.
pub async fn run_case<S: System>(sys: &mut S, fault: Fault, on_leader: bool, plan: &Plan) -> Row {
    let leader = sys.leader().await;
    let n = sys.nodes();
    let node = match (on_leader, leader) {
        (true, Some(l)) => l,
        (_, Some(l)) => (l + 1) % n,
        (_, None) => n - 1,
    };
    let role = if leader.is_none() {
        "node"
    } else if on_leader {
        "leader"
    } else {
        "follower"
    };
    let case = format!("{} {role} nas{}", fault.name(), node + 1);
    let stamp = quizfs_proto::now_ns() / 1_000_000;
    let dir = sys
        .mount_dir()
        .join(format!("failover-{}-{role}-{stamp}", fault.name()));
    let load = match Load::start(&dir, plan.load.clone()) {
        Ok(l) => l,
        Err(e) => {
            return Row {
                case,
                node,
                dir,
                ops: 0,
                uploads: 0,
                uploads_while_down: 0,
                failures: vec![format!("cannot start the load: {e}")],
                lost: Vec::new(),
                longest: Duration::ZERO,
                longest_what: String::new(),
                heal: None,
            };
        }
    };
    tokio::time::sleep(plan.before).await;
    let before = load.stats().uploads;
    let failed_at = Instant::now();
    sys.fail(node, fault).await;
    tokio::time::sleep(plan.down).await;
    let while_down = load.stats().uploads - before;
    sys.recover(node, fault).await;
    let back = Instant::now();
    let heal = sys
        .wait_healed(node, plan.heal_timeout)
        .await
        .then(|| back.elapsed());
    tokio::time::sleep(plan.after).await;
    let (stats, uploads) = tokio::task::spawn_blocking(move || load.stop())
        .await
        .expect("the load stops");
    let lost = tokio::task::spawn_blocking(move || load::verify(&uploads))
        .await
        .expect("the verification runs");
    Row {
        case,
        node,
        dir,
        ops: stats.ops,
        uploads: stats.uploads,
        uploads_while_down: while_down,
        failures: stats.failures,
        lost,
        longest: stats.longest,
        longest_what: match stats.longest_at {
            // When it began, from the fault: negative before it, past the
            // down time after the node came back.
            Some(at) => format!(
                "{}, {:+.0} ms from the fault, back at +{:.0} ms",
                stats.longest_what,
                signed_ms(failed_at, at),
                (back - failed_at).as_secs_f64() * 1000.0
            ),
            None => stats.longest_what,
        },
        heal,
    }
}

/// Milliseconds from `from` to `to`, negative when `to` is earlier.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1000.0
    } else {
        -((from - to).as_secs_f64() * 1000.0)
    }
}

/// The table of rows, as Markdown.
pub fn table(system: &str, rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| system | case | ops | uploads (while down) | failed ops | lost or corrupt | longest pause ms | heal s |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let heal = r.heal.map_or("not healed".to_string(), |h| {
            format!("{:.2}", h.as_secs_f64())
        });
        let _ = writeln!(
            t,
            "| {system} | {} | {} | {} ({}) | {} | {} | {} | {heal} |",
            r.case,
            r.ops,
            r.uploads,
            r.uploads_while_down,
            r.failures.len(),
            r.lost.len(),
            r.longest.as_millis(),
        );
    }
    t
}

/// quizfs as a [`System`]: a cluster in network namespaces and one mount.
#[derive(Debug)]
pub struct Quizfs {
    /// The cluster.
    pub cluster: crate::harness::Cluster,
    /// The mount the load runs on.
    pub mount: crate::harness::Mount,
}

impl Quizfs {
    /// Starts three nodes in namespaces and mounts the volume with the
    /// default options (needs root).
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// The same, with extra mount options (`-o`, comma-separated).
    pub async fn start_with(options: &str) -> Self {
        let cluster = crate::harness::Cluster::start_in_netns(3, &[]).await;
        let mut opts = format!("backup_servers={},{}", cluster.addr(1), cluster.addr(2));
        if !options.is_empty() {
            opts = format!("{opts},{options}");
        }
        let mount = crate::harness::Mount::new(&cluster, 0, &opts).await;
        Self { cluster, mount }
    }
}

impl System for Quizfs {
    fn name(&self) -> String {
        "quizfs".into()
    }

    fn mount_dir(&self) -> PathBuf {
        self.mount.path.clone()
    }

    fn nodes(&self) -> usize {
        self.cluster.nodes.len()
    }

    async fn leader(&mut self) -> Option<usize> {
        self.cluster.leader().await
    }

    async fn fail(&mut self, node: usize, fault: Fault) {
        match fault {
            Fault::Kill => self.cluster.kill(node),
            Fault::Freeze => self.cluster.freeze(node),
            Fault::Cut => self.cluster.cut(node),
        }
    }

    async fn recover(&mut self, node: usize, fault: Fault) {
        match fault {
            Fault::Kill => self.cluster.spawn(node),
            Fault::Freeze => self.cluster.thaw(node),
            Fault::Cut => self.cluster.restore(node),
        }
    }

    async fn wait_healed(&mut self, node: usize, timeout: Duration) -> bool {
        self.cluster.wait_node_healed(node, timeout).await
    }
}
