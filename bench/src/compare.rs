//! The side-by-side comparison's output: from the workload reports of every
//! system and the failover rows of quizfs and GlusterFS, the Markdown
//! section of `BENCHMARKS.md` (machine, command, one table of every figure,
//! the quizfs/GlusterFS ratios, the targets and whether each is met) and
//! one SVG chart per workload.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::workloads::{Figure, Report};

/// The systems' names, as the comparison uses them.
pub const LOCAL: &str = "local disk";
/// A FUSE passthrough (bindfs) over the local disk.
pub const BINDFS: &str = "bindfs";
/// quizfs.
pub const QUIZFS: &str = "quizfs";
/// GlusterFS replica 3.
pub const GLUSTER: &str = "GlusterFS";

/// One failover case, reduced to what the comparison shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverFigure {
    /// System name.
    pub system: String,
    /// `kill`, `freeze`, `cut`.
    pub fault: String,
    /// `follower`, `leader` or `node`.
    pub role: String,
    /// Failed operations.
    pub failed: usize,
    /// Uploads lost or corrupt.
    pub lost: usize,
    /// Longest single system call, ms.
    pub longest_ms: f64,
    /// Heal time in seconds, if it healed.
    pub heal_s: Option<f64>,
}

/// Everything one comparison run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// Workload reports, one per system.
    pub reports: Vec<Report>,
    /// Failover cases of every system that has them.
    pub failover: Vec<FailoverFigure>,
    /// Errors that stopped a system from being measured at all.
    pub errors: Vec<String>,
}

impl Results {
    fn report(&self, system: &str) -> Option<&Report> {
        self.reports.iter().find(|r| r.system == system)
    }

    fn median(&self, system: &str, key: &str) -> Option<f64> {
        self.report(system)
            .and_then(|r| r.figure(key))
            .map(Figure::median)
    }

    /// Worst pause of `system` for `fault` over its cases (ms).
    fn worst_pause(&self, system: &str, fault: &str) -> Option<f64> {
        self.failover
            .iter()
            .filter(|f| f.system == system && f.fault == fault)
            .map(|f| f.longest_ms)
            .reduce(f64::max)
    }

    fn failed(&self, system: &str) -> usize {
        self.failover
            .iter()
            .filter(|f| f.system == system)
            .map(|f| f.failed + f.lost)
            .sum()
    }
}

