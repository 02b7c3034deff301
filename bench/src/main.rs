//! `quizfs-bench`: measures quizfs.
//!
//! - `client`: a running cluster through the cluster client library (no
//!   mount): image-sized uploads and reads, and one large sequential write
//!   and read. Every figure is the median of `--reps` runs, with min and
//!   max.
//! - `failover`: starts its own cluster (nodes in network namespaces, so
//!   needs root) and a mount, and kills, freezes and cuts a follower and the
//!   leader under the application load; prints failed operations, longest
//!   pause and heal time in one table.
//! - `run`: the throughput workloads on any mounted directory.
//! - `compare`: local disk, bindfs, quizfs and GlusterFS side by side;
//!   writes BENCHMARKS.md's comparison section, JSON and charts.
//! - `scale`: how uploads, metadata and sequential throughput change with
//!   the number of files in the volume and the file size; writes
//!   BENCHMARKS.md's scaling section and JSON.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use quizfs::client::{ClientOptions, ClusterClient};
use quizfs_bench::compare::FailoverFigure;
use quizfs_bench::workloads::{self, Progress, Report, Sizes, Workload};
use tokio::io::AsyncRead;

#[derive(Debug, Parser)]
#[command(name = "quizfs-bench", about = "Measure quizfs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Uploads, reads and a sequential file through the client library,
    /// against a running cluster.
    Client(Args),
    /// Kill, freeze and cut a follower and the leader of a cluster this
    /// command starts (root: network namespaces), under the application
    /// load on a mount; print one table.
    Failover(FailoverArgs),
    /// The whole comparison: local disk, bindfs, quizfs and GlusterFS
    /// replica 3 (each started here, in network namespaces; root), every
    /// workload and the failover cases; writes the JSON, the charts and the
    /// comparison section of BENCHMARKS.md.
    Compare(CompareArgs),
    /// Run the throughput workloads in a mounted directory (any
    /// filesystem); print a table and optionally write JSON.
    Run(RunArgs),
    /// The scaling table: uploads and metadata with 1, 10 and 100 thousand
    /// files in the volume, sequential throughput at 64 MiB, 1 GiB and
    /// 4 GiB; on a quizfs cluster this command starts (root), or on --dir.
    Scale(ScaleArgs),
}

#[derive(Debug, clap::Args)]
struct ScaleArgs {
    /// Measure this mounted directory (and remove what was made there)
    /// instead of a quizfs cluster started for the run.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Files in the volume at which uploads and metadata are measured.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    levels: Vec<usize>,
    /// Sequential file sizes, MiB.
    #[arg(long, value_delimiter = ',', default_value = "64,1024,4096")]
    seq_mib: Vec<u64>,
    /// Files per upload and metadata probe.
    #[arg(long, default_value_t = 500)]
    probe: usize,
    /// Repetitions of each probe and file size.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Threads that fill the volume.
    #[arg(long, default_value_t = 4)]
    fillers: usize,
    /// The Markdown file whose scaling section is rewritten (between
    /// `<!-- scale:begin -->` and `<!-- scale:end -->`).
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: std::path::PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results/scale.json")]
    json: std::path::PathBuf,
    /// The command line to print in BENCHMARKS.md.
    #[arg(long)]
    command: Option<String>,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// Systems, comma-separated: local, bindfs, quizfs, gluster.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "local,bindfs,quizfs,gluster"
    )]
    systems: Vec<String>,
    #[command(flatten)]
    work: WorkloadArgs,
    /// Failover faults, comma-separated (kill, freeze, cut); "none" skips
    /// the failover cases.
    #[arg(long, value_delimiter = ',', default_value = "kill,freeze,cut")]
    faults: Vec<String>,
    /// Seconds a failed node stays failed (longer than GlusterFS's
    /// ping-timeout of 5 s, so its pause shows).
    #[arg(long, default_value_t = 10.0)]
    down_secs: f64,
    /// Where the local-disk and bindfs directories go (the disk under test).
    #[arg(long, default_value = "/var/tmp")]
    scratch: std::path::PathBuf,
    /// The Markdown file whose comparison section is rewritten.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: std::path::PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results/compare.json")]
    json: std::path::PathBuf,
    /// Directory for the SVG charts (relative to the Markdown file's
    /// directory in the links).
    #[arg(long, default_value = "bench/charts")]
    charts: std::path::PathBuf,
    /// The command line to print in BENCHMARKS.md (set by the script that
    /// wraps this command).
    #[arg(long)]
    command: Option<String>,
}

