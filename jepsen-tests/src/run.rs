//! One run, step by step: draw the schedule and open the report folder, start the cluster, run
//! the clients under the nemesis, heal, check the history, write the report.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use mysocket_api::DigestView;
use tokio::task::JoinHandle;
use tokio::task::JoinSet;

use crate::checker::CheckResult;
use crate::checks;
use crate::checks::Anomaly;
use crate::checks::CloudCounts;
use crate::checks::Verdict;
use crate::cloud;
use crate::cloud::Visitor;
use crate::nemesis;
use crate::nemesis::tracing_line as say;
use crate::nemesis::Fault;
use crate::nemesis::Observed;
use crate::net::Net;
use crate::nodes;
use crate::nodes::Nodes;
use crate::report;
use crate::results;
use crate::results::Counts;
use crate::results::Coverage;
use crate::results::Results;
use crate::results::Schedule;
use crate::workload;
use crate::workload::Ctx;
use crate::workload::Fixture;
use crate::workload::Op;
use crate::Args;

/// Readers, creators and probers: they share `--rate` (the movers, two per tunnel, come on top).
const READERS: u64 = 4;
const CREATORS: u64 = 2;
const PROBERS: u64 = 3;
/// Cloud probers: on top of `--rate` (like the keeper of their socket's tunnel), each at the
/// pace of one of the others, so that the clients of the other checks keep theirs.
const CLOUD_PROBERS: u64 = 2;
/// DNS probers: each asks a random node's DNS for a socket's name, at the same pace.
const DNS_PROBERS: u64 = 2;

/// How long the cluster may take to elect a leader and list every node, at the start and after
/// healing.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns the exit code: 0 valid, 1 invalid, 2 unknown.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let setup = Setup::prepare(&args)?;
    let cluster = Cluster::start(&args, &setup).await?;
    let (ctx, observer) = start_clock(&args, &setup, &cluster);
    let (faults, total_ns) = run_workload(&ctx, &setup, &cluster).await;
    say("run over; healing and checking");
    let harness_errors = heal(&cluster, setup.nodes).await;
    let history = collect(&ctx);
    report::write_history(&setup.dir, &history)?;
    let checked = Checked::run(&history, &cluster.fx, &faults, setup.nodes, args.quick).await;
    let observed = observer.finish().await;
    let run = Run { setup: &setup, planted_bug: args.planted_bug, history: &history, faults, observed, total_ns };
    let results = run.conclude(checked, harness_errors);
    let summary = report::write_results(&setup.dir, &results, &history, total_ns)?;
    println!("{summary}");
    cluster.stop();
    Ok(results.exit_code)
}

/// What is fixed before anything starts.
struct Setup {
    binary: PathBuf,
    /// The OpenID provider's program.
    provider: PathBuf,
    seed: u64,
    nodes: usize,
    plan: nemesis::Plan,
    /// The report folder, empty when the run starts.
    dir: PathBuf,
}

impl Setup {
    /// Finds the node binary, the OpenID provider and the tools, draws the schedule, and
    /// writes it to a new report folder.
    fn prepare(args: &Args) -> anyhow::Result<Setup> {
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
        let provider = cloud::provider_binary()?;
        let seed = args.seed.unwrap_or_else(rand::random);
        let nodes = if args.quick { 3 } else { args.nodes };
        let plan = nemesis::schedule(seed, &args.nemesis, nodes, args.time, args.quick)?;
        let dir = report_dir(args.out.clone(), seed)?;
        say(&format!(
            "seed {seed}, {nodes} nodes, {} faults over {} s, report in {}",
            plan.faults.len(),
            plan.total_ms / 1000,
            dir.display()
        ));
        let schedule = Schedule {
            nemesis: args.nemesis.clone(),
            nodes,
            planned: plan.faults.clone(),
            planted_bug: args.planted_bug.clone(),
            quick: args.quick,
            seed,
            total_ms: plan.total_ms,
        };
        report::write_schedule(&dir, &schedule)?;
        Ok(Setup { binary, provider, seed, nodes, plan, dir })
    }
}

