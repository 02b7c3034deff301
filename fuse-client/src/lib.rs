//! The quizfs client. [`client`] is the cluster client library used by the
//! `quizfs` command, the benchmarks and the integration tests: it learns the
//! cluster's members, heartbeats them, sends metadata to the leader, writes
//! chunks to a majority and reads them from any replica, verified.

pub mod client;
