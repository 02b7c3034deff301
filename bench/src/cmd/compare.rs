//! `compare`: every system side by side, and the failover cases.

use quizfs_bench::compare::FailoverFigure;
use quizfs_bench::failover::Plan;

use super::args::CompareArgs;
use super::bench::failover_cases;
use super::output::{command_line, machine, measure, write_json, write_section};

/// Converts failover rows to the comparison's figures.
pub(crate) fn failover_figures(
    system: &str,
    rows: &[quizfs_bench::failover::Row],
) -> Vec<FailoverFigure> {
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

pub(crate) async fn compare_bench(args: CompareArgs) -> anyhow::Result<()> {
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
    let plan = Plan {
        down: std::time::Duration::from_secs_f64(args.down_secs),
        ..Plan::default()
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
                let rows = failover_cases(&mut q, &faults, &plan).await;
                results.failover.extend(failover_figures(QUIZFS, &rows));
            }
            _ => match tokio::task::spawn_blocking(quizfs_bench::gluster::Gluster::start).await? {
                Ok(mut g) => {
                    results
                        .reports
                        .push(measure(GLUSTER, g.mount_dir(), &sizes, &workloads).await);
                    let rows = failover_cases(&mut g, &faults, &plan).await;
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
