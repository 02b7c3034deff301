//! The metadata state machine: what the Raft log is applied to.
//!
//! - [`format`]: the on-disk format version and its check.
//! - [`schema`]: key layout in sled and the stored records.
//! - [`txn`]: the write overlay that makes one command atomic.
//! - [`ops`]: every namespace command as a function over one transaction.
//! - [`sessions`]: exactly-once replies per client.
//! - [`expiry`]: the leader forgets sessions it no longer hears from.
//! - [`locks`]: file locks held by the cluster, per inode.
//! - [`read`]: the read queries served after a read-index check.
//! - [`state_machine`]: openraft's `RaftStateMachine` over all of the above.

pub mod expiry;
pub mod format;
pub mod locks;
pub mod ops;
pub mod read;
pub mod schema;
pub mod sessions;
pub mod state_machine;
pub mod txn;
pub mod validate;

#[cfg(test)]
mod fuzz_tests;
