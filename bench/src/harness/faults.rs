//! Faults by PID and by link: SIGKILL, SIGTERM, SIGSTOP/SIGCONT, cut and
//! restore, wipe.

use std::time::Duration;

use super::{Cluster, Net, signal, wait_until};

impl Cluster {
    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM to node `i` and waits up to `timeout` for it to exit;
    /// returns its exit status.
    pub async fn terminate(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.nodes[i].child.take().expect("node is running");
        signal(child.id(), libc::SIGTERM);
        let status = wait_until(timeout, "the node to exit after SIGTERM", || {
            let r = child.try_wait();
            async move {
                match r {
                    Ok(Some(s)) => Ok(s),
                    Ok(None) => Err("still running".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        status
    }

    /// Freezes node `i` (SIGSTOP): its sockets stay open, nothing answers.
    pub fn freeze(&self, i: usize) {
        signal(self.nodes[i].pid(), libc::SIGSTOP);
    }

    /// Thaws node `i` (SIGCONT).
    pub fn thaw(&self, i: usize) {
        signal(self.nodes[i].pid(), libc::SIGCONT);
    }

    /// Cuts node `i` off the network (its link goes down; the process
    /// runs on). Needs a cluster started with [`Cluster::start_in_netns`].
    pub fn cut(&self, i: usize) {
        self.link("cut", i, Net::cut);
    }

    /// Brings node `i`'s link back up.
    pub fn restore(&self, i: usize) {
        self.link("restore", i, Net::restore);
    }

    /// Changes node `i`'s link with `change`, named `what`.
    fn link<E: std::fmt::Display>(
        &self,
        what: &str,
        i: usize,
        change: fn(&Net, usize) -> Result<(), E>,
    ) {
        let net = self
            .net
            .as_ref()
            .unwrap_or_else(|| panic!("{what} needs a cluster in namespaces"));
        change(net, i).unwrap_or_else(|e| panic!("{what} nas{}: {e}", i + 1));
    }

    /// Deletes node `i`'s data directory (the node must be stopped).
    pub fn wipe(&self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "wipe a stopped node only");
        std::fs::remove_dir_all(&self.nodes[i].dir).expect("remove data dir");
    }
}
