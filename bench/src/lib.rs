//! `quizfs-bench`'s library: workloads that drive any mounted directory
//! (so they measure quizfs, GlusterFS or a local disk the same way), and
//! the harness that starts a real quizfs cluster on this machine, which the
//! integration tests share.
//!
//! - [`harness`]: `storaged` processes, mounts, faults, waits.
//! - [`netns`]: network namespaces so a node can be cut off the network.
//! - [`load`]: the web application's load on a mount (uploads read back,
//!   readers), recording every failure and the longest pause.
//! - [`failover`]: kill, freeze and cut a node under that load, then
//!   measure the heal, through a small adapter per system.

pub mod failover;
pub mod harness;
pub mod load;
pub mod netns;