/// Which workloads, at which sizes: shared by `run` and `compare`.
#[derive(Debug, clap::Args)]
struct WorkloadArgs {
    /// Workloads, comma-separated: seq, uploads, uploads3, meta, ls, random,
    /// sqlite, dbench.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "seq,uploads,uploads3,meta,ls,random,sqlite,dbench"
    )]
    workloads: Vec<String>,
    /// Seconds-long sizes (for CI) instead of the full ones.
    #[arg(long)]
    short: bool,
    /// Repetitions (default: 3, or 1 with --short).
    #[arg(long)]
    reps: Option<usize>,
}

impl WorkloadArgs {
    /// The workloads and sizes the flags ask for.
    fn resolve(&self) -> anyhow::Result<(Vec<Workload>, Sizes)> {
        let workloads = parse_workloads(&self.workloads)?;
        let mut sizes = if self.short {
            Sizes::short()
        } else {
            Sizes::full()
        };
        if let Some(r) = self.reps {
            anyhow::ensure!(r > 0, "--reps must be at least 1");
            sizes.reps = r;
        }
        Ok((workloads, sizes))
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The directory to measure (a fresh subdirectory is used and removed).
    dir: std::path::PathBuf,
    /// Name of the system, for the table and the JSON.
    #[arg(long, default_value = "system")]
    name: String,
    #[command(flatten)]
    work: WorkloadArgs,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct FailoverArgs {
    /// Faults to apply, comma-separated: kill, freeze, cut.
    #[arg(long, value_delimiter = ',', default_value = "kill,freeze,cut")]
    faults: Vec<String>,
    /// Seconds the node stays failed, under load.
    #[arg(long, default_value_t = 5.0)]
    down_secs: f64,
    /// Seconds of load before each fault.
    #[arg(long, default_value_t = 2.0)]
    before_secs: f64,
    /// Extra mount options, e.g. ping_timeout=2 (default: none, the
    /// defaults are measured).
    #[arg(long, default_value = "")]
    mount_options: String,
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Storage nodes to contact, comma-separated host[:port].
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.21,127.0.0.22,127.0.0.23"
    )]
    servers: Vec<String>,
    /// Files per upload run.
    #[arg(long, default_value_t = 500)]
    files: usize,
    /// Size of each uploaded file in KiB.
    #[arg(long, default_value_t = 100)]
    file_kib: usize,
    /// Size of the sequential file in MiB.
    #[arg(long, default_value_t = 256)]
    big_mib: u64,
    /// Repetitions of each workload.
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// Bytes from a cheap generator, so the source costs nothing to measure.
struct Zeroish {
    left: u64,
    n: u8,
}

impl AsyncRead for Zeroish {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize;
        let fill = vec![self.n; n];
        self.n = self.n.wrapping_add(1);
        buf.put_slice(&fill);
        self.left -= n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

fn summary(name: &str, unit: &str, mut xs: Vec<f64>) {
    xs.sort_by(f64::total_cmp);
    let med = xs[xs.len() / 2];
    println!(
        "{name:<28} {med:>10.1} {unit:<8} (min {:.1}, max {:.1})",
        xs[0],
        xs[xs.len() - 1]
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let work = async {
        match Cli::parse().cmd {
            Cmd::Client(args) => client_bench(args).await,
            Cmd::Failover(args) => failover_bench(args).await,
            Cmd::Run(args) => run_bench(args).await,
            Cmd::Compare(args) => compare_bench(args).await,
            Cmd::Scale(args) => scale_bench(args).await,
        }
    };
    // On Ctrl-C the work is dropped, and with it every process, mount and
    // namespace it made.
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => {
            // The work (and with it every process, mount and namespace it
            // made) was dropped when select! returned. A workload thread
            // may still be in a system call on the gone mount; the runtime
            // would wait for it, so exit here.
            eprintln!("interrupted; cleaned up");
            std::process::exit(130);
        }
    }
}

/// Parses workload names.
fn parse_workloads(names: &[String]) -> anyhow::Result<Vec<Workload>> {
    names
        .iter()
        .map(|n| {
            Workload::parse(n).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown workload {n:?}: use seq, uploads, uploads3, meta, ls or random"
                )
            })
        })
        .collect()
}

