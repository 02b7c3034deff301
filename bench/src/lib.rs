//! `quizfs-bench`'s library: workloads that drive any mounted directory
//! (so they measure quizfs, GlusterFS or a local disk the same way), and
//! the harness that starts a real quizfs cluster on this machine, which the
//! integration tests share.
//!
//! - [`harness`]: `storaged` processes, mounts, faults, waits.
//! - [`netns`]: network namespaces so a node can be cut off the network.
//! - [`load`]: the web application's load on a mount (uploads read back,
//!   readers), recording every failure and the longest pause.
//! - [`workloads`]: the throughput workloads (sequential, uploads,
//!   metadata, `ls -l`, random 4 KiB) on any directory.
//! - [`compare`]: the comparison's tables, targets and charts.
//! - [`gluster`]: GlusterFS replica 3 in namespaces, for the comparison.
//! - [`nodestats`]: a node's metrics endpoint read from outside, and the
//!   mean of each latency between two readings.
//! - [`failover`]: kill, freeze and cut a node under that load, then
//!   measure the heal, through a small adapter per system.

pub mod apps;
pub mod compare;
pub mod failover;
pub mod gluster;
pub mod harness;
pub mod load;
pub mod netns;
pub mod nodestats;
pub mod workloads;
