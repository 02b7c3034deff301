//! Chunk upload and download, streamed in pieces so memory stays bounded.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quizfs_proto::{self as pb, ChunkHash, PIECE_SIZE, chunks_server::Chunks};
use tokio::sync::Semaphore;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::status;
use crate::chunk::store::ChunkError;
use crate::state::NodeState;

/// Most chunk uploads a node receives at once; more wait their turn. Each
/// holds up to a chunk in memory until it is checked and written, so
/// uploads hold at most 256 MiB.
pub const MAX_UPLOADS: usize = 64;
/// Most chunk uploads a node receives at once from one peer (as many as
/// a client sends at once).
pub const MAX_UPLOADS_PER_PEER: usize = quizfs_proto::MAX_UPLOADS_PER_CLIENT;
/// Longest a chunk upload may wait for its next piece before it is dropped
/// (a stalled sender must not hold an upload slot and its memory).
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most chunk downloads a node serves at once (up to 4 MiB of memory each).
pub const MAX_DOWNLOADS: usize = 32;

/// Serves chunk uploads and downloads.
#[derive(Debug, Clone)]
pub struct ChunkService {
    /// The node.
    pub state: Arc<NodeState>,
    slots: Arc<Slots>,
}

/// The transfers a node serves at once.
#[derive(Debug)]
struct Slots {
    /// Chunk uploads received at once (each holds up to a chunk in memory).
    uploads: Semaphore,
    /// Chunk uploads received at once per peer (by certificate name, or by
    /// address in plaintext), so one client cannot take every upload slot.
    per_peer: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Chunk downloads served at once (each holds a chunk in memory).
    downloads: Arc<Semaphore>,
}

impl ChunkService {
    /// The chunk service of a node, with its transfer slots.
    pub fn new(state: Arc<NodeState>) -> Self {
        let slots = Slots {
            uploads: Semaphore::new(MAX_UPLOADS),
            per_peer: Mutex::default(),
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
        };
        Self {
            state,
            slots: Arc::new(slots),
        }
    }

    /// The status for a failed read; a chunk found corrupt goes to the
    /// healer first.
    fn read_failed(&self, e: &ChunkError) -> Status {
        if let ChunkError::Corrupt(h) = e {
            if let Some(healer) = self.state.healer.get() {
                healer.request(*h);
            }
        }
        status::chunk_error(e)
    }
}

type PieceStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkPiece, Status>> + Send>>;

