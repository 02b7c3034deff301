//! `quizfs scrub status|start HOST`: each node's scrub pass, and starting
//! one now.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use quizfs_proto as pb;

use crate::{TlsArgs, ask_each, cluster_members, human};

/// `quizfs scrub ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ScrubCmd {
    /// Show each node's scrub pass: running or not, its progress, what it
    /// found, when the next starts. Exits 0 when every node answers and no
    /// node's last pass found a corrupt or unreadable chunk, 1 otherwise.
    Status {
        /// Any storage node, host[:port].
        host: String,
        /// How long to wait for each node.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Start a pass now on every node (one already running goes on).
    /// Needs a read-write client certificate.
    Start {
        /// Any storage node, host[:port].
        host: String,
        /// Then wait up to this many seconds for every node to finish its
        /// pass, and show what they found (exit status as for `status`).
        #[arg(long, default_value_t = 0)]
        wait: u64,
        /// How long to wait for each node's answer.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

/// Runs a scrub command.
pub(crate) async fn run(cmd: ScrubCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ScrubCmd::Status {
            host,
            timeout_ms,
            tls,
        } => {
            let t = tls.transport()?;
            let timeout = Duration::from_millis(timeout_ms);
            let members = cluster_members(&host, timeout, &t).await?;
            let replies = ask_all(&members, timeout, &t).await;
            Ok(print(&replies))
        }
        ScrubCmd::Start {
            host,
            wait,
            timeout_ms,
            tls,
        } => {
            let t = tls.transport()?;
            let timeout = Duration::from_millis(timeout_ms);
            let members = cluster_members(&host, timeout, &t).await?;
            let before = ask_all(&members, timeout, &t).await;
            let mut failed = false;
            let started = ask_each(&members, timeout, &t, |mut rpc| async move {
                rpc.scrub_start(pb::ScrubStartRequest {}).await
            })
            .await;
            for (m, reply) in started {
                match reply {
                    Ok(r) if r.started => {
                        println!("node {} {}: scrub pass started", m.id, m.addr);
                    }
                    Ok(_) => {
                        println!("node {} {}: a scrub pass is already running", m.id, m.addr)
                    }
                    Err(e) => {
                        failed = true;
                        println!("node {} {}: not started: {e}", m.id, m.addr);
                    }
                }
            }
            if wait == 0 {
                return Ok(if failed {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                });
            }
            // Done when each node has completed one more pass than before.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
            loop {
                let now = ask_all(&members, timeout, &t).await;
                let done = now
                    .iter()
                    .zip(&before)
                    .all(|((_, n), (_, b))| match (n, b) {
                        (Some(n), Some(b)) => n.passes_total > b.passes_total && !n.running,
                        _ => false,
                    });
                if done || tokio::time::Instant::now() >= deadline {
                    let code = print(&now);
                    if !done {
                        eprintln!(
                            "quizfs: scrub: not every node finished its pass within {wait} s"
                        );
                        return Ok(ExitCode::from(1));
                    }
                    return Ok(code);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Every member's scrub state (`None`: it did not answer).
async fn ask_all(
    members: &pb::MembersReply,
    timeout: Duration,
    transport: &pb::tls::Transport,
) -> Vec<(pb::Member, Option<pb::ScrubStatusReply>)> {
    ask_each(members, timeout, transport, |mut rpc| async move {
        rpc.scrub_status(pb::ScrubStatusRequest {}).await
    })
    .await
    .into_iter()
    .map(|(m, r)| (m, r.ok()))
    .collect()
}

/// Seconds from now to `unix` (negative: past).
fn from_now(unix: u64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    unix as i64 - now as i64
}

/// A span of seconds as "3d 4h", "5h 2m", "4m 10s" or "12s".
fn span(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Prints one paragraph per node; the exit status.
fn print(replies: &[(pb::Member, Option<pb::ScrubStatusReply>)]) -> ExitCode {
    let mut clean = true;
    for (m, reply) in replies {
        let Some(r) = reply else {
            clean = false;
            println!("node {} {}: down (its scrub is unknown)", m.id, m.addr);
            continue;
        };
        let read = format!(
            "{} of {} chunks, {} of {}",
            r.done_chunks,
            r.total_chunks,
            human(r.done_bytes),
            human(r.total_bytes)
        );
        let found = format!("{} corrupt, {} unreadable", r.corrupt, r.read_errors);
        if r.running {
            let pct = if r.total_bytes == 0 {
                100.0
            } else {
                r.done_bytes as f64 * 100.0 / r.total_bytes as f64
            };
            println!(
                "node {} {}: pass running, {pct:.0}% ({read}), started {} ago; found so far: {found}",
                m.id,
                m.addr,
                span(from_now(r.started_unix).unsigned_abs())
            );
        } else if r.finished_unix == 0 {
            println!(
                "node {} {}: no pass since the node started; next in {}",
                m.id,
                m.addr,
                span(from_now(r.next_due_unix).max(0) as u64)
            );
        } else {
            clean &= r.corrupt == 0 && r.read_errors == 0;
            println!(
                "node {} {}: last pass finished {} ago, took {}: {read}; found {found}; next in {}",
                m.id,
                m.addr,
                span(from_now(r.finished_unix).unsigned_abs()),
                span(r.finished_unix.saturating_sub(r.started_unix)),
                span(from_now(r.next_due_unix).max(0) as u64)
            );
        }
        println!(
            "  since start: {} passes, {} corrupt, {} unreadable; every {} at {}",
            r.passes_total,
            r.corrupt_total,
            r.read_errors_total,
            span(r.interval_secs),
            if r.rate == 0 {
                "no rate limit".to_string()
            } else {
                format!("{}/s at most", human(r.rate))
            }
        );
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
