//! `run`, `oplat`, `scale` and `failover`: one system at a time.

use quizfs_bench::failover::{self, Fault, Plan, Quizfs};
use quizfs_bench::workloads;

use super::args::{FailoverArgs, LogflushArgs, OplatArgs, RunArgs, ScaleArgs};
use super::output::{Bar, command_line, machine, measure, write_json, write_section};

pub(crate) async fn run_bench(args: RunArgs) -> anyhow::Result<()> {
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

/// `quizfs-bench logflush`: a durable append into a growing file against
/// one into zeros written first.
pub(crate) fn logflush_bench(args: LogflushArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    anyhow::ensure!(args.size > 0, "--size must be at least 1");
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a directory",
        args.dir.display()
    );
    let rows = workloads::logflush::logflush(&args.dir, args.count, args.size)
        .map_err(anyhow::Error::msg)?;
    let table = workloads::oplat::table(&rows);
    print!("{table}");
    Ok(())
}

pub(crate) fn oplat_bench(args: OplatArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a directory",
        args.dir.display()
    );
    let read = |addrs: &[String]| -> anyhow::Result<Vec<_>> {
        addrs
            .iter()
            .map(|a| quizfs_bench::nodestats::scrape(a).map_err(anyhow::Error::msg))
            .collect()
    };
    let before = read(&args.metrics)?;
    let rows = workloads::oplat::oplat(&args.dir, args.count).map_err(anyhow::Error::msg)?;
    print!("{}", workloads::oplat::table(&rows));
    if !args.metrics.is_empty() {
        let after = read(&args.metrics)?;
        println!("\n| node | stage (mean between two readings of /metrics) | calls | mean µs |");
        println!("|---|---|---:|---:|");
        for ((addr, b), a) in args.metrics.iter().zip(&before).zip(&after) {
            for s in quizfs_bench::nodestats::stages(b, a) {
                println!("| {addr} | {} | {} | {:.0} |", s.name, s.count, s.mean_us);
            }
        }
    }
    if let Some(path) = &args.json {
        write_json(path, &rows)?;
    }
    Ok(())
}

pub(crate) async fn scale_bench(args: ScaleArgs) -> anyhow::Result<()> {
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
            let q = Quizfs::start().await;
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

pub(crate) async fn failover_bench(args: FailoverArgs) -> anyhow::Result<()> {
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
    let rows = failover_cases(&mut sys, &faults, &plan).await;
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

/// Runs the failover cases on `sys` (followers and, where the system has
/// one, the leader).
pub(crate) async fn failover_cases<S: failover::System>(
    sys: &mut S,
    faults: &[Fault],
    plan: &Plan,
) -> Vec<failover::Row> {
    let has_leader = sys.leader().await.is_some();
    let mut rows = Vec::new();
    for on_leader in [false, true] {
        if on_leader && !has_leader {
            break;
        }
        for &fault in faults {
            eprintln!("{}: failover {} ...", sys.name(), fault.name());
            let row = failover::run_case(sys, fault, on_leader, plan).await;
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
    rows
}