/// `--out`, or `jepsen-runs/<time>-seed<seed>`; created, and refused unless empty.
fn report_dir(out: Option<PathBuf>, seed: u64) -> anyhow::Result<PathBuf> {
    let dir = out.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        PathBuf::from(format!("jepsen-runs/{t}-seed{seed}"))
    });
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!("the report folder {} is not empty; give a new --out", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The running cluster and the accounts and tunnels the clients use.
struct Cluster {
    /// Before `net`: the processes stop before their namespaces go.
    nodes: Arc<Mutex<Nodes>>,
    /// The OpenID provider, on the bridge's host address: before `net` too.
    provider: cloud::Provider,
    net: Arc<Net>,
    fx: Arc<Fixture>,
}

impl Cluster {
    /// The namespaces, the OpenID provider, the operator token and the node processes; then,
    /// once the cluster is ready, the fixture.
    async fn start(args: &Args, setup: &Setup) -> anyhow::Result<Cluster> {
        let n = setup.nodes;
        let net = Arc::new(Net::setup(n)?);
        let provider = cloud::Provider::start(&setup.provider, &setup.dir).await?;
        let oidc_client_secret_file = setup.dir.join("oidc-client-secret");
        std::fs::write(&oidc_client_secret_file, format!("{:032x}", rand::random::<u128>()))?;
        let (key, public) = keygen(&setup.dir)?;
        let secret = format!("{:032x}", rand::random::<u128>());
        let operator_token = format!("operator-{:032x}", rand::random::<u128>());
        let operator_token_file = setup.dir.join("operator-token");
        std::fs::write(&operator_token_file, &operator_token)?;
        workload::OPERATOR_TOKEN.set(operator_token).map_err(|_| anyhow::anyhow!("the operator token is set once"))?;
        let nodes = Arc::new(Mutex::new(Nodes::new(nodes::NodeSpec {
            binary: setup.binary.clone(),
            dir: setup.dir.clone(),
            nodes: n,
            secret,
            operator_token_file,
            oidc_issuer: cloud::issuer(),
            oidc_client_secret_file,
            planted_bug: args.planted_bug.clone(),
            snapshot_threshold: 20,
        })));
        {
            let mut ns = nodes.lock().expect("nodes");
            for i in 1..=n {
                ns.start(i)?;
            }
        }
        wait_ready(n, READY_TIMEOUT).await?;
        // The fleet only when its nemesis runs: other runs keep their clients and timings.
        let fleet = if args.nemesis.iter().any(|f| f == "fleet") { args.fleet } else { 0 };
        let fx = Fixture::create(key, public, args.tunnels, fleet).await.context("creating the fixture")?;
        Ok(Cluster { nodes, provider, net, fx: Arc::new(fx) })
    }

    /// Stops the nodes and the provider; the namespaces go as `self` drops.
    fn stop(mut self) {
        self.nodes.lock().expect("nodes").stop_all();
        self.provider.stop();
    }
}

fn keygen(dir: &Path) -> anyhow::Result<(russh::keys::PrivateKey, String)> {
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

/// Every node answers, agrees on a leader and lists all the nodes with their SSH addresses.
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

/// The leader and snapshot observer, sampling the cluster from the start of the clock until
/// the checks are over.
struct Observer {
    task: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    observed: Arc<Mutex<Observed>>,
}

impl Observer {
    fn start(ctx: &Arc<Ctx>) -> Observer {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(nemesis::observe(ctx.clone(), observed.clone(), stop.clone()));
        Observer { task, stop, observed }
    }

    async fn finish(self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        std::mem::take(&mut *self.observed.lock().expect("observed"))
    }
}

/// Starts the run's clock (the history's times count from here) and the observer.
fn start_clock(args: &Args, setup: &Setup, cluster: &Cluster) -> (Arc<Ctx>, Observer) {
    let think = Duration::from_secs_f64((READERS + CREATORS + PROBERS) as f64 / args.rate.max(0.1));
    let ctx = Arc::new(Ctx {
        start: Instant::now(),
        nodes: setup.nodes,
        stop: AtomicBool::new(false),
        ops: Mutex::new(Vec::new()),
        think,
        seed: setup.seed,
        slots: cluster.nodes.clone(),
    });
    let observer = Observer::start(&ctx);
    (ctx, observer)
}

/// The clients under the nemesis until the schedule's end; returns the faults as injected and
/// the run's length in nanoseconds.
async fn run_workload(ctx: &Arc<Ctx>, setup: &Setup, cluster: &Cluster) -> (Vec<Fault>, u64) {
    let mut clients = spawn_clients(ctx, &cluster.fx);
    let nem = nemesis::Nemesis {
        ctx: ctx.clone(),
        nodes: cluster.nodes.clone(),
        net: cluster.net.clone(),
        fx: cluster.fx.clone(),
        seed: setup.seed,
        fleet_struck: Mutex::new(None),
    };
    let faults = nem.run(&setup.plan.faults).await;
    tokio::time::sleep_until((ctx.start + Duration::from_millis(setup.plan.total_ms)).into()).await;
    ctx.stop.store(true, Ordering::Relaxed);
    let total_ns = ctx.now();
    let _ = tokio::time::timeout(Duration::from_secs(20), async { while clients.join_next().await.is_some() {} }).await;
    clients.abort_all();
    (faults, total_ns)
}

/// The movers (two per tunnel), then the readers, creators and probers, then the keeper of the
/// guarded socket's tunnel and the cloud probers; client ids count from 1 (the newer clients
/// come last so that a seed's older clients keep their ids and choices).
fn spawn_clients(ctx: &Arc<Ctx>, fx: &Arc<Fixture>) -> JoinSet<()> {
    let mut clients = JoinSet::new();
    let mut id = 0u64;
    let mut next = || {
        id += 1;
        id
    };
    for t in 0..fx.tunnels.len() {
        for _ in 0..2 {
            clients.spawn(workload::mover(ctx.clone(), fx.clone(), t, next()));
        }
    }
    for _ in 0..READERS {
        clients.spawn(workload::reader(ctx.clone(), fx.clone(), next()));
    }
    for _ in 0..CREATORS {
        clients.spawn(workload::creator(ctx.clone(), fx.clone(), next()));
    }
    for _ in 0..PROBERS {
        clients.spawn(workload::prober(ctx.clone(), fx.clone(), next()));
    }
    clients.spawn(cloud::keeper(ctx.clone(), fx.clone(), next()));
    for _ in 0..CLOUD_PROBERS {
        clients.spawn(cloud::prober(ctx.clone(), fx.clone(), next()));
    }
    for _ in 0..DNS_PROBERS {
        clients.spawn(crate::dns::prober(ctx.clone(), fx.clone(), next()));
    }
    for i in 0..fx.fleet.tunnels.len() {
        clients.spawn(crate::fleet::client(ctx.clone(), fx.clone(), i, next()));
    }
    clients
}

/// Heals the network, restarts and resumes every node and waits for the cluster; what failed
/// is a harness error.
async fn heal(cluster: &Cluster, nodes: usize) -> Vec<String> {
    let mut harness_errors = Vec::new();
    if let Err(e) = cluster.net.heal() {
        harness_errors.push(format!("healing the network: {e}"));
    }
    if let Err(e) = cluster.nodes.lock().expect("nodes").restore_all() {
        harness_errors.push(format!("restoring the nodes: {e}"));
    }
    if let Err(e) = wait_ready(nodes, READY_TIMEOUT).await {
        harness_errors.push(format!("after healing: {e}"));
    }
    harness_errors
}

/// The history in call order.
fn collect(ctx: &Ctx) -> Vec<Op> {
    let mut history = ctx.ops.lock().expect("history").clone();
    history.sort_by_key(|o| o.call);
    history
}

/// What the checkers found.
struct Checked {
    /// By checker name.
    verdicts: BTreeMap<String, Verdict>,
    anomalies: Vec<Anomaly>,
    recovery_ms: Vec<Option<u64>>,
    digests: Vec<DigestView>,
    linearizability: CheckResult,
    /// The cloud probes by visitor.
    cloud: BTreeMap<Visitor, CloudCounts>,
    dns: crate::dns::DnsCounts,
}

impl Checked {
    async fn run(history: &[Op], fx: &Fixture, faults: &[Fault], nodes: usize, quick: bool) -> Checked {
        let lin_deadline = Instant::now() + Duration::from_secs(if quick { 60 } else { 300 });
        let (lin, mut anomalies, linearizability) = checks::check_ownership(history, lin_deadline);
        let (sockets, a) = checks::check_sockets(history, fx, nodes).await;
        anomalies.extend(a);
        let (accounts, a) = checks::check_accounts(history, nodes).await;
        anomalies.extend(a);
        let (convergence, a, digests) = checks::check_convergence(nodes).await;
        anomalies.extend(a);
        let probes = checks::check_probes(history, &fx.tunnels, faults);
        anomalies.extend(probes.anomalies);
        let cloud = checks::check_cloud(history);
        anomalies.extend(cloud.anomalies);
        let dns = crate::dns::check_dns(history, faults, nodes);
        anomalies.extend(dns.anomalies);
        let mut verdicts = vec![
            ("linearizable-ownership", lin),
            ("sockets-unique-durable", sockets),
            ("accounts-unique-durable", accounts),
            ("replicas-converge", convergence),
            ("routing", probes.routing),
            ("fencing", probes.fencing),
            ("cloud-auth", cloud.verdict),
            ("dns-live-nodes", dns.verdict),
        ];
        // Judged in runs with the fleet only, so that other runs' verdicts stay as they were.
        if !fx.fleet.tunnels.is_empty() {
            let recoveries: Vec<_> = faults.iter().filter_map(|f| f.fleet.clone()).collect();
            let (verdict, a) = crate::fleet::check(&recoveries);
            anomalies.extend(a);
            verdicts.push(("fleet-recovery", verdict));
        }
        let verdicts = verdicts.into_iter().map(|(name, v)| (name.to_string(), v)).collect();
        Checked {
            verdicts,
            anomalies,
            recovery_ms: probes.recovery_ms,
            digests,
            linearizability,
            cloud: cloud.counts,
            dns: dns.counts,
        }
    }
}

/// A finished run, before it is judged.
struct Run<'a> {
    setup: &'a Setup,
    planted_bug: Option<String>,
    history: &'a [Op],
    faults: Vec<Fault>,
    observed: Observed,
    total_ns: u64,
}

impl Run<'_> {
    /// The verdict, from the checkers, the coverage gates and the harness errors.
    fn conclude(self, checked: Checked, harness_errors: Vec<String>) -> Results {
        let coverage =
            Coverage::of(self.history, self.setup.plan.faults.len(), &self.faults, &self.observed, self.total_ns);
        let verdict = results::overall(&checked.verdicts, &coverage, &harness_errors);
        Results {
            anomalies: checked.anomalies,
            checkers: checked.verdicts,
            cloud_auth: Some(checked.cloud),
            dns: Some(checked.dns),
            counts: Counts::of(self.history),
            coverage,
            digests: checked.digests,
            exit_code: verdict.exit_code(),
            faults: self.faults,
            harness_errors,
            leader_changes: self.observed.leaders.len().saturating_sub(1),
            leaders: self.observed.leaders,
            linearizability: checked.linearizability,
            nodes: self.setup.nodes,
            planted_bug: self.planted_bug,
            recovery_ms: checked.recovery_ms,
            run_seconds: self.total_ns as f64 / 1e9,
            seed: self.setup.seed,
            snapshots_installed: self.observed.snapshots_installed,
            verdict,
        }
    }
}