#[tonic::async_trait]
impl Chunks for ChunkService {
    #[tracing::instrument(skip_all)]
    async fn put(
        &self,
        req: Request<Streaming<pb::PutPiece>>,
    ) -> Result<Response<pb::PutReply>, Status> {
        // Bounds the uploads buffered and written at once: per sender,
        // so that one cannot take every slot, and in all.
        let peer = req
            .extensions()
            .get::<crate::tls::PeerInfo>()
            .map(|p| match &p.id {
                Some(id) => id.name().to_string(),
                None => p.remote.map(|a| a.ip().to_string()).unwrap_or_default(),
            })
            .unwrap_or_default();
        let per_peer = self
            .slots
            .per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_UPLOADS_PER_PEER)))
            .clone();
        let closed = |_| Status::unavailable("shutting down");
        let _mine = match per_peer.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.state.metrics.upload_limit_hits.inc();
                per_peer.acquire_owned().await.map_err(closed)?
            }
        };
        let _all = self.slots.uploads.acquire().await.map_err(closed)?;
        let mut stream = req.into_inner();
        let idle = UPLOAD_IDLE_TIMEOUT;
        let stalled = || Status::deadline_exceeded(format!("no data for {idle:?}"));
        let mut next = async || match tokio::time::timeout(idle, stream.message()).await {
            Ok(r) => r,
            Err(_) => Err(stalled()),
        };
        let Some(first) = next().await? else {
            return Err(Status::invalid_argument("empty chunk upload"));
        };
        let hash = ChunkHash::from_slice(&first.hash)
            .ok_or_else(|| Status::invalid_argument("chunk hash must be 32 bytes"))?;
        let mut writer = self
            .state
            .store
            .writer(hash)
            .map_err(|e| status::chunk_error(&e))?;
        writer
            .write(&first.data)
            .map_err(|e| status::chunk_error(&e))?;
        while let Some(piece) = next().await? {
            writer
                .write(&piece.data)
                .map_err(|e| status::chunk_error(&e))?;
        }
        let already_present = writer.finish().await.map_err(|e| {
            if let ChunkError::Mismatch { .. } = e {
                tracing::warn!(error = %e, "refused a chunk whose content does not match its hash");
            }
            status::chunk_error(&e)
        })?;
        Ok(Response::new(pb::PutReply { already_present }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_range(
        &self,
        req: Request<pb::GetRangeRequest>,
    ) -> Result<Response<pb::RangeReply>, Status> {
        let r = req.get_ref();
        let hash = ChunkHash::from_slice(&r.hash)
            .ok_or_else(|| Status::invalid_argument("chunk hash must be 32 bytes"))?;
        if r.len == 0 || r.len > pb::MAX_RANGE_BYTES {
            return Err(Status::invalid_argument(format!(
                "a range is 1 to {} bytes",
                pb::MAX_RANGE_BYTES
            )));
        }
        if r.offset >= pb::CHUNK_SIZE as u64 {
            return Err(Status::out_of_range("offset beyond any chunk"));
        }
        // A range holds at most a whole small chunk in memory: the same
        // bound as downloads.
        let _permit = self
            .slots
            .downloads
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let to = r.offset + u64::from(r.len);
        match self.state.store.get_range(&hash, r.offset, to).await {
            Ok(c) => Ok(Response::new(pb::RangeReply {
                chunk_len: c.len,
                start: c.start,
                data: c.data,
                proof: c.proof.iter().map(|p| p.to_vec()).collect(),
            })),
            Err(e) => Err(self.read_failed(&e)),
        }
    }

    async fn has(&self, req: Request<pb::HasRequest>) -> Result<Response<pb::HasReply>, Status> {
        let hashes = &req.get_ref().hashes;
        if hashes.len() > pb::MAX_HAS {
            return Err(Status::invalid_argument(format!(
                "at most {} hashes per request",
                pb::MAX_HAS
            )));
        }
        let hashes: Vec<ChunkHash> = hashes
            .iter()
            .map(|h| ChunkHash::from_slice(h))
            .collect::<Option<_>>()
            .ok_or_else(|| Status::invalid_argument("chunk hash must be 32 bytes"))?;
        Ok(Response::new(pb::HasReply {
            present: self.state.store.durable(&hashes),
        }))
    }

    type GetStream = PieceStream;

    #[tracing::instrument(skip_all)]
    async fn get(
        &self,
        req: Request<pb::GetChunkRequest>,
    ) -> Result<Response<PieceStream>, Status> {
        let hash = ChunkHash::from_slice(&req.get_ref().hash)
            .ok_or_else(|| Status::invalid_argument("chunk hash must be 32 bytes"))?;
        // Bounds the chunks held in memory for downloads: the permit goes
        // with the reply stream and is released when it ends.
        let permit = self
            .slots
            .downloads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let data = match self.state.store.get(&hash).await {
            Ok(d) => d,
            Err(e) => return Err(self.read_failed(&e)),
        };
        let pieces: Vec<Result<pb::ChunkPiece, Status>> = if data.is_empty() {
            vec![Ok(pb::ChunkPiece { data: Vec::new() })]
        } else {
            data.chunks(PIECE_SIZE)
                .map(|p| Ok(pb::ChunkPiece { data: p.to_vec() }))
                .collect()
        };
        let stream = tokio_stream::StreamExt::map(tokio_stream::iter(pieces), move |p| {
            let _held = &permit;
            p
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
