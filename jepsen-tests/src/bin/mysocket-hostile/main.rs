//! `mysocket-hostile`: the hostile-client suite. A three-node cluster of real `mysocketd`
//! processes with the default limits, an honest tenant (a real `mysocketctl connect` serving a
//! local web service) whose traffic is measured all along, and one attacker process per attack
//! against node 1. For each attack the report gives the honest tenant's requests/s, p99 and
//! API writes before, during and after it, the nodes' resident memory and open file
//! descriptors, what the attacker was answered, the refusals the node counted, and whether
//! the registry changed; each against the bounds stated in [`Bounds`].
//!
//! Exit code: 0 every bound held, 1 one did not, 2 the harness failed.

mod attacks;
mod cluster;
mod honest;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use serde::Serialize;

use crate::attacks::Plan;
use crate::attacks::Seen;
use crate::cluster::Cluster;
use crate::cluster::Sampler;
use crate::honest::Honest;
use crate::honest::Load;

#[derive(Parser, Debug)]
#[command(
    name = "mysocket-hostile",
    about = "Attacks a three-node mysocket cluster while an honest tenant measures the service it gets"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Minutes of attack: two minutes each, with the nodes' default idle and stall timeouts
    /// (the short run, for CI, attacks for 12 s each with both timeouts at 10 s).
    #[arg(long)]
    long: bool,
    /// Only these attacks (comma separated; default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Report folder (default `hostile-runs/<unix time>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder of `mysocketd` and `mysocketctl` (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs one attack (the suite starts one process per attack).
    #[command(hide = true)]
    Attack {
        name: String,
        #[arg(long)]
        plan: String,
        #[arg(long)]
        seconds: u64,
    },
}

/// What every attack must leave the cluster and the honest tenant, stated up front.
#[derive(Clone, Debug, Serialize)]
struct Bounds {
    /// Most a node's resident memory may grow over its level before the attack (MiB).
    rss_growth_mib: u64,
    /// Most a node's open file descriptors may grow over their level before the attack.
    fd_growth: u64,
    /// Least share of its baseline requests/s the honest tenant keeps during the attack
    /// (the attacker runs on the same cores as the three nodes, and one phase's rate is noisy
    /// on a shared machine: BENCHMARKS.md, hostile clients).
    share_during: f64,
    /// ... and after it.
    share_after: f64,
    /// Most of the honest tenant's requests that may fail during and after the attack.
    honest_errors: f64,
    /// Least share of the honest tenant's API writes that succeed during the attack.
    writes_ok_during: f64,
}

const BOUNDS: Bounds = Bounds {
    rss_growth_mib: 160,
    fd_growth: 700,
    share_during: 0.35,
    share_after: 0.5,
    honest_errors: 0.01,
    writes_ok_during: 0.9,
};

/// The honest tenant's service in one phase.
#[derive(Clone, Debug, Default, Serialize)]
struct Service {
    requests_per_s: f64,
    p99_ms: f64,
    failed: u64,
    writes_per_s: f64,
    writes_failed: u64,
}

#[derive(Debug, Serialize)]
struct AttackResult {
    name: String,
    what: String,
    before: Service,
    during: Service,
    after: Service,
    share_during: f64,
    share_after: f64,
    /// Per node: resident memory (MiB) before, and the most during and after.
    rss_mib: Vec<(u64, u64)>,
    /// Per node: open file descriptors before, and the most during and after.
    fds: Vec<(u64, u64)>,
    /// What node 1 counted in `mysocket_refused_total`, by reason, during the attack.
    refused: BTreeMap<String, u64>,
    attacker: Seen,
    registry_unchanged: bool,
    failures: Vec<String>,
}

/// `results.json`: the bounds, how long each attack ran, and what each one left.
#[derive(Debug, Serialize)]
struct ResultsFile<'a> {
    bounds: &'a Bounds,
    attack_seconds: u64,
    long: bool,
    attacks: &'a [AttackResult],
}

