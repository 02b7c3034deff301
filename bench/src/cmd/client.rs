//! `client`: the cluster client library against a running cluster.

use std::sync::Arc;
use std::time::Instant;

use super::args::Args;
use quizfs::client::{ClientOptions, ClusterClient};
use tokio::io::AsyncRead;

/// Bytes from a cheap generator, so the source costs nothing to measure.
pub(crate) struct Zeroish {
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

pub(crate) fn summary(name: &str, unit: &str, mut xs: Vec<f64>) {
    xs.sort_by(f64::total_cmp);
    let med = xs[xs.len() / 2];
    println!(
        "{name:<28} {med:>10.1} {unit:<8} (min {:.1}, max {:.1})",
        xs[0],
        xs[xs.len() - 1]
    );
}

pub(crate) async fn client_bench(args: Args) -> anyhow::Result<()> {
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
    let (kib, mib) = (args.file_kib, args.big_mib);
    for (name, unit, xs) in [
        (format!("upload {kib} KiB files"), "files/s", up),
        (format!("read {kib} KiB files"), "files/s", down),
        (format!("sequential write {mib} MiB"), "MiB/s", seq_w),
        (format!("sequential read {mib} MiB"), "MiB/s", seq_r),
    ] {
        summary(&name, unit, xs);
    }
    Ok(())
}
