//! The test network: one network namespace per node on a Linux bridge, each with its own
//! address, and iptables rules inside the namespaces for partitions and lossy links. The
//! harness itself stays in the root namespace (10.99.0.254) and always reaches every node: the
//! faults cut node-to-node traffic, which is what Raft and the relay depend on.

use std::process::Command;

use anyhow::bail;
use anyhow::Context;

const BRIDGE: &str = "msjbr0";
/// The harness's address on the bridge: every node reaches it whatever the faults (the OpenID
/// provider listens there).
pub const HOST_IP: &str = "10.99.0.254";
/// Most nodes a run may have (namespaces msj1..msj9).
pub const MAX_NODES: usize = 9;

/// The address of node `i` (1-based).
pub fn ip(i: usize) -> String {
    format!("10.99.0.{i}")
}

pub fn netns(i: usize) -> String {
    format!("msj{i}")
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn run_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

/// The namespaces and bridge of one run; torn down on drop.
pub struct Net {
    pub nodes: usize,
}

impl Net {
    /// Creates the bridge and `nodes` namespaces, removing any left over by an earlier run.
    pub fn setup(nodes: usize) -> anyhow::Result<Net> {
        if nodes > MAX_NODES {
            bail!("at most {MAX_NODES} nodes");
        }
        teardown_all();
        run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        run(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", BRIDGE])?;
        run(&["ip", "link", "set", BRIDGE, "up"])?;
        // Bridged frames must not go through the root namespace's iptables (a FORWARD policy of
        // DROP from a container runtime would eat them). Absent module: nothing to do.
        run_quiet(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);
        for i in 1..=nodes {
            let (ns, host_end, ns_end) = (netns(i), format!("msjv{i}"), format!("msjp{i}"));
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end])?;
            run(&["ip", "link", "set", &ns_end, "netns", &ns])?;
            run(&["ip", "link", "set", &host_end, "master", BRIDGE])?;
            run(&["ip", "link", "set", &host_end, "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", &ns_end, "name", "eth0"])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", ip(i)), "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "netns", "exec", &ns, "iptables", "-w", "-F"])?;
        }
        Ok(Net { nodes })
    }

    fn ipt(&self, node: usize, rule: &[&str]) -> anyhow::Result<()> {
        let ns = netns(node);
        let mut args = vec!["ip", "netns", "exec", ns.as_str(), "iptables", "-w", "-A"];
        args.extend_from_slice(rule);
        run(&args)
    }

    /// Cuts traffic between every node of `a` and every node of `b`, both ways.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> anyhow::Result<()> {
        for &x in a {
            for &y in b {
                self.drop_between(x, y)?;
                self.drop_between(y, x)?;
            }
        }
        Ok(())
    }

    /// Node `x` drops every packet from and to `y`.
    fn drop_between(&self, x: usize, y: usize) -> anyhow::Result<()> {
        self.ipt(x, &["INPUT", "-s", &ip(y), "-j", "DROP"])?;
        self.ipt(x, &["OUTPUT", "-d", &ip(y), "-j", "DROP"])
    }

    /// Node `x` stops receiving from the `from` nodes; what it sends still arrives.
    pub fn drop_incoming(&self, x: usize, from: &[usize]) -> anyhow::Result<()> {
        for &y in from {
            self.ipt(x, &["INPUT", "-s", &ip(y), "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Node `x` loses the given share of packets from and to the other nodes.
    pub fn lossy(&self, x: usize, share: f64) -> anyhow::Result<()> {
        let p = format!("{share:.2}");
        for y in (1..=self.nodes).filter(|&y| y != x) {
            let yip = ip(y);
            self.ipt(
                x,
                &["INPUT", "-s", &yip, "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"],
            )?;
            self.ipt(
                x,
                &["OUTPUT", "-d", &yip, "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"],
            )?;
        }
        Ok(())
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> anyhow::Result<()> {
        for i in 1..=self.nodes {
            run(&["ip", "netns", "exec", &netns(i), "iptables", "-w", "-F"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        teardown_all();
    }
}

fn teardown_all() {
    for i in 1..=MAX_NODES {
        run_quiet(&["ip", "netns", "del", &netns(i)]);
        run_quiet(&["ip", "link", "del", &format!("msjv{i}")]);
    }
    run_quiet(&["ip", "link", "del", BRIDGE]);
}