impl AttackResult {
    /// The honest tenant's service, in one line.
    fn honest(&self) -> String {
        format!(
            "{:.0} → {:.0} → {:.0} req/s ({:.2}, {:.2}); p99 {:.1} / {:.1} ms",
            self.before.requests_per_s,
            self.during.requests_per_s,
            self.after.requests_per_s,
            self.share_during,
            self.share_after,
            self.before.p99_ms,
            self.during.p99_ms
        )
    }

    /// The bounds this attack broke, all but the registry's (whose counts the caller holds),
    /// given how long the attack (`during`) and the phase after it (`after`) lasted.
    fn failures(&self, during: Duration, after: Duration) -> Vec<String> {
        let mut failures = Vec::new();
        for (i, (b, m)) in self.rss_mib.iter().enumerate() {
            if m.saturating_sub(*b) > BOUNDS.rss_growth_mib {
                failures.push(format!("node {}'s memory grew from {b} to {m} MiB", i + 1));
            }
        }
        for (i, (b, m)) in self.fds.iter().enumerate() {
            if m.saturating_sub(*b) > BOUNDS.fd_growth {
                failures.push(format!("node {}'s open files grew from {b} to {m}", i + 1));
            }
        }
        let (share_during, share_after) = (self.share_during, self.share_after);
        if share_during < BOUNDS.share_during {
            failures.push(format!("the honest tenant kept {share_during:.2} of its requests/s during the attack"));
        }
        if share_after < BOUNDS.share_after {
            failures.push(format!("the honest tenant kept {share_after:.2} of its requests/s after the attack"));
        }
        for (phase, s, took) in [("during", &self.during, during), ("after", &self.after, after)] {
            let total = s.requests_per_s * took.as_secs_f64();
            if s.failed as f64 > BOUNDS.honest_errors * total.max(1.0) {
                failures.push(format!("{} of the honest tenant's requests failed {phase} the attack", s.failed));
            }
        }
        let writes = self.during.writes_per_s * during.as_secs_f64();
        let writes_failed = self.during.writes_failed as f64;
        if writes + writes_failed > 0.0 && writes / (writes + writes_failed) < BOUNDS.writes_ok_during {
            failures.push(format!(
                "{} of the honest tenant's API writes failed during the attack",
                self.during.writes_failed
            ));
        }
        failures
    }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if let Some(Cmd::Attack { name, plan, seconds }) = &args.cmd {
        let plan: Plan = serde_json::from_str(plan).expect("attack plan");
        let seen = rt.block_on(attacks::run(name, plan, *seconds));
        println!("{}", serde_json::to_string(&seen).expect("json"));
        return;
    }
    match rt.block_on(suite(&args)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("mysocket-hostile: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Seconds of each phase around one attack.
#[derive(Clone, Copy, Debug)]
struct Phases {
    /// The honest tenant's baseline, measured before the attacker starts.
    before: u64,
    attack: u64,
    /// The recovery, measured after the attacker stopped.
    after: u64,
}

impl Phases {
    fn new(long: bool) -> Phases {
        let (before, attack, after) = if long { (10, 120, 20) } else { (5, 12, 6) };
        Phases { before, attack, after }
    }
}

/// What every attack runs against and is measured with.
struct Stage<'a> {
    cluster: &'a Cluster,
    honest: &'a Honest,
    plan: &'a Plan,
    load: &'a Load,
    sampler: &'a Sampler,
    /// The origin of every time the load and the sampler record.
    started: Instant,
    phases: Phases,
}

async fn suite(args: &Args) -> anyhow::Result<bool> {
    let names = attack_names(&args.only)?;
    let phases = Phases::new(args.long);
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("binary folder")?.to_path_buf(),
    };
    let out = out_dir(args.out.as_deref())?;
    println!("mysocket-hostile: {} attacks, {} s each; report in {}", names.len(), phases.attack, out.display());

    let timeouts = if args.long { None } else { Some(10) };
    let mut cluster = Cluster::start(&bin_dir, &out, timeouts).await?;
    let honest = Honest::start(&bin_dir, &out).await?;
    let plan = honest.plan(&cluster)?;
    let started = Instant::now();
    let load = honest.run_load(&cluster, started);
    let sampler = cluster.sample_processes(started);
    let stage =
        Stage { cluster: &cluster, honest: &honest, plan: &plan, load: &load, sampler: &sampler, started, phases };

    let mut results = Vec::new();
    for name in &names {
        println!("== {name}: {}", attacks::describe(name));
        let r = stage.attack(name).await?;
        println!(
            "   honest {}; attacker {:?}; refused {:?}{}",
            r.honest(),
            r.attacker.outcomes,
            r.refused,
            if r.failures.is_empty() { String::new() } else { format!("\n   FAILED: {}", r.failures.join("; ")) }
        );
        results.push(r);
    }
    drop(load);
    honest.stop();
    cluster.stop();
    let ok = results.iter().all(|r| r.failures.is_empty());
    let file = ResultsFile { bounds: &BOUNDS, attack_seconds: phases.attack, long: args.long, attacks: &results };
    std::fs::write(out.join("results.json"), to_json(&file)?)?;
    std::fs::write(out.join("report.md"), report(&results, phases.attack, args.long))?;
    println!(
        "mysocket-hostile: {} ({} of {} attacks within bounds); report {}",
        if ok { "PASS" } else { "FAIL" },
        results.iter().filter(|r| r.failures.is_empty()).count(),
        results.len(),
        out.join("report.md").display()
    );
    Ok(ok)
}

/// The attacks `--only` names, checked, or all of them.
fn attack_names(only: &[String]) -> anyhow::Result<Vec<String>> {
    if only.is_empty() {
        return Ok(attacks::NAMES.iter().map(|s| s.to_string()).collect());
    }
    for n in only {
        anyhow::ensure!(
            attacks::NAMES.contains(&n.as_str()),
            "unknown attack {n}; one of {}",
            attacks::NAMES.join(", ")
        );
    }
    Ok(only.to_vec())
}

/// The report folder, created: `--out`, or `hostile-runs/<unix time>`.
fn out_dir(out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        PathBuf::from(format!("hostile-runs/{t}"))
    });
    std::fs::create_dir_all(&out)?;
    Ok(out.canonicalize()?)
}

