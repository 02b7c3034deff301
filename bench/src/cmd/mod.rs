//! The subcommands of `quizfs-bench`, by concern.
//!
//! - [`args`]: every subcommand's flags.
//! - [`client`]: `client`, through the client library.
//! - [`bench`]: `run`, `oplat`, `scale` and `failover`, one system at a time.
//! - [`compare`]: `compare`, every system side by side.
//! - [`output`]: the progress bar and the JSON and Markdown writers.
//! - [`rebalance`]: `rebalance`, adding two nodes to three.

pub(crate) mod args;
pub(crate) mod bench;
pub(crate) mod client;
pub(crate) mod compare;
pub(crate) mod output;
pub(crate) mod rebalance;
