//! The gRPC services of a node. All four share one server and one
//! [`NodeState`](crate::state::NodeState).

pub mod chunk_service;
pub mod cluster_service;
pub mod meta_service;
pub mod raft_service;
pub mod status;