impl Stage<'_> {
    /// Runs one attack between a quiet phase before and one after it, and measures all three.
    async fn attack(&self, name: &str) -> anyhow::Result<AttackResult> {
        let Stage { cluster, honest, started, phases, .. } = *self;
        let counts0 = honest.registry_counts(cluster).await?;
        let refused0 = cluster.refused(1).await?;
        let t0 = started.elapsed();
        tokio::time::sleep(Duration::from_secs(phases.before)).await;
        let t1 = started.elapsed();
        let seen = attacker(name, phases.attack, self.plan).await?;
        let t2 = started.elapsed();
        let refused1 = cluster.refused(1).await?;
        tokio::time::sleep(Duration::from_secs(phases.after)).await;
        let t3 = started.elapsed();
        let counts1 = honest.registry_counts(cluster).await?;

        let service = |a, b| self.load.service(a, b);
        let (pre, during, post) = (service(t0, t1), service(t1, t2), service(t2, t3));
        let share = |s: &Service| if pre.requests_per_s > 0.0 { s.requests_per_s / pre.requests_per_s } else { 0.0 };
        let (share_during, share_after) = (share(&during), share(&post));
        let (rss_mib, fds) = self.sampler.levels(t0, t1, t3);
        let refused: BTreeMap<String, u64> = refused1
            .iter()
            .map(|(k, v)| (k.clone(), v.saturating_sub(*refused0.get(k).unwrap_or(&0))))
            .filter(|(_, v)| *v > 0)
            .collect();
        let mut r = AttackResult {
            name: name.to_string(),
            what: attacks::describe(name).to_string(),
            before: pre,
            during,
            after: post,
            share_during,
            share_after,
            rss_mib,
            fds,
            refused,
            attacker: seen,
            registry_unchanged: counts0 == counts1,
            failures: Vec::new(),
        };
        r.failures = r.failures(t2 - t1, t3 - t2);
        if !r.registry_unchanged {
            r.failures.push(format!("the registry changed: accounts, sockets, tunnels {counts0:?} then {counts1:?}"));
        }
        Ok(r)
    }
}