/// quizfs's advantage on a figure: > 1 means quizfs is better (for time
/// and latency, GlusterFS's value over quizfs's).
fn advantage(higher_is_better: bool, quizfs: f64, gluster: f64) -> f64 {
    if higher_is_better {
        quizfs / gluster
    } else {
        gluster / quizfs
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A target and how it fared.
struct Target {
    what: String,
    needed: String,
    got: String,
    met: Option<bool>,
}

fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let q = |k: &str| r.median(QUIZFS, k);
    let g = |k: &str| r.median(GLUSTER, k);
    let mut ratio = |what: &str, key: &str, higher: bool, need: f64| {
        let (got, met) = match (q(key), g(key)) {
            (Some(a), Some(b)) => {
                let x = advantage(higher, a, b);
                (format!("{x:.2}×"), Some(x >= need))
            }
            _ => ("not measured".into(), None),
        };
        out.push(Target {
            what: what.into(),
            needed: format!("≥ {need}× GlusterFS"),
            got,
            met,
        });
    };
    ratio("uploads files/s", "upload_files", true, 3.0);
    ratio(
        "uploads p99 latency (GlusterFS ÷ quizfs)",
        "upload_p99",
        false,
        2.0,
    );
    ratio("uploads, 3 writers, files/s", "upload3_files", true, 3.0);
    ratio(
        "uploads, 16 writers, one directory",
        "upload16_files",
        true,
        3.0,
    );
    ratio(
        "uploads, 16 writers, a directory each",
        "upload16d_files",
        true,
        3.0,
    );
    for (what, key) in [
        ("create", "meta_create"),
        ("stat", "meta_stat"),
        ("rename", "meta_rename"),
        ("unlink", "meta_unlink"),
    ] {
        ratio(what, key, true, 3.0);
    }
    ratio("ls -l (GlusterFS time ÷ quizfs time)", "ls_l", false, 3.0);
    ratio("seq write", "seq_write", true, 1.2);
    ratio("seq read, cold", "seq_read_cold", true, 1.0);
    for key in [
        "rand_read_qd1",
        "rand_read_qd16",
        "rand_write_qd1",
        "rand_write_qd16",
    ] {
        ratio(key, key, true, 1.0);
    }
    ratio("SQLite autocommit inserts", "sqlite_autocommit", true, 1.0);
    ratio("SQLite 20,000-row transaction", "sqlite_txn", false, 1.0);
    ratio("dbench MB/s", "dbench_mbs", true, 1.0);
    let longest = q("dbench_max_ms");
    out.push(Target {
        what: "dbench longest operation".into(),
        needed: "≤ 1000 ms".into(),
        got: longest.map_or("not measured".into(), |v| format!("{} ms", fmt(v))),
        met: longest.map(|v| v <= 1000.0),
    });
    let ceiling = |what: &str, key: &str, base: Option<f64>, frac: f64, need: &str| {
        let (got, met) = match (q(key), base) {
            (Some(a), Some(b)) => (
                format!("{} of {} MiB/s", fmt(a / b), fmt(b)),
                Some(a >= frac * b),
            ),
            _ => ("not measured".into(), None),
        };
        Target {
            what: what.into(),
            needed: need.into(),
            got,
            met,
        }
    };
    out.push(ceiling(
        "seq write vs replica-3 ceiling (local disk ÷ 3)",
        "seq_write",
        r.median(LOCAL, "seq_write").map(|v| v / 3.0),
        0.9,
        "≥ 0.9",
    ));
    out.push(ceiling(
        "seq read, cold, vs FUSE passthrough",
        "seq_read_cold",
        r.median(BINDFS, "seq_read_cold"),
        0.7,
        "≥ 0.7",
    ));
    for fault in ["kill", "freeze", "cut"] {
        let (got, met) = match (r.worst_pause(QUIZFS, fault), r.worst_pause(GLUSTER, fault)) {
            (Some(a), Some(b)) => (
                format!("{} ms vs {} ms ({:.2}×)", fmt(a), fmt(b), a / b),
                Some(a <= b / 5.0),
            ),
            _ => ("not measured".into(), None),
        };
        out.push(Target {
            what: format!("failover pause, {fault} (worst case)"),
            needed: "≤ 1/5 of GlusterFS".into(),
            got,
            met,
        });
    }
    let (qf, gf) = (r.failed(QUIZFS), r.failed(GLUSTER));
    out.push(Target {
        what: "failed or lost operations in failover".into(),
        needed: "0".into(),
        got: format!("quizfs {qf}, GlusterFS {gf}"),
        met: Some(qf == 0),
    });
    out
}

/// The Markdown section: machine, command, tables, targets, charts.
pub fn markdown(r: &Results, machine: &str, command: &str, charts: &str) -> String {
    let mut s = String::new();
    let systems: Vec<&str> = r.reports.iter().map(|x| x.system.as_str()).collect();
    let _ = writeln!(s, "Machine: {machine}\n");
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = writeln!(
        s,
        "Each figure is the median of the repetitions (min–max in the JSON, \
         `bench/results/compare.json`). \"advantage\" is quizfs over GlusterFS: \
         above 1 quizfs is better (for latency and time, GlusterFS's value over \
         quizfs's). Cold reads drop the kernel page cache first; a client's own \
         cache (quizfs's chunk cache, GlusterFS's io-cache) is not dropped.\n"
    );
    let _ = write!(s, "| workload | unit |");
    for sys in &systems {
        let _ = write!(s, " {sys} |");
    }
    let _ = writeln!(s, " advantage |");
    let _ = write!(s, "|---|---|");
    for _ in &systems {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s, "---:|");
    let mut keys: Vec<&Figure> = Vec::new();
    for rep in &r.reports {
        for f in &rep.figures {
            if !keys.iter().any(|k| k.key == f.key) {
                keys.push(f);
            }
        }
    }
    for k in keys {
        let _ = write!(s, "| {} | {} |", k.label, k.unit);
        for sys in &systems {
            let _ = write!(s, " {} |", r.median(sys, &k.key).map_or("–".into(), fmt));
        }
        let adv = match (r.median(QUIZFS, &k.key), r.median(GLUSTER, &k.key)) {
            (Some(a), Some(b)) => format!("{:.2}×", advantage(k.higher_is_better, a, b)),
            _ => "–".into(),
        };
        let _ = writeln!(s, " {adv} |");
    }
    let _ = writeln!(s);
    if !r.failover.is_empty() {
        let _ = writeln!(
            s,
            "Failover, under one 100 KiB upload (write, fsync, close, read back) \
             every 20 ms plus a reader; the node stays failed for the time given \
             in the command, then returns:\n"
        );
        let _ = writeln!(
            s,
            "| system | case | failed ops | lost | longest pause ms | heal s |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
        for f in &r.failover {
            let _ = writeln!(
                s,
                "| {} | {} {} | {} | {} | {:.0} | {} |",
                f.system,
                f.fault,
                f.role,
                f.failed,
                f.lost,
                f.longest_ms,
                f.heal_s.map_or("not healed".into(), |h| format!("{h:.1}"))
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "Targets (each a ratio measured in this run):\n");
    let _ = writeln!(s, "| target | needed | measured | met |");
    let _ = writeln!(s, "|---|---|---|:-:|");
    for t in targets(r) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {} | {} | {} | {met} |", t.what, t.needed, t.got);
    }
    let _ = writeln!(s);
    for rep in &r.reports {
        for e in &rep.errors {
            let _ = writeln!(s, "- {} error: {e}", rep.system);
        }
    }
    for e in &r.errors {
        let _ = writeln!(s, "- error: {e}");
    }
    let _ = writeln!(s, "\n{charts}");
    s
}

/// The charts: one per workload, figure keys with their titles.
pub const CHARTS: &[(&str, &str, &[&str])] = &[
    (
        "seq",
        "Sequential 1 MiB blocks, MiB/s",
        &["seq_write", "seq_read_warm", "seq_read_cold"],
    ),
    (
        "uploads",
        "100 KiB uploads, files/s",
        &[
            "upload_files",
            "upload3_files",
            "upload16_files",
            "upload16d_files",
            "upload_readback",
        ],
    ),
    (
        "upload-latency",
        "100 KiB upload latency, ms (lower is better)",
        &[
            "upload_p50",
            "upload_p99",
            "upload3_p99",
            "upload16_p99",
            "upload16d_p99",
        ],
    ),
    (
        "metadata",
        "Metadata, ops/s",
        &["meta_create", "meta_stat", "meta_rename", "meta_unlink"],
    ),
    ("ls", "ls -l, seconds (lower is better)", &["ls_l"]),
    (
        "random",
        "Random 4 KiB, IOPS",
        &[
            "rand_read_qd1",
            "rand_read_qd16",
            "rand_write_qd1",
            "rand_write_qd16",
        ],
    ),
    (
        "sqlite",
        "SQLite autocommit inserts/s",
        &["sqlite_autocommit"],
    ),
    ("dbench", "dbench, 4 clients, MB/s", &["dbench_mbs"]),
];

const COLORS: [RGBColor; 4] = [
    RGBColor(150, 150, 150),
    RGBColor(90, 160, 220),
    RGBColor(230, 120, 40),
    RGBColor(70, 150, 70),
];

/// One bar chart: groups of bars (one per system) on a log scale, each
/// labelled with its value.
fn bar_chart(
    path: &Path,
    title: &str,
    groups: &[(String, Vec<(String, f64)>)],
) -> Result<(), String> {
    let bars: usize = groups.iter().map(|g| g.1.len()).sum();
    let height = 60 + bars as u32 * 18 + groups.len() as u32 * 14;
    let root = SVGBackend::new(path, (760, height)).into_drawing_area();
    let e = |x: DrawingAreaErrorKind<std::io::Error>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let font = ("sans-serif", 13).into_font();
    root.draw(&Text::new(
        title.to_string(),
        (10, 8),
        font.clone().style(FontStyle::Bold),
    ))
    .map_err(e)?;
    let max = groups
        .iter()
        .flat_map(|g| g.1.iter().map(|b| b.1))
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(1.0f64, f64::max);
    let min = groups
        .iter()
        .flat_map(|g| g.1.iter().map(|b| b.1))
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(max, f64::min);
    // Log scale from a decade under the smallest value to the largest.
    let lo = (min / 10.0).log10().floor();
    let hi = max.log10().ceil().max(lo + 1.0);
    let (x0, x1) = (250i32, 680i32);
    let xpos = |v: f64| -> i32 {
        let t = ((v.max(10f64.powf(lo)).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
        x0 + (t * f64::from(x1 - x0)) as i32
    };
    let mut y = 34i32;
    let small = ("sans-serif", 11).into_font();
    for (label, group) in groups {
        root.draw(&Text::new(
            label.clone(),
            (10, y),
            small.clone().style(FontStyle::Bold),
        ))
        .map_err(e)?;
        y += 14;
        for (i, (sys, v)) in group.iter().enumerate() {
            root.draw(&Text::new(sys.clone(), (24, y + 2), small.clone()))
                .map_err(e)?;
            let color = COLORS[i % COLORS.len()];
            if v.is_finite() && *v > 0.0 {
                root.draw(&Rectangle::new(
                    [(x0, y), (xpos(*v).max(x0 + 1), y + 14)],
                    color.filled(),
                ))
                .map_err(e)?;
            }
            root.draw(&Text::new(
                fmt(*v),
                (xpos(*v).max(x0 + 1) + 4, y + 2),
                small.clone(),
            ))
            .map_err(e)?;
            y += 18;
        }
    }
    root.draw(&Text::new(
        format!("log scale, 10^{lo:.0} to 10^{hi:.0}"),
        (x0, y + 2),
        ("sans-serif", 10).into_font(),
    ))
    .map_err(e)?;
    root.present().map_err(e)
}

/// Draws every chart into `dir` and returns the Markdown that shows them
/// (paths relative to the repository root).
pub fn charts(r: &Results, dir: &Path, rel: &str) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut md = String::new();
    for (name, title, keys) in CHARTS {
        let groups: Vec<(String, Vec<(String, f64)>)> = keys
            .iter()
            .filter_map(|k| {
                let label = r
                    .reports
                    .iter()
                    .find_map(|rep| rep.figure(k))
                    .map(|f| f.label.clone())?;
                let bars = r
                    .reports
                    .iter()
                    .map(|rep| {
                        (
                            rep.system.clone(),
                            rep.figure(k).map_or(f64::NAN, Figure::median),
                        )
                    })
                    .collect();
                Some((label, bars))
            })
            .collect();
        if groups.is_empty() {
            continue;
        }
        let file = format!("{name}.svg");
        bar_chart(&dir.join(&file), title, &groups)?;
        let _ = writeln!(md, "![{title}]({rel}/{file})");
    }
    if !r.failover.is_empty() {
        let mut groups = Vec::new();
        for fault in ["kill", "freeze", "cut"] {
            let bars: Vec<(String, f64)> = [QUIZFS, GLUSTER]
                .iter()
                .filter_map(|s| r.worst_pause(s, fault).map(|v| (s.to_string(), v)))
                .collect();
            if !bars.is_empty() {
                groups.push((format!("{fault} a node (worst case)"), bars));
            }
        }
        let title = "Failover: longest pause, ms (lower is better)";
        bar_chart(&dir.join("failover.svg"), title, &groups)?;
        let _ = writeln!(md, "![{title}]({rel}/failover.svg)");
    }
    Ok(md)
}

/// Replaces what lies between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
/// in `doc` with `section`, or appends both markers and the section.
pub fn splice_at(doc: &str, name: &str, section: &str) -> String {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{begin}\n{section}{}", &doc[..b], &doc[e..]),
        _ => format!("{doc}\n{begin}\n{section}{end}\n"),
    }
}

/// The scaling table's Markdown: uploads and metadata at each volume size,
/// then sequential throughput at each file size.
pub fn scale_markdown(rows: &[crate::workloads::ScaleRow], machine: &str, command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Machine: {machine}\n");
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = writeln!(
        s,
        "Each figure is the median of the repetitions (every sample in \
         `bench/results/scale.json`). The volume holds empty files in \
         directories of 1,000; each probe works in a fresh directory beside \
         them.\n"
    );
    let get = |r: &crate::workloads::ScaleRow, key: &str| {
        r.report
            .figure(key)
            .map_or_else(|| "–".to_string(), |f| fmt(f.median()))
    };
    let _ = writeln!(
        s,
        "| files in the volume | fill, s | uploads, files/s | upload p99, ms | create, ops/s | stat (cold), ops/s | rename, ops/s | unlink, ops/s |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| r.seq_mib == 0) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.files,
            fmt(r.fill_secs),
            get(r, "upload_files"),
            get(r, "upload_p99"),
            get(r, "meta_create"),
            get(r, "meta_stat"),
            get(r, "meta_rename"),
            get(r, "meta_unlink"),
        );
    }
    let _ = writeln!(
        s,
        "\n| file size | seq write + fsync, MiB/s | read warm, MiB/s | read cold, MiB/s |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| r.seq_mib != 0) {
        let _ = writeln!(
            s,
            "| {} MiB | {} | {} | {} |",
            r.seq_mib,
            get(r, "seq_write"),
            get(r, "seq_read_warm"),
            get(r, "seq_read_cold"),
        );
    }
    for r in rows {
        for e in &r.report.errors {
            let _ = writeln!(s, "\nerror ({}): {e}", r.report.system);
        }
    }
    s.push('\n');
    s
}

/// A FUSE passthrough (Debian's `bindfs`) of a fresh directory: the
/// ceiling of any FUSE file system on this disk. Dropping it unmounts it
/// and removes both directories.
#[derive(Debug)]
pub struct Bindfs {
    _base: tempfile::TempDir,
    /// The mounted view.
    pub mount: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Bindfs {
    /// Mounts a passthrough of a new directory under `under`.
    pub fn start(under: &Path) -> Result<Self, String> {
        let base = tempfile::Builder::new()
            .prefix("quizfs-bindfs-")
            .tempdir_in(under)
            .map_err(|e| format!("temp dir: {e}"))?;
        let src = base.path().join("src");
        let mount = base.path().join("mnt");
        for d in [&src, &mount] {
            std::fs::create_dir(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        // -f: foreground, so the process is this value's child and ends
        // with it.
        let child = std::process::Command::new("bindfs")
            .arg("-f")
            .arg(&src)
            .arg(&mount)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("bindfs (apt-get install bindfs): {e}"))?;
        let b = Self {
            _base: base,
            mount,
            child: Some(child),
        };
        crate::harness::block_until(std::time::Duration::from_secs(10), "bindfs mounted", || {
            crate::harness::is_mounted(&b.mount)
                .then_some(())
                .ok_or_else(|| "not mounted".to_string())
        })?;
        Ok(b)
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        crate::gluster::unmount(&self.mount);
        if let Some(mut c) = self.child.take() {
            if crate::harness::block_until(std::time::Duration::from_secs(5), "bindfs exit", || {
                c.try_wait()
                    .ok()
                    .flatten()
                    .map(|_| ())
                    .ok_or_else(String::new)
            })
            .is_err()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
