//! `quizfs node add|remove|replace`: growing, draining and replacing
//! storage nodes while the volume stays mounted. Each asks the leader
//! (following its redirect), is safe to repeat, and waits until the change
//! is done unless told not to.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use quizfs::client::membership::{channel, with_port};
use quizfs_proto::{self as pb, cluster_client::ClusterClient as ClusterRpc};

use crate::{TlsArgs, cluster_members};

/// `quizfs node ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum NodeCmd {
    /// Admit a new storage node, then wait until it has joined (start it
    /// with `storaged --join SERVER --listen HOST`, before or after). It
    /// joins as a learner, or as a voter while the cluster has fewer than
    /// the nodes' `--voters` (3 by default); placement then moves its
    /// share of the chunks to it.
    Add {
        /// The new node, host[:port], as the cluster will dial it.
        host: String,
        #[command(flatten)]
        common: Common,
    },
    /// Drain a node (every chunk it holds gets its copies on the other
    /// nodes), then take it out of the cluster; a voter's place goes to a
    /// learner. Refused when fewer nodes than copies would remain.
    Remove {
        /// The member to remove, host[:port].
        host: String,
        #[command(flatten)]
        common: Common,
    },
    /// Admit NEW in place of the member OLD (typically dead): when NEW
    /// joins, OLD leaves the cluster and NEW's heal re-creates the copies
    /// OLD held, from the survivors.
    Replace {
        /// The member to replace, host[:port].
        old: String,
        /// The new node, host[:port].
        new: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Flags every node command takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// Any member of the cluster, host[:port].
    #[arg(long, default_value = "nas1")]
    server: String,
    /// Give up waiting after this many seconds (0: do not wait for the
    /// change to finish; it goes on in the cluster).
    #[arg(long, default_value_t = 3600)]
    wait: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Deadline of one call to the leader (a remove's drain check takes up
/// to 5 s of it).
const CALL: Duration = Duration::from_secs(30);

/// Runs a node command.
pub(crate) async fn run(cmd: NodeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCmd::Add { host, common } => {
            let host = with_port(&host);
            let req = pb::AddNodeRequest { addr: host.clone() };
            let reply = call(&common, |mut c| {
                let req = req.clone();
                async move { c.add_node(req).await }
            })
            .await?;
            println!("{}", reply.detail);
            wait_member(&common, &host, None).await
        }
        NodeCmd::Replace { old, new, common } => {
            let (old, new) = (with_port(&old), with_port(&new));
            let req = pb::ReplaceNodeRequest {
                old_addr: old.clone(),
                new_addr: new.clone(),
            };
            let reply = call(&common, |mut c| {
                let req = req.clone();
                async move { c.replace_node(req).await }
            })
            .await?;
            println!("{}", reply.detail);
            wait_member(&common, &new, Some(&old)).await
        }
        NodeCmd::Remove { host, common } => {
            let host = with_port(&host);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(common.wait);
            let mut last = String::new();
            loop {
                let req = pb::RemoveNodeRequest { addr: host.clone() };
                let reply = call(&common, |mut c| {
                    let req = req.clone();
                    async move { c.remove_node(req).await }
                })
                .await?;
                if reply.detail != last {
                    println!("{}: {}", reply.state, reply.detail);
                    last = reply.detail.clone();
                }
                if reply.state == "removed" {
                    return Ok(ExitCode::SUCCESS);
                }
                if tokio::time::Instant::now() >= deadline {
                    println!("still draining; run the same command again to go on waiting");
                    return Ok(ExitCode::from(1));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Calls the leader: `server` first, then where its redirects point.
async fn call<T, F, Fut>(common: &Common, f: F) -> anyhow::Result<T>
where
    F: Fn(ClusterRpc<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let transport = common.tls.transport()?;
    let mut addr = with_port(&common.server);
    for _ in 0..8 {
        let rpc = ClusterRpc::new(channel(&addr, &transport)?);
        let status = match tokio::time::timeout(CALL, f(rpc)).await {
            Err(_) => anyhow::bail!("{addr} did not answer within {CALL:?}"),
            Ok(Ok(r)) => return Ok(r.into_inner()),
            Ok(Err(s)) => s,
        };
        let hint = status
            .metadata()
            .get(pb::LEADER_HINT_KEY)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        match (status.code(), hint) {
            (tonic::Code::Unavailable, Some(leader)) if leader != addr => addr = leader,
            (tonic::Code::Unavailable, _) => {
                // An election: ask again shortly.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => anyhow::bail!("{}", status.message()),
        }
    }
    anyhow::bail!("no leader answered (last tried {addr})")
}

/// Waits until `host` is a member (and `old`, if given, is not), printing
/// its role.
async fn wait_member(common: &Common, host: &str, old: Option<&str>) -> anyhow::Result<ExitCode> {
    let transport = common.tls.transport()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(common.wait);
    let mut told = false;
    loop {
        let m = cluster_members(&common.server, Duration::from_secs(2), &transport)
            .await
            .context("cannot list the members")?;
        let me = m.members.iter().find(|x| x.addr == host);
        let old_gone = old.is_none_or(|o| m.members.iter().all(|x| x.addr != o));
        if let (Some(me), true) = (me, old_gone) {
            println!(
                "{host} is a member (node {}, {})",
                me.id,
                if me.voter { "voter" } else { "learner" }
            );
            return Ok(ExitCode::SUCCESS);
        }
        if common.wait == 0 || tokio::time::Instant::now() >= deadline {
            println!("{host} has not joined yet; it is admitted and may join later");
            return Ok(ExitCode::from(if common.wait == 0 { 0 } else { 1 }));
        }
        if !told {
            println!("waiting for {host} to join...");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
