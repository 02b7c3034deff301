//! Chunk storage on this node: the store, garbage collection, healing and
//! scrubbing.

pub mod gc;
pub mod heal;
pub mod rate;
pub mod scrub;
pub mod store;