/// A progress bar on stderr over the steps of one run.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(system: &str, steps: usize) -> Self {
        let bar = indicatif::ProgressBar::new(steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>10} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(system.to_string());
        Self(bar)
    }
}

impl Progress for Bar {
    fn step(&self, what: &str) {
        self.0.inc(1);
        self.0.set_message(what.to_string());
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Runs `workloads` on `dir` off the async runtime, with a progress bar.
async fn measure(
    system: &str,
    dir: std::path::PathBuf,
    sizes: &Sizes,
    workloads: &[Workload],
) -> Report {
    let (system, sizes, workloads) = (system.to_string(), sizes.clone(), workloads.to_vec());
    tokio::task::spawn_blocking(move || {
        let bar = Bar::new(&system, workloads.len() * (sizes.reps + 1));
        workloads::run(&system, &dir, &sizes, &workloads, &bar)
    })
    .await
    .unwrap_or_else(|e| Report {
        errors: vec![format!("the workload thread failed: {e}")],
        ..Report::default()
    })
}

async fn run_bench(args: RunArgs) -> anyhow::Result<()> {
    let (workloads, sizes) = args.work.resolve()?;
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a directory",
        args.dir.display()
    );
    let report = measure(&args.name, args.dir.clone(), &sizes, &workloads).await;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    anyhow::ensure!(report.errors.is_empty(), "some workloads failed");
    Ok(())
}

/// A one-line description of this machine for BENCHMARKS.md.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |k| k / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let gluster = std::process::Command::new("glusterfs")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "GlusterFS not installed".into());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}, all nodes on one disk; \
         {gluster}; quizfs {commit} (release build); {date}"
    )
}

/// Converts failover rows to the comparison's figures.
fn failover_figures(system: &str, rows: &[quizfs_bench::failover::Row]) -> Vec<FailoverFigure> {
    rows.iter()
        .map(|r| {
            let mut words = r.case.split_whitespace();
            FailoverFigure {
                system: system.into(),
                fault: words.next().unwrap_or_default().into(),
                role: words.next().unwrap_or_default().into(),
                failed: r.failures.len(),
                lost: r.lost.len(),
                longest_ms: r.longest.as_secs_f64() * 1e3,
                heal_s: r.heal.map(|h| h.as_secs_f64()),
            }
        })
        .collect()
}

/// Runs the failover cases on `sys` (followers and, where the system has
/// one, the leader).
async fn failover_cases<S: quizfs_bench::failover::System>(
    sys: &mut S,
    faults: &[quizfs_bench::failover::Fault],
    down: f64,
) -> Vec<quizfs_bench::failover::Row> {
    use quizfs_bench::failover::{self, Plan};
    let plan = Plan {
        down: std::time::Duration::from_secs_f64(down),
        ..Plan::default()
    };
    let has_leader = sys.leader().await.is_some();
    let mut rows = Vec::new();
    for on_leader in [false, true] {
        if on_leader && !has_leader {
            break;
        }
        for &fault in faults {
            eprintln!("{}: failover {} ...", sys.name(), fault.name());
            let row = failover::run_case(sys, fault, on_leader, &plan).await;
            eprintln!(
                "{}: {} failed, longest {:?} ({})",
                row.case,
                row.failures.len(),
                row.longest,
                row.longest_what
            );
            rows.push(row);
        }
    }
    rows
}

