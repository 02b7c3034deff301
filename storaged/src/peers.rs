//! One lazily connected gRPC channel per peer address, shared by Raft,
//! healing and joining.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quizfs_proto::tls::Transport;
use tonic::transport::Channel;

/// How long a TCP connect to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Channels to peers, keyed by `host:port`.
#[derive(Debug, Clone)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    transport: Transport,
}

/// A peer address that is not a valid URI.
#[derive(Debug, thiserror::Error)]
#[error("invalid peer address {addr:?}: {source}")]
pub struct BadAddr {
    /// The address.
    pub addr: String,
    /// Why it is invalid.
    pub source: tonic::transport::Error,
}

impl PeerPool {
    /// A pool dialing with `transport` (this node's certificate, or plaintext).
    pub fn new(transport: Transport) -> Self {
        Self {
            channels: Arc::default(),
            transport,
        }
    }

    /// The channel to `addr`, created on first use. tonic reconnects it by
    /// itself after a failure.
    pub fn channel(&self, addr: &str) -> Result<Channel, BadAddr> {
        // The lock is held only for the map access, never across an await.
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = self
            .transport
            .endpoint(addr)
            .map_err(|source| BadAddr {
                addr: addr.to_string(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
