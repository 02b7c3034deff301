//! Scrubbing: every node re-reads and re-hashes every chunk it holds, in
//! the background, so that a bit that rots on a disk is found while the
//! other copies are still good, not when a client finally reads it.
//!
//! A pass starts every `--scrub-interval` (counted from the start of the
//! last one, which is remembered across restarts in `scrub-last`), or at
//! once when asked (`quizfs scrub start`). It reads at most
//! `--scrub-rate-mib` per second, so client I/O keeps its speed. A chunk
//! whose bytes do not match its name is quarantined by the store and
//! fetched again from a peer by the healer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::heal::Healer;
use super::rate::RateLimit;
use super::store::{ChunkError, ChunkStore};

/// Name of the file, in the data directory, that remembers when the last
/// complete pass started (Unix seconds).
pub const LAST_PASS_FILE: &str = "scrub-last";

/// The counters a scrubber moves, shared with the node's metrics.
#[derive(Debug, Clone, Default)]
pub struct ScrubCounters {
    /// Chunks read and found intact.
    pub checked_chunks: Counter,
    /// Bytes of those chunks.
    pub checked_bytes: Counter,
    /// Chunks found corrupt (quarantined and handed to the healer).
    pub corrupt: Counter,
    /// Chunks that could not be read at all (an I/O error of the disk).
    pub read_errors: Counter,
    /// Passes completed.
    pub passes: Counter,
}

/// Where the current pass is, or what the last one did.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// A pass is running.
    pub running: bool,
    /// When the current (or last) pass started, Unix seconds; 0: none yet.
    pub started: u64,
    /// When the last pass finished, Unix seconds; 0: none since start.
    pub finished: u64,
    /// Chunks the pass has to read.
    pub total_chunks: u64,
    /// Bytes the pass has to read.
    pub total_bytes: u64,
    /// Chunks read so far (including any gone since the pass began).
    pub done_chunks: u64,
    /// Bytes read so far.
    pub done_bytes: u64,
    /// Corrupt chunks this pass found.
    pub corrupt: u64,
    /// Chunks this pass could not read.
    pub read_errors: u64,
}

/// The scrubber of one node.
pub struct Scrubber {
    store: Arc<ChunkStore>,
    healer: Arc<Healer>,
    state_file: PathBuf,
    interval: Duration,
    rate: RateLimit,
    counters: ScrubCounters,
    progress: Mutex<Progress>,
    /// Start of the last complete pass, Unix seconds (0: never).
    last_start: Mutex<u64>,
    running: AtomicBool,
    start_now: Notify,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("interval", &self.interval)
            .field("progress", &self.progress())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Scrubber {
    /// A scrubber of `store` that keeps its state in `data_dir`, passes
    /// every `interval`, and reads at most `rate` bytes per second (0: no
    /// limit).
    pub fn new(
        store: Arc<ChunkStore>,
        healer: Arc<Healer>,
        data_dir: &std::path::Path,
        interval: Duration,
        rate: u64,
        counters: ScrubCounters,
    ) -> Self {
        let state_file = data_dir.join(LAST_PASS_FILE);
        let last_start = std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Self {
            store,
            healer,
            state_file,
            interval,
            rate: RateLimit::new(rate),
            counters,
            progress: Mutex::new(Progress::default()),
            last_start: Mutex::new(last_start),
            running: AtomicBool::new(false),
            start_now: Notify::new(),
        }
    }

    /// The current pass, or the last one.
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The counters since start.
    pub fn counters(&self) -> &ScrubCounters {
        &self.counters
    }

    /// Seconds between the starts of two passes.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The read limit in bytes per second (0: none).
    pub fn rate_limit(&self) -> u64 {
        self.rate.bytes_per_sec()
    }

    /// When the last complete pass started, Unix seconds (0: never).
    pub fn last_pass_start(&self) -> u64 {
        *self.last_start.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the next pass is due, Unix seconds.
    pub fn next_due(&self) -> u64 {
        let last = self.last_pass_start();
        if last == 0 {
            unix_now()
        } else {
            last.saturating_add(self.interval.as_secs())
        }
    }

    /// Starts a pass now; false when one is already running.
    pub fn start(&self) -> bool {
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.start_now.notify_one();
        true
    }

    /// Runs passes until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let wait = Duration::from_secs(self.next_due().saturating_sub(unix_now()));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.start_now.notified() => {}
            }
            if !self.pass(&cancel).await {
                return;
            }
        }
    }

    /// One pass over every chunk present when it starts; false when
    /// cancelled.
    async fn pass(&self, cancel: &CancellationToken) -> bool {
        self.running.store(true, Ordering::Release);
        let chunks = self.store.list_sized();
        let started = unix_now();
        let total_bytes: u64 = chunks.iter().map(|(_, l)| l).sum();
        {
            let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            *p = Progress {
                running: true,
                started,
                finished: p.finished,
                total_chunks: chunks.len() as u64,
                total_bytes,
                ..Progress::default()
            };
        }
        let limit = self.rate.bytes_per_sec();
        if limit > 0 && total_bytes / limit > self.interval.as_secs() {
            tracing::warn!(
                bytes = total_bytes,
                rate_mib = limit / (1024 * 1024),
                interval_secs = self.interval.as_secs(),
                "a scrub pass at --scrub-rate-mib takes longer than --scrub-interval: passes will run back to back"
            );
        }
        tracing::info!(
            chunks = chunks.len(),
            bytes = total_bytes,
            "scrub pass started"
        );
        for (hash, len) in chunks {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.running.store(false, Ordering::Release);
                    return false;
                }
                _ = self.rate.take(len) => {}
            }
            let verdict = self.store.verify(&hash).await;
            let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            p.done_chunks += 1;
            p.done_bytes += len;
            match verdict {
                Ok(n) => {
                    self.counters.checked_chunks.inc();
                    self.counters.checked_bytes.inc_by(n);
                }
                // Collected or re-fetched since the pass began.
                Err(ChunkError::NotFound(_)) => {}
                Err(ChunkError::Corrupt(h)) => {
                    p.corrupt += 1;
                    self.counters.corrupt.inc();
                    tracing::error!(hash = %h, "scrub found a corrupt chunk: quarantined, fetching it again from a peer");
                    self.healer.request(h);
                }
                Err(e) => {
                    p.read_errors += 1;
                    self.counters.read_errors.inc();
                    tracing::error!(error = %e, "scrub could not read a chunk");
                }
            }
        }
        let finished = unix_now();
        let summary = {
            let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            p.running = false;
            p.finished = finished;
            p.clone()
        };
        *self.last_start.lock().unwrap_or_else(|p| p.into_inner()) = started;
        if let Err(e) = write_durably(&self.state_file, started) {
            tracing::warn!(error = %e, file = %self.state_file.display(), "cannot remember the scrub pass");
        }
        self.counters.passes.inc();
        self.running.store(false, Ordering::Release);
        tracing::info!(
            chunks = summary.done_chunks,
            bytes = summary.done_bytes,
            corrupt = summary.corrupt,
            read_errors = summary.read_errors,
            secs = finished.saturating_sub(started),
            "scrub pass finished"
        );
        true
    }
}

/// Replaces `path`'s content with `value`, atomically.
fn write_durably(path: &std::path::Path, value: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{value}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