async fn compare_bench(args: CompareArgs) -> anyhow::Result<()> {
    use quizfs_bench::compare::{self, BINDFS, Bindfs, GLUSTER, LOCAL, QUIZFS, Results};
    use quizfs_bench::failover::{Fault, Quizfs, System};
    let (workloads, sizes) = args.work.resolve()?;
    let faults = if args.faults.iter().any(|f| f == "none") {
        Vec::new()
    } else {
        args.faults
            .iter()
            .map(|f| {
                Fault::parse(f).ok_or_else(|| {
                    anyhow::anyhow!("unknown fault {f:?}: use kill, freeze, cut or none")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    for s in &args.systems {
        anyhow::ensure!(
            ["local", "bindfs", "quizfs", "gluster"].contains(&s.as_str()),
            "unknown system {s:?}: use local, bindfs, quizfs or gluster"
        );
    }
    let mut results = Results::default();
    for s in &args.systems {
        eprintln!("== {s}");
        match s.as_str() {
            "local" => {
                let dir = tempfile::Builder::new()
                    .prefix("quizfs-local-")
                    .tempdir_in(&args.scratch)?;
                results
                    .reports
                    .push(measure(LOCAL, dir.path().to_path_buf(), &sizes, &workloads).await);
            }
            "bindfs" => match Bindfs::start(&args.scratch) {
                Ok(b) => {
                    results
                        .reports
                        .push(measure(BINDFS, b.mount.clone(), &sizes, &workloads).await);
                }
                Err(e) => results.errors.push(format!("bindfs: {e}")),
            },
            "quizfs" => {
                let mut q = Quizfs::start().await;
                results
                    .reports
                    .push(measure(QUIZFS, q.mount_dir(), &sizes, &workloads).await);
                let rows = failover_cases(&mut q, &faults, args.down_secs).await;
                results.failover.extend(failover_figures(QUIZFS, &rows));
            }
            _ => match tokio::task::spawn_blocking(quizfs_bench::gluster::Gluster::start).await? {
                Ok(mut g) => {
                    results
                        .reports
                        .push(measure(GLUSTER, g.mount_dir(), &sizes, &workloads).await);
                    let rows = failover_cases(&mut g, &faults, args.down_secs).await;
                    results.failover.extend(failover_figures(GLUSTER, &rows));
                    tokio::task::spawn_blocking(move || drop(g)).await?;
                }
                Err(e) => results.errors.push(format!("GlusterFS: {e}")),
            },
        }
    }
    for r in &results.reports {
        print!("{}", r.table());
    }
    write_json(&args.json, &results)?;
    let rel = args.charts.display().to_string();
    let charts = compare::charts(&results, &args.charts, &rel).map_err(anyhow::Error::msg)?;
    let section = compare::markdown(&results, &machine(), &command_line(&args.command), &charts);
    write_section(&args.markdown, "compare", &section)?;
    eprintln!(
        "wrote {}, {} and the charts in {}",
        args.markdown.display(),
        args.json.display(),
        args.charts.display()
    );
    Ok(())
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
    Ok(())
}

/// The command line to print: the wrapping script's, else this process's.
fn command_line(given: &Option<String>) -> String {
    given
        .clone()
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "))
}

/// Rewrites the `name` section (between its markers) of the Markdown file.
fn write_section(markdown: &std::path::Path, name: &str, section: &str) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(markdown).unwrap_or_default();
    std::fs::write(
        markdown,
        quizfs_bench::compare::splice_at(&doc, name, section),
    )?;
    Ok(())
}

async fn scale_bench(args: ScaleArgs) -> anyhow::Result<()> {
    use quizfs_bench::compare;
    use quizfs_bench::workloads::ScaleSizes;
    anyhow::ensure!(
        !args.levels.is_empty() && args.levels.windows(2).all(|w| w[0] < w[1]),
        "--levels must be increasing"
    );
    anyhow::ensure!(
        args.probe > 0 && args.reps > 0,
        "--probe and --reps must be > 0"
    );
    let sizes = ScaleSizes {
        levels: args.levels.clone(),
        seq_mib: args.seq_mib.clone(),
        probe: args.probe,
        reps: args.reps,
        fillers: args.fillers,
    };
    let steps = sizes.levels.len() * (1 + sizes.reps) + sizes.seq_mib.len() * sizes.reps + 1;
    let run = |dir: std::path::PathBuf, cleanup: bool| {
        let sizes = sizes.clone();
        tokio::task::spawn_blocking(move || {
            let bar = Bar::new("scale", steps);
            workloads::scale(&dir, &sizes, cleanup, &bar)
        })
    };
    let rows = match &args.dir {
        Some(dir) => {
            anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
            run(dir.clone(), true).await?
        }
        None => {
            eprintln!("== quizfs (nas1..nas3 in network namespaces)");
            use quizfs_bench::failover::System;
            let q = quizfs_bench::failover::Quizfs::start().await;
            // The cluster goes with its data: nothing to remove file by file.
            let rows = run(q.mount_dir(), false).await?;
            drop(q);
            rows
        }
    }
    .map_err(anyhow::Error::msg)?;
    for r in &rows {
        print!("{}", r.report.table());
    }
    write_json(&args.json, &rows)?;
    let section = compare::scale_markdown(&rows, &machine(), &command_line(&args.command));
    write_section(&args.markdown, "scale", &section)?;
    eprintln!(
        "wrote {} and {}",
        args.markdown.display(),
        args.json.display()
    );
    Ok(())
}

async fn failover_bench(args: FailoverArgs) -> anyhow::Result<()> {
    use quizfs_bench::failover::{self, Fault, Plan, Quizfs};
    let faults = args
        .faults
        .iter()
        .map(|f| {
            Fault::parse(f)
                .ok_or_else(|| anyhow::anyhow!("unknown fault {f:?}: use kill, freeze or cut"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = Plan {
        before: std::time::Duration::from_secs_f64(args.before_secs),
        down: std::time::Duration::from_secs_f64(args.down_secs),
        ..Plan::default()
    };
    let mut sys = Quizfs::start_with(&args.mount_options).await;
    let mut rows = Vec::new();
    for on_leader in [false, true] {
        for &fault in &faults {
            let row = failover::run_case(&mut sys, fault, on_leader, &plan).await;
            eprintln!(
                "{}: {} failed, longest {:?} ({})",
                row.case,
                row.failures.len(),
                row.longest,
                row.longest_what
            );
            for f in row.failures.iter().take(5) {
                eprintln!("  failed: {f}");
            }
            rows.push(row);
        }
    }
    println!(
        "load: one 100 KiB upload (write, fsync, close, read back) every 20 ms and a reader; \
         node down {} s per case; default settings",
        args.down_secs
    );
    println!();
    print!("{}", failover::table("quizfs", &rows));
    let bad = rows
        .iter()
        .any(|r| !r.failures.is_empty() || !r.lost.is_empty() || r.heal.is_none());
    if bad {
        anyhow::bail!("some case failed an operation, lost a file or did not heal");
    }
    Ok(())
}

async fn client_bench(args: Args) -> anyhow::Result<()> {
    let client = ClusterClient::connect(&args.servers, ClientOptions::default()).await?;
    let run = client.client_id();
    let root = client
        .mkdir(
            quizfs_proto::ROOT_INO,
            format!("bench-{run}").as_bytes(),
            0o755,
        )
        .await?;
    let data = Arc::new(vec![7u8; args.file_kib * 1024]);
    let (mut up, mut down, mut seq_w, mut seq_r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..args.reps {
        let dir = client
            .mkdir(root.ino, format!("r{rep}").as_bytes(), 0o755)
            .await?;
        let t = Instant::now();
        let mut inos = Vec::with_capacity(args.files);
        for i in 0..args.files {
            let mut d = (*data).clone();
            d[0] = i as u8;
            d[1] = rep as u8;
            inos.push(
                client
                    .create_file(dir.ino, format!("{i}.jpg").as_bytes(), &d)
                    .await?
                    .ino,
            );
        }
        up.push(args.files as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for ino in &inos {
            client.read_file(*ino).await?;
        }
        down.push(args.files as f64 / t.elapsed().as_secs_f64());
        let big = client.create(dir.ino, b"big", 0o644, true).await?;
        let t = Instant::now();
        client
            .write_from(
                big.ino,
                Zeroish {
                    left: args.big_mib << 20,
                    n: rep as u8,
                },
            )
            .await?;
        seq_w.push(args.big_mib as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        client.read_to(big.ino, tokio::io::sink()).await?;
        seq_r.push(args.big_mib as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "quizfs-bench: {} reps, servers {}",
        args.reps,
        args.servers.join(",")
    );
    summary(
        &format!("upload {} KiB files", args.file_kib),
        "files/s",
        up,
    );
    summary(
        &format!("read {} KiB files", args.file_kib),
        "files/s",
        down,
    );
    summary(
        &format!("sequential write {} MiB", args.big_mib),
        "MiB/s",
        seq_w,
    );
    summary(
        &format!("sequential read {} MiB", args.big_mib),
        "MiB/s",
        seq_r,
    );
    Ok(())
}
