//! Chunk storage on this node: the store, garbage collection and healing.

pub mod gc;
pub mod heal;
pub mod store;
