//! What the subcommands share: the progress bar, running the workloads off
//! the runtime, and writing figures (JSON, Markdown sections).

use quizfs_bench::workloads::{self, Progress, Report, Sizes, Workload};

/// A progress bar on stderr over the steps of one run.
pub(crate) struct Bar(indicatif::ProgressBar);

impl Bar {
    pub(crate) fn new(system: &str, steps: usize) -> Self {
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
pub(crate) async fn measure(
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

/// A one-line description of this machine for BENCHMARKS.md.
pub(crate) fn machine() -> String {
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

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub(crate) fn write_json(
    path: &std::path::Path,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
    Ok(())
}

/// The command line to print: the wrapping script's, else this process's.
pub(crate) fn command_line(given: &Option<String>) -> String {
    given
        .clone()
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "))
}

/// Rewrites the `name` section (between its markers) of the Markdown file.
pub(crate) fn write_section(
    markdown: &std::path::Path,
    name: &str,
    section: &str,
) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(markdown).unwrap_or_default();
    std::fs::write(
        markdown,
        quizfs_bench::compare::splice_at(&doc, name, section),
    )?;
    Ok(())
}
