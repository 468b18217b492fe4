//! `mysocket-jepsen`: runs a real cluster of `mysocketd` processes in network namespaces,
//! drives clients against it while a seeded nemesis kills, pauses and partitions nodes, then
//! checks the history: linearizable tunnel ownership, unique and durable sockets and accounts,
//! converged replicas, correct routing and fencing on the data plane.
//!
//! Exit code: 0 valid, 1 invalid (an anomaly was found), 2 unknown or harness failure
//! (including a run too quiet to prove anything: see the coverage gates in `results.json`).

mod checker;
mod checks;
mod nemesis;
mod net;
mod nodes;
mod report;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use crate::checks::Verdict;
use crate::nemesis::tracing_line as say;
use crate::workload::OpKind;
use crate::workload::Outcome;

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
    /// Fault families, comma separated: kill, pause, partition, lossy, full-kill, membership.
    #[arg(long, default_value = "kill,pause,partition", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Seed of the fault schedule and the clients' choices (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Client operations per second, all clients together (the SSH movers come on top).
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
    let code = match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mysocket-jepsen: harness failure: {e:#}");
            2
        }
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn wait_ready(nodes: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let mut ready = 0;
        for i in 1..=nodes {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(1), workload::api(i, None).cluster()).await {
                if c.leader.is_some() && c.nodes.len() == nodes && c.nodes.iter().all(|n| !n.ssh_addr.is_empty()) {
                    ready += 1;
                }
            }
        }
        if ready == nodes {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the cluster was not ready within {limit:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn keygen(dir: &std::path::Path) -> anyhow::Result<(russh::keys::PrivateKey, String)> {
    let path = dir.join("mover_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "mysocket-jepsen", "-f"])
        .arg(&path)
        .status()
        .context("running ssh-keygen (install openssh-client)")?;
    anyhow::ensure!(st.success(), "ssh-keygen failed");
    let key = russh::keys::load_secret_key(&path, None)?;
    let public = std::fs::read_to_string(path.with_extension("pub"))?.trim().to_string();
    Ok((key, public))
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let binary = match &args.mysocketd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("mysocketd"),
    };
    anyhow::ensure!(binary.exists(), "no node binary at {} (build it, or give --mysocketd)", binary.display());
    for tool in ["ip", "iptables", "ssh-keygen"] {
        let found =
            std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?.status.success();
        anyhow::ensure!(found, "`{tool}` is missing (apt-get install iproute2 iptables openssh-client)");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let n = if args.quick { 3 } else { args.nodes };
    let plan = nemesis::schedule(seed, &args.nemesis, n, args.time, args.quick)?;
    let dir = args.out.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        PathBuf::from(format!("jepsen-runs/{t}-seed{seed}"))
    });
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!("the report folder {} is not empty; give a new --out", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    say(&format!(
        "seed {seed}, {n} nodes, {} faults over {} s, report in {}",
        plan.faults.len(),
        plan.total_ms / 1000,
        dir.display()
    ));
    std::fs::write(
        dir.join("schedule.json"),
        serde_json::to_string_pretty(&json!({
            "seed": seed, "nodes": n, "nemesis": args.nemesis, "quick": args.quick,
            "planted_bug": args.planted_bug, "total_ms": plan.total_ms, "planned": plan.faults,
        }))?,
    )?;

    let net = Arc::new(net::Net::setup(n)?);
    let (key, public) = keygen(&dir)?;
    let secret = format!("{:032x}", rand::random::<u128>());
    let operator_token = format!("operator-{:032x}", rand::random::<u128>());
    let operator_token_file = dir.join("operator-token");
    std::fs::write(&operator_token_file, &operator_token)?;
    workload::OPERATOR_TOKEN.set(operator_token).map_err(|_| anyhow::anyhow!("the operator token is set once"))?;
    let nodes = Arc::new(Mutex::new(nodes::Nodes::new(nodes::NodeSpec {
        binary,
        dir: dir.clone(),
        nodes: n,
        secret,
        operator_token_file,
        planted_bug: args.planted_bug.clone(),
        snapshot_threshold: 20,
    })));
    {
        let mut ns = nodes.lock().expect("nodes");
        for i in 1..=n {
            ns.start(i)?;
        }
    }
    wait_ready(n, Duration::from_secs(60)).await?;
    let fx = Arc::new(workload::Fixture::create(key, public, args.tunnels).await.context("creating the fixture")?);

    // Clients: the movers (two per tunnel) plus readers, creators and probers sharing --rate.
    let (readers, creators, probers) = (4u64, 2u64, 3u64);
    let think = Duration::from_secs_f64((readers + creators + probers) as f64 / args.rate.max(0.1));
    let ctx = Arc::new(workload::Ctx {
        start: Instant::now(),
        nodes: n,
        stop: AtomicBool::new(false),
        ops: Mutex::new(Vec::new()),
        think,
        seed,
        slots: nodes.clone(),
    });
    let observed = Arc::new(Mutex::new(nemesis::Observed::default()));
    let observe_stop = Arc::new(AtomicBool::new(false));
    let observer = tokio::spawn(nemesis::observe(ctx.clone(), observed.clone(), observe_stop.clone()));
    let mut clients = tokio::task::JoinSet::new();
    let mut id = 0u64;
    for t in 0..fx.tunnels.len() {
        for _ in 0..2 {
            id += 1;
            clients.spawn(workload::mover(ctx.clone(), fx.clone(), t, id));
        }
    }
    for _ in 0..readers {
        id += 1;
        clients.spawn(workload::reader(ctx.clone(), fx.clone(), id));
    }
    for _ in 0..creators {
        id += 1;
        clients.spawn(workload::creator(ctx.clone(), fx.clone(), id));
    }
    for _ in 0..probers {
        id += 1;
        clients.spawn(workload::prober(ctx.clone(), fx.clone(), id));
    }

    let nem = nemesis::Nemesis { ctx: ctx.clone(), nodes: nodes.clone(), net: net.clone(), fx: fx.clone(), seed };
    let faults = nem.run(&plan.faults).await;
    tokio::time::sleep_until((ctx.start + Duration::from_millis(plan.total_ms)).into()).await;
    ctx.stop.store(true, Ordering::Relaxed);
    let total_ns = ctx.now();
    let _ = tokio::time::timeout(Duration::from_secs(20), async { while clients.join_next().await.is_some() {} }).await;
    clients.abort_all();
    say("run over; healing and checking");

    let mut harness_errors = Vec::new();
    if let Err(e) = net.heal() {
        harness_errors.push(format!("healing the network: {e}"));
    }
    if let Err(e) = nodes.lock().expect("nodes").restore_all() {
        harness_errors.push(format!("restoring the nodes: {e}"));
    }
    if let Err(e) = wait_ready(n, Duration::from_secs(60)).await {
        harness_errors.push(format!("after healing: {e}"));
    }
    let history: Vec<workload::Op> = {
        let mut h = ctx.ops.lock().expect("history").clone();
        h.sort_by_key(|o| o.call);
        h
    };
    report::write_history(&dir, &history)?;

    let lin_deadline = Instant::now() + Duration::from_secs(if args.quick { 60 } else { 300 });
    let (lin, mut anomalies, lin_detail) = checks::check_ownership(&history, lin_deadline);
    let (sockets, a) = checks::check_sockets(&history, &fx, n).await;
    anomalies.extend(a);
    let (accounts, a) = checks::check_accounts(&history, n).await;
    anomalies.extend(a);
    let (convergence, a, digests) = checks::check_convergence(n).await;
    anomalies.extend(a);
    let probes = checks::check_probes(&history, &fx.tunnels, &faults);
    anomalies.extend(probes.anomalies.clone());
    observe_stop.store(true, Ordering::Relaxed);
    let _ = observer.await;
    let obs = std::mem::take(&mut *observed.lock().expect("observed"));

    // Coverage gates: a run that saw no faults, no progress or no failover proves nothing.
    let writes_ok = |from: u64, to: u64| {
        history.iter().any(|o| {
            o.outcome == Outcome::Ok
                && matches!(o.kind, OpKind::Claim | OpKind::CreateSocket)
                && o.call >= from
                && o.call <= to
        })
    };
    let first = faults.first().map(|f| f.start).unwrap_or(total_ns);
    let last = faults.iter().filter_map(|f| f.end).max().unwrap_or(0);
    let during = faults.iter().any(|f| {
        history.iter().any(|o| o.outcome == Outcome::Ok && o.call >= f.start && o.call <= f.end.unwrap_or(total_ns))
    });
    let coverage = json!({
        "every_fault_applied": faults.len() == plan.faults.len() && faults.iter().all(|f| f.error.is_none()),
        "ok_before_faults": writes_ok(0, first),
        "ok_during_faults": during,
        "ok_after_faults": writes_ok(last, total_ns),
        "leader_changed": obs.leaders.len() >= 2,
        "snapshot_installed": obs.snapshots_installed >= 1,
    });
    let covered = coverage.as_object().map(|m| m.values().all(|v| v == &json!(true))).unwrap_or(false);

    let checkers = [
        ("linearizable-ownership", lin),
        ("sockets-unique-durable", sockets),
        ("accounts-unique-durable", accounts),
        ("replicas-converge", convergence),
        ("routing", probes.routing),
        ("fencing", probes.fencing),
    ];
    let invalid = checkers.iter().any(|(_, v)| *v == Verdict::Invalid);
    let unknown = checkers.iter().any(|(_, v)| *v == Verdict::Unknown);
    let (verdict, code) = if invalid {
        ("invalid", 1)
    } else if unknown || !covered || !harness_errors.is_empty() {
        ("unknown", 2)
    } else {
        ("valid", 0)
    };
    let mut counts = serde_json::Map::new();
    for o in &history {
        let e = counts.entry(o.kind.to_string()).or_insert_with(|| json!({"ok": 0, "fail": 0, "info": 0}));
        let k = match o.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        e[k] = json!(e[k].as_u64().unwrap_or(0) + 1);
    }
    let leader_changes = obs.leaders.len().saturating_sub(1);
    let results = json!({
        "verdict": verdict,
        "exit_code": code,
        "seed": seed,
        "nodes": n,
        "planted_bug": args.planted_bug,
        "checkers": checkers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "anomalies": anomalies,
        "counts": counts,
        "faults": faults,
        "leader_changes": leader_changes,
        "leaders": obs.leaders,
        "snapshots_installed": obs.snapshots_installed,
        "recovery_ms": probes.recovery_ms,
        "coverage": coverage,
        "harness_errors": harness_errors,
        "run_seconds": total_ns as f64 / 1e9,
        "digests": digests,
        "linearizability": lin_detail,
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    std::fs::write(dir.join("timeline.html"), report::timeline(&history, &faults, &obs.leaders, total_ns))?;
    let summary = summary_md(&results);
    std::fs::write(dir.join("summary.md"), &summary)?;
    println!("{summary}");
    nodes.lock().expect("nodes").stop_all();
    drop(net);
    Ok(code)
}

fn summary_md(r: &serde_json::Value) -> String {
    let mut s = format!(
        "# mysocket-jepsen: {}\n\nseed {} · {} nodes · planted bug: {} · {:.0} s\n\n## Checkers\n\n| checker | verdict |\n|---|---|\n",
        r["verdict"].as_str().unwrap_or("?"),
        r["seed"],
        r["nodes"],
        r["planted_bug"].as_str().unwrap_or("none"),
        r["run_seconds"].as_f64().unwrap_or(0.0)
    );
    for (k, v) in r["checkers"].as_object().into_iter().flatten() {
        s.push_str(&format!("| {k} | {} |\n", v.as_str().unwrap_or("?")));
    }
    s.push_str("\n## Operations\n\n| kind | ok | fail | unknown |\n|---|---:|---:|---:|\n");
    for (k, v) in r["counts"].as_object().into_iter().flatten() {
        s.push_str(&format!("| {k} | {} | {} | {} |\n", v["ok"], v["fail"], v["info"]));
    }
    s.push_str("\n## Faults\n\n| fault | nodes | start s | end s | error |\n|---|---|---:|---:|---|\n");
    for f in r["faults"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {} |\n",
            f["kind"].as_str().unwrap_or("?"),
            f["nodes"],
            f["start"].as_f64().unwrap_or(0.0) / 1e9,
            f["end"].as_f64().unwrap_or(0.0) / 1e9,
            f["error"].as_str().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        "\nLeader changes: {} · snapshots installed: {} · recovery after each heal (ms): {}\n\nCoverage: {}\n",
        r["leader_changes"], r["snapshots_installed"], r["recovery_ms"], r["coverage"]
    ));
    let anomalies = r["anomalies"].as_array().cloned().unwrap_or_default();
    if !anomalies.is_empty() {
        s.push_str(&format!("\n## Anomalies ({})\n\n", anomalies.len()));
        for a in anomalies.iter().take(30) {
            s.push_str(&format!(
                "- **{}**: {}\n",
                a["kind"].as_str().unwrap_or("?"),
                a["detail"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(errs) = r["harness_errors"].as_array().filter(|e| !e.is_empty()) {
        s.push_str(&format!("\nHarness errors: {errs:?}\n"));
    }
    s
}
