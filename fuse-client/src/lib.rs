//! The quizfs client. [`client`] is the cluster client library used by the
//! `quizfs` command, the benchmarks and the integration tests: it learns the
//! cluster's members, heartbeats them, sends metadata to the leader, writes
//! chunks to a majority and reads them from any replica, verified. [`cert`]
//! is the cluster's certificate authority behind `quizfs cert`.

// tonic::Status is the error type of every generated call.
#![allow(clippy::result_large_err)]

pub mod cert;
pub mod client;
pub mod fs;
