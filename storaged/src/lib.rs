//! The quizfs storage daemon as a library, so the binary only parses flags.
//!
//! - [`config`]: the checked command line (peers, this node, data directory).
//! - [`node`]: wiring, bootstrap or join, start and stop order.
//! - [`state`]: what the services of a node share.
//! - [`db`]: the node's sled database and its durable flush.
//! - [`disk`]: the space of the data directory's disk.
//! - [`raft`]: openraft types, the sled log store, the tonic transport, snapshots.
//! - [`meta`]: the metadata state machine: schema, commands, namespace operations.
//! - [`chunk`]: the content-addressed chunk store, garbage collection, healing.
//! - [`rpc`]: the gRPC services and the one mapping of errors to gRPC status.
//! - [`tls`]: mutual TLS on accepted connections and per-RPC authorization.

// openraft's StorageError and tonic's Status are the error types those
// APIs require; boxing them at every call would only add noise.
#![allow(clippy::result_large_err)]

pub mod chunk;
pub mod config;
pub mod db;
pub mod disk;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod raft;
pub mod rpc;
pub mod state;
pub mod tls;