/// Runs attack `name` in a process of its own for `seconds`, and reads what it saw.
async fn attacker(name: &str, seconds: u64, plan: &Plan) -> anyhow::Result<Seen> {
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["attack", name, "--seconds", &seconds.to_string(), "--plan", &serde_json::to_string(plan)?])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let output = tokio::time::timeout(Duration::from_secs(seconds + 120), child.wait_with_output())
        .await
        .context("the attacker did not stop")??;
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("the attacker's report: {}", String::from_utf8_lossy(&output.stdout)))
}

/// Pretty JSON with the keys of every object in alphabetical order, nested ones too: the order
/// `results.json` had when it was written through `serde_json::Value`, kept so that a run's file
/// compares line by line with an older run's.
fn to_json(v: &impl Serialize) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::to_value(v)?)
}

fn report(results: &[AttackResult], attack: u64, long: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Hostile clients against a three-node cluster\n");
    let _ = writeln!(
        s,
        "Each attack ran {attack} s from its own process against node 1, with the nodes' default limits{}; an honest \
         tenant (`mysocketctl connect` to node 1, four keep-alive clients through nodes 1 and 2, one API writer \
         creating and deleting a socket) measured the service before, during and after it.\n",
        if long { " and timeouts" } else { " (idle and stall timeouts at 10 s, so they show within the run)" }
    );
    let b = &BOUNDS;
    let _ = writeln!(
        s,
        "Bounds: per node, memory at most +{} MiB and open files at most +{} over their level before the attack; \
         the honest tenant keeps at least {:.0}% of its baseline requests/s during the attack and {:.0}% after, \
         at most {:.0}% of its requests fail, at least {:.0}% of its API writes succeed; the registry's accounts, \
         sockets and tunnels are unchanged.\n",
        b.rss_growth_mib,
        b.fd_growth,
        b.share_during * 100.0,
        b.share_after * 100.0,
        b.honest_errors * 100.0,
        b.writes_ok_during * 100.0
    );
    let _ = writeln!(
        s,
        "| attack | honest req/s before → during → after (shares); p99 before / during | API writes/s during (failed) | node 1 memory MiB before → most | node 1 open files before → most | attacker was answered | node 1 refused | verdict |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in results {
        let outcomes: Vec<String> = r.attacker.outcomes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let refused: Vec<String> = r.refused.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} ({}) | {} → {} | {} → {} | {}{} | {} | {} |",
            r.name,
            r.honest(),
            r.during.writes_per_s,
            r.during.writes_failed,
            r.rss_mib[0].0,
            r.rss_mib[0].1,
            r.fds[0].0,
            r.fds[0].1,
            outcomes.join(", "),
            r.attacker.median_close_ms.map(|m| format!("; median close after {m} ms")).unwrap_or_default(),
            if refused.is_empty() { "-".to_string() } else { refused.join(", ") },
            if r.failures.is_empty() { "held".to_string() } else { format!("**failed**: {}", r.failures.join("; ")) }
        );
    }
    let _ = writeln!(s, "\nWhat each attack does:\n");
    for r in results {
        let _ = writeln!(s, "- `{}`: {}", r.name, r.what);
    }
    s
}
