//! `mysocket-jepsen`: runs a real cluster of `mysocketd` processes in network namespaces,
//! drives clients against it while a seeded nemesis kills, pauses and partitions nodes, then
//! checks the history: linearizable tunnel ownership, unique and durable sockets and accounts,
//! converged replicas, correct routing and fencing on the data plane, and no request reaching a
//! cloud-auth socket's service without an allowed identity.
//!
//! Exit code: 0 valid, 1 invalid (an anomaly was found), 2 unknown or harness failure
//! (including a run too quiet to prove anything: see the coverage gates in `results.json`).

mod checker;
mod checks;
mod cloud;
mod dns;
mod fleet;
mod nemesis;
mod net;
mod nodes;
mod report;
mod results;
mod run;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Fault-injection suite for a mysocket cluster (run as root).
#[derive(Parser, Debug)]
#[command(name = "mysocket-jepsen")]
struct Args {
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Run length in seconds (ignored with --quick, whose schedule sets it).
    #[arg(long, default_value_t = 120)]
    time: u64,
    /// Fault families, comma separated: kill, pause, partition, lossy, full-kill, membership,
    /// fleet.
    #[arg(long, default_value = "kill,pause,partition", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Seed of the fault schedule and the clients' choices (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Client operations per second, all clients together (the SSH movers, and the cloud
    /// probers and their socket's keeper, come on top).
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// The node binary (default: `mysocketd` next to this binary).
    #[arg(long)]
    mysocketd: Option<PathBuf>,
    /// The CI mode: 3 nodes, one fault of each family, about a minute.
    #[arg(long)]
    quick: bool,
    /// Run the nodes with this planted bug (needs a `planted-bugs` build, see --mysocketd).
    #[arg(long)]
    planted_bug: Option<String>,
    /// Report folder (default `jepsen-runs/<time>-seed<seed>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tunnels whose ownership is checked (two movers each).
    #[arg(long, default_value_t = 2)]
    tunnels: usize,
    /// Fleet tunnels, held by as many SSH clients, with the fleet nemesis (which kills the node
    /// holding most of them).
    #[arg(long, default_value_t = 100)]
    fleet: usize,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn main() {
    let args = Args::parse();
    if !is_root() {
        eprintln!("mysocket-jepsen: must run as root (it creates network namespaces and iptables rules)");
        std::process::exit(2);
    }
    if ![3, 5].contains(&args.nodes) || (args.quick && args.nodes != 3) {
        eprintln!("mysocket-jepsen: --nodes must be 3 or 5 (--quick uses 3)");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = match rt.block_on(run::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mysocket-jepsen: harness failure: {e:#}");
            2
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
