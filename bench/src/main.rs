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

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use quizfs::client::{ClientOptions, ClusterClient};
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
        }
    };
    // On Ctrl-C the work is dropped, and with it every process, mount and
    // namespace it made.
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; cleaned up"),
    }
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
