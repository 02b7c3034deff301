//! Garbage collection: a chunk that no file references any more is deleted
//! once its file is older than the grace period, so that a chunk uploaded
//! for a write whose commit is still on its way survives.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use super::store::ChunkStore;
use crate::meta::read::MetaReader;

/// Runs a collection every `interval` until cancelled.
pub async fn run(
    store: Arc<ChunkStore>,
    reader: MetaReader,
    interval: Duration,
    grace: Duration,
    deleted_total: Counter,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let store = store.clone();
        let reader = reader.clone();
        let deleted = tokio::task::spawn_blocking(move || collect(&store, &reader, grace)).await;
        match deleted {
            Ok(0) | Err(_) => {}
            Ok(n) => {
                deleted_total.inc_by(n as u64);
                tracing::info!(deleted = n, "unreferenced chunks collected");
            }
        }
    }
}

/// One pass: deletes old unreferenced chunks, returns how many.
pub fn collect(store: &ChunkStore, reader: &MetaReader, grace: Duration) -> usize {
    let mut deleted = 0;
    for hash in store.list() {
        let unreferenced = || matches!(reader.is_referenced(&hash.0), Ok(false));
        if !unreferenced() {
            continue;
        }
        match store.remove_if_old(&hash, grace, unreferenced) {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(hash = ?hash, error = %e, "chunk collection failed"),
        }
    }
    deleted
}
