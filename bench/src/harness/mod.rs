//! The harness that runs a real quizfs cluster on this machine, shared by
//! the integration tests and the failover benchmark: `storaged` processes
//! on 127.0.0.21.. (or each in its own network namespace, see [`Net`]),
//! each with its own data directory and log; faults by PID (SIGKILL,
//! SIGSTOP/SIGCONT, wipe, restart) and by link (cut, restore); `quizfs
//! mount -f` processes; and waits on conditions with a deadline that report
//! what they saw. Dropping a [`Cluster`] or a [`Mount`] ends its processes,
//! also when a test panics, and then prints the log tails.

// Harness code: a poisoned lock or a failed set-up step is a failure of the
// test or benchmark that asked for it.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::netns::Net;

mod cluster;
mod faults;
mod mount;
mod observe;

pub use cluster::{Cluster, LazyDisk, Node, TEST_CLIENT};
pub use mount::{Mount, is_mounted};

/// Path of a workspace binary: `$QUIZFS_BIN_DIR/name`, else next to the
/// test binary's directory (`target/debug/deps/..`).
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("QUIZFS_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let dir = exe.parent().expect("the test binary is in a directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent")
    } else {
        dir
    };
    dir.join(name)
}

/// Waits (blocking the thread) until `probe` returns `Ok`, polling; on
/// timeout returns an error with the last state the probe reported.
pub fn block_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(state) if start.elapsed() > timeout => {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}; last state: {state}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits until `probe` returns `Ok`, polling; on timeout panics with the
/// last state the probe reported.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(state) => last = state,
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peak resident memory of a process in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sends a signal to a process we started.
pub fn signal(pid: u32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a PID of a child this harness started.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}
