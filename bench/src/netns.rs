//! Network namespaces that give each storage node its own address and a
//! link that can be cut, the way the reference deployment tests GlusterFS
//! (`ifconfig eth1 down` on a storage node).
//!
//! One bridge in the caller's namespace, with the address `.1` of a /24;
//! one namespace per node, joined to the bridge by a veth pair whose inner
//! end is called `eth1` and holds `.11`, `.12`, .... Processes in the
//! caller's namespace (the mounts) reach the nodes through the bridge.
//! Dropping a [`Net`] deletes the namespaces (and with them the veth pairs)
//! and the bridge, also when a test panics. Needs root.

use std::process::Command;

/// The subnet second octet; the third is the net's slot.
const NET_PREFIX: &str = "10.213";

/// A bridge and one namespace per node.
#[derive(Debug)]
pub struct Net {
    slot: u32,
    /// Namespace names, node 0 first.
    pub namespaces: Vec<String>,
    /// Node addresses, node 0 first.
    pub ips: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Creates a bridge and `n` namespaces in the first free slot.
    pub fn create(n: usize) -> Result<Self, String> {
        // The bridge name is the lock: creating it fails if another test
        // process took the slot first.
        let start = std::process::id() % 200;
        for k in 0..200 {
            let slot = 20 + (start + k) % 200;
            if ip(&["link", "add", &format!("qzbr{slot}"), "type", "bridge"]).is_ok() {
                let mut net = Self {
                    slot,
                    namespaces: Vec::new(),
                    ips: Vec::new(),
                };
                net.build(n)?;
                return Ok(net);
            }
        }
        Err("no free bridge slot (qzbr20..qzbr219 all exist)".into())
    }

    fn bridge(&self) -> String {
        format!("qzbr{}", self.slot)
    }

    fn build(&mut self, n: usize) -> Result<(), String> {
        let br = self.bridge();
        let net = format!("{NET_PREFIX}.{}", self.slot);
        ip(&["addr", "add", &format!("{net}.1/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..n {
            let ns = format!("qz{}n{}", self.slot, i + 1);
            let host = format!("qz{}n{}h", self.slot, i + 1);
            let peer = format!("qz{}n{}p", self.slot, i + 1);
            let addr = format!("{net}.{}", 11 + i);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            self.ips.push(addr.clone());
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &br])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["-n", &ns, "link", "set", &peer, "name", "eth1"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth1",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth1", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// A command that runs `program` inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespaces[i]]).arg(program);
        c
    }

    /// Takes node `i`'s link down: nothing reaches it and it reaches
    /// nothing, while its process keeps running.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.namespaces[i], "link", "set", "eth1", "down"])
    }

    /// Brings node `i`'s link back up.
    pub fn restore(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.namespaces[i], "link", "set", "eth1", "up"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The host ends of the veth pairs first: deleting one end removes
        // the pair at once, whereas a deleted namespace lets its devices go
        // later, and the next `Net` in this process reuses the names.
        for i in 0..self.namespaces.len() {
            let _ = ip(&["link", "del", &format!("qz{}n{}h", self.slot, i + 1)]);
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge()]) {
            eprintln!("cleanup: {e}");
        }
    }
}
