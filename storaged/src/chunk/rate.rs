//! A byte-rate limit shared by the background readers of the chunk store
//! (healing, scrubbing), so that client I/O keeps its speed.

use std::time::Duration;

use tokio::time::Instant;

/// Lets through at most a set number of bytes per second: each caller
/// reserves its bytes and waits until the rate allows them.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    next_free: tokio::sync::Mutex<Instant>,
}

impl RateLimit {
    /// A limit of `bytes_per_sec` (0: none).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            next_free: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    /// The limit in bytes per second (0: none).
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits until the rate allows `bytes` more.
    pub async fn take(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let wait_until = {
            let mut next = self.next_free.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + cost;
            start
        };
        tokio::time::sleep_until(wait_until).await;
    }
}
