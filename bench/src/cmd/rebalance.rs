//! `rebalance`: how long adding two nodes to three takes to move their
//! share of the chunks, and what a writer gets meanwhile.
//!
//! It starts three nodes (TLS, loopback), fills the volume with 64 MiB
//! files through the client library, times the last GiB of the fill
//! (throughput before), starts two nodes with `storaged --join` and admits
//! them with `quizfs node add`, writes one more GiB at once (throughput
//! during the rebalance), and waits until every node has nothing left to
//! fetch or delete (the rebalance time, from the first admission).

use std::time::{Duration, Instant};

use quizfs_bench::harness::{Cluster, bin};
use quizfs_bench::load::content;
use quizfs_proto::ROOT_INO;

use super::args::RebalanceArgs;

/// Size of each file written.
const FILE: usize = 64 << 20;

/// Writes `files` files of [`FILE`] bytes, each with content of its own
/// (seeds from `seed` on); returns MiB/s.
async fn write(
    client: &quizfs::client::ClusterClient,
    prefix: &str,
    seed: u64,
    files: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    for i in 0..files {
        let data = content(seed + i as u64, FILE);
        client
            .create_file(ROOT_INO, format!("{prefix}{i:05}").as_bytes(), &data)
            .await
            .map_err(|e| anyhow::anyhow!("write {prefix}{i}: {e}"))?;
    }
    Ok((files * FILE) as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64())
}

pub(crate) async fn rebalance_bench(args: RebalanceArgs) -> anyhow::Result<()> {
    let rate = args.rate_mib.to_string();
    let mut cluster = Cluster::start(3, &["--heal-rate-mib", &rate]).await;
    let client = cluster.client().await;
    let per_gib = (1usize << 30) / FILE;
    let fill = args.gib.saturating_sub(1) as usize * per_gib;
    println!(
        "filling {} GiB (heal rate limit {} MiB/s; 0 = none)",
        args.gib, args.rate_mib
    );
    let t = Instant::now();
    write(&client, "fill", 1_000_000, fill).await?;
    let before = write(&client, "before", 2_000_000, per_gib).await?;
    println!(
        "filled in {:.0} s; last GiB at {before:.0} MiB/s",
        t.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let mut added = Vec::new();
    for _ in 0..2 {
        let i = cluster.new_node(true);
        cluster.spawn(i);
        let out = std::process::Command::new(bin("quizfs"))
            .args([
                "node",
                "add",
                &cluster.addr(i),
                "--server",
                &cluster.addr(0),
                "--wait",
                "300",
            ])
            .args(cluster.cli_tls_args())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "node add failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        added.push(i);
    }
    let during = write(&client, "during", 3_000_000, per_gib).await?;
    println!("one GiB written during the rebalance at {during:.0} MiB/s");
    let mut printed = Instant::now() - Duration::from_secs(60);
    let done = loop {
        let mut busy = 0u64;
        let mut shares = Vec::new();
        for i in 0..cluster.nodes.len() {
            match cluster.status(i).await {
                Some(s) => {
                    busy += s.heal_backlog + s.surplus;
                    shares.push(format!("nas{}={}", i + 1, s.chunks));
                }
                None => busy += 1,
            }
        }
        let line = format!(
            "{busy} copies to make or delete; chunks {}",
            shares.join(" ")
        );
        if printed.elapsed() >= Duration::from_secs(10) {
            println!("{:>5.0} s: {line}", start.elapsed().as_secs_f64());
            printed = Instant::now();
        }
        if busy == 0 {
            break start.elapsed();
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(args.timeout_secs),
            "no end to the rebalance in {} s: {line}",
            args.timeout_secs
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut chunks = Vec::new();
    for i in 0..cluster.nodes.len() {
        let s = cluster.status(i).await.map(|s| (s.chunks, s.chunk_bytes));
        chunks.push(s.unwrap_or_default());
    }
    println!();
    println!(
        "| volume | heal rate limit | rebalance time | write before | write during | chunks per node after (GiB) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} GiB | {} | {:.0} s | {before:.0} MiB/s | {during:.0} MiB/s | {} |",
        args.gib + 1,
        if args.rate_mib == 0 {
            "none".to_string()
        } else {
            format!("{} MiB/s", args.rate_mib)
        },
        done.as_secs_f64(),
        chunks
            .iter()
            .map(|(_, b)| format!("{:.1}", *b as f64 / (1u64 << 30) as f64))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    Ok(())
}
