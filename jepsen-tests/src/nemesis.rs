//! Faults: a schedule drawn from the seed before the run, executed against the live cluster,
//! and recorded as it really happened (which nodes, when, and any error).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use serde::Deserialize;
use serde::Serialize;

use crate::fleet;
use crate::fleet::FleetRecovery;
use crate::net::Net;
use crate::nodes::Nodes;
use crate::workload::api;
use crate::workload::operator;
use crate::workload::Ctx;
use crate::workload::Fixture;

/// The fault families `--nemesis` accepts and the faults of each.
pub const FAMILIES: [(&str, &[&str]); 7] = [
    ("kill", &["kill-leader", "kill-random", "kill-holder"]),
    ("pause", &["pause-leader", "pause-random"]),
    (
        "partition",
        &["partition-leader-minority", "partition-halves", "partition-one", "partition-oneway", "partition-ring"],
    ),
    ("lossy", &["lossy-link"]),
    ("full-kill", &["full-kill"]),
    ("membership", &["membership"]),
    ("fleet", &["kill-fleet-holder"]),
];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Planned {
    pub at_ms: u64,
    pub kind: String,
    pub duration_ms: u64,
}

/// A fault as the nemesis injected it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The planned fault: `kill-leader`, `partition-halves`, … (see [`FAMILIES`]).
    pub kind: String,
    /// Nanoseconds since the run started.
    pub start: u64,
    /// When it was healed; none when the run stopped before.
    pub end: Option<u64>,
    /// The slots it struck (for a partition, one side).
    pub nodes: Vec<usize>,
    pub detail: String,
    /// Why it could not be applied or healed.
    pub error: Option<String>,
    /// For `kill-fleet-holder`: how long the fleet tunnels the node held took to answer again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetRecovery>,
}

#[cfg(test)]
impl Fault {
    /// A fault of the checkers' tests: `kind` on `nodes`, from `start_s` to `end_s` seconds.
    pub fn at(kind: &str, nodes: Vec<usize>, start_s: u64, end_s: u64) -> Fault {
        Fault {
            kind: kind.into(),
            start: start_s * 1_000_000_000,
            end: Some(end_s * 1_000_000_000),
            nodes,
            detail: String::new(),
            error: None,
            fleet: None,
        }
    }
}

pub struct Plan {
    pub faults: Vec<Planned>,
    /// Run length: the last heal plus a tail of normal operation.
    pub total_ms: u64,
}

/// Draws the schedule. Every requested family appears at least once; `quick` runs each family
/// once with its first (most telling) fault.
pub fn schedule(seed: u64, families: &[String], nodes: usize, total_secs: u64, quick: bool) -> anyhow::Result<Plan> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds: Vec<Vec<&str>> = Vec::new();
    for f in families {
        let Some((_, list)) = FAMILIES.iter().find(|(name, _)| name == f) else {
            let known: Vec<&str> = FAMILIES.iter().map(|(n, _)| *n).collect();
            anyhow::bail!("unknown nemesis {f}; known: {}", known.join(", "));
        };
        let usable: Vec<&str> = list.iter().copied().filter(|k| *k != "partition-ring" || nodes >= 5).collect();
        kinds.push(usable);
    }
    let (warmup, tail) = if quick { (6_000, 8_000) } else { (10_000, 10_000) };
    let mut at = warmup;
    let mut faults = Vec::new();
    if quick {
        let mut order: Vec<usize> = (0..kinds.len()).collect();
        order.shuffle(&mut rng);
        for i in order {
            // Longer than the DNS checker's grace, so a node lost that long must have left the answers.
            faults.push(Planned { at_ms: at, kind: kinds[i][0].to_string(), duration_ms: 10_000 });
            at += 10_000 + 7_000;
        }
    } else {
        let end = total_secs.saturating_mul(1000).saturating_sub(tail);
        let mut cycle: Vec<usize> = Vec::new();
        loop {
            if cycle.is_empty() {
                cycle = (0..kinds.len()).collect();
                cycle.shuffle(&mut rng);
            }
            let family = cycle.pop().expect("refilled above");
            let kind = kinds[family][rng.gen_range(0..kinds[family].len())];
            let duration = rng.gen_range(4_000..14_000);
            let heal = rng.gen_range(6_000..12_000);
            if at + duration > end && faults.len() >= kinds.len() {
                break;
            }
            faults.push(Planned { at_ms: at, kind: kind.to_string(), duration_ms: duration });
            at += duration + heal;
        }
    }
    let last = faults.last().map(|f| f.at_ms + f.duration_ms).unwrap_or(warmup);
    let total_ms = if quick { last + tail } else { (last + tail).max(total_secs * 1000) };
    Ok(Plan { faults, total_ms })
}

/// The slot of the node that leads now, from the nodes that answer.
async fn leader(slots: &Mutex<Nodes>, nodes: usize) -> Option<usize> {
    for i in 1..=nodes {
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(800), api(i, None).cluster()).await {
            if let Some(l) = c.leader {
                return slots.lock().expect("nodes").slot_of(l);
            }
        }
    }
    None
}

/// The slot of the node holding the first tunnel.
async fn holder(slots: &Mutex<Nodes>, nodes: usize, fx: &Fixture) -> Option<usize> {
    let t = fx.tunnels.first()?;
    for i in 1..=nodes {
        let a = api(i, Some(&fx.token));
        if let Ok(Ok(tn)) = tokio::time::timeout(Duration::from_millis(800), a.tunnel(&t.socket_id, &t.tunnel_id)).await
        {
            return tn.session.and_then(|s| slots.lock().expect("nodes").slot_of(s.node_id));
        }
    }
    None
}

/// What to undo when the fault's time is up.
enum Undo {
    Restart(Vec<usize>),
    Resume(usize),
    Heal,
    /// A membership change stays.
    Nothing,
}

pub struct Nemesis {
    pub ctx: Arc<Ctx>,
    pub nodes: Arc<Mutex<Nodes>>,
    pub net: Arc<Net>,
    pub fx: Arc<Fixture>,
    pub seed: u64,
    /// What the last `kill-fleet-holder` struck, until its measurement starts.
    pub fleet_struck: Mutex<Option<fleet::Struck>>,
}

impl Nemesis {
    pub async fn run(&self, plan: &[Planned]) -> Vec<Fault> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5eed);
        let mut out = Vec::new();
        // The fleet's recovery is measured while the schedule goes on: (fault, measurement).
        let mut measuring = Vec::new();
        for p in plan {
            let at = self.ctx.start + Duration::from_millis(p.at_ms);
            tokio::time::sleep_until(at.into()).await;
            if self.ctx.stop.load(Ordering::Relaxed) {
                break;
            }
            let start = self.ctx.now();
            let mut applied = Fault {
                kind: p.kind.clone(),
                start,
                end: None,
                nodes: Vec::new(),
                detail: String::new(),
                error: None,
                fleet: None,
            };
            match self.apply(&p.kind, &mut rng, &mut applied).await {
                Ok(undo) => {
                    if let Some(struck) = self.fleet_struck.lock().expect("struck").take() {
                        let (fx, n) = (self.fx.clone(), self.ctx.nodes);
                        measuring.push((out.len(), tokio::spawn(fleet::measure(fx, n, struck))));
                    }
                    tracing_line(&format!("fault {} on {:?}: {}", p.kind, applied.nodes, applied.detail));
                    tokio::time::sleep(Duration::from_millis(p.duration_ms)).await;
                    if let Err(e) = self.undo(undo) {
                        applied.error = Some(format!("healing: {e}"));
                    }
                    applied.end = Some(self.ctx.now());
                }
                Err(e) => {
                    applied.error = Some(e.to_string());
                    applied.end = Some(self.ctx.now());
                }
            }
            out.push(applied);
        }
        for (i, m) in measuring {
            match m.await {
                Ok(r) => out[i].fleet = Some(r),
                Err(e) => out[i].error = Some(format!("measuring the fleet's recovery: {e}")),
            }
        }
        out
    }

    async fn apply(&self, kind: &str, rng: &mut StdRng, a: &mut Fault) -> anyhow::Result<Undo> {
        let n = self.ctx.nodes;
        let all: Vec<usize> = (1..=n).collect();
        let random = |rng: &mut StdRng| rng.gen_range(1..=n);
        let leader = || async { leader(&self.nodes, n).await.ok_or_else(|| anyhow::anyhow!("no node knows a leader")) };
        let nodes = |f: &mut dyn FnMut(&mut Nodes) -> anyhow::Result<()>| f(&mut self.nodes.lock().expect("nodes"));
        match kind {
            "kill-leader" | "kill-random" | "kill-holder" => {
                let target = match kind {
                    "kill-leader" => leader().await?,
                    "kill-holder" => match holder(&self.nodes, n, &self.fx).await {
                        Some(h) => h,
                        None => {
                            a.detail = "no holder at the time; a random node".into();
                            random(rng)
                        }
                    },
                    _ => random(rng),
                };
                nodes(&mut |ns| {
                    ns.kill(target);
                    Ok(())
                })?;
                a.nodes = vec![target];
                Ok(Undo::Restart(vec![target]))
            }
            "kill-fleet-holder" => {
                let (target, held) =
                    self.fx.fleet.busiest().ok_or_else(|| anyhow::anyhow!("no fleet session is up"))?;
                // A leader's death adds an election to the tunnels' recovery: the report says which.
                let was_leader = leader().await.ok() == Some(target);
                nodes(&mut |ns| {
                    ns.kill(target);
                    Ok(())
                })?;
                a.nodes = vec![target];
                a.detail = format!(
                    "held {} of the {} fleet tunnels{}",
                    held.len(),
                    self.fx.fleet.tunnels.len(),
                    if was_leader { "; the leader" } else { "" }
                );
                *self.fleet_struck.lock().expect("struck") =
                    Some(fleet::Struck { slot: target, leader: was_leader, held, at: std::time::Instant::now() });
                Ok(Undo::Restart(vec![target]))
            }
            "pause-leader" | "pause-random" => {
                let target = if kind == "pause-leader" { leader().await? } else { random(rng) };
                nodes(&mut |ns| ns.pause(target))?;
                a.nodes = vec![target];
                Ok(Undo::Resume(target))
            }
            "partition-leader-minority" => {
                let l = leader().await?;
                let mut minority = vec![l];
                let mut others: Vec<usize> = all.iter().copied().filter(|&x| x != l).collect();
                others.shuffle(rng);
                while minority.len() < (n - 1) / 2 {
                    minority.push(others.pop().expect("enough nodes"));
                }
                self.net.partition(&minority, &others)?;
                a.nodes = minority.clone();
                a.detail = format!("{minority:?} | {others:?}");
                Ok(Undo::Heal)
            }
            "partition-halves" => {
                let mut shuffled = all.clone();
                shuffled.shuffle(rng);
                let (x, y) = shuffled.split_at(n / 2);
                self.net.partition(x, y)?;
                a.nodes = x.to_vec();
                a.detail = format!("{x:?} | {y:?}");
                Ok(Undo::Heal)
            }
            "partition-one" => {
                let x = random(rng);
                let rest: Vec<usize> = all.iter().copied().filter(|&y| y != x).collect();
                self.net.partition(&[x], &rest)?;
                a.nodes = vec![x];
                a.detail = format!("[{x}] | {rest:?}");
                Ok(Undo::Heal)
            }
            "partition-oneway" => {
                let x = random(rng);
                let rest: Vec<usize> = all.iter().copied().filter(|&y| y != x).collect();
                self.net.drop_incoming(x, &rest)?;
                a.nodes = vec![x];
                a.detail = format!("node {x} hears nobody; the others hear it");
                Ok(Undo::Heal)
            }
            "partition-ring" => {
                // Each node reaches only its two neighbours on the ring 1-2-...-n-1.
                for x in 1..=n {
                    for y in (x + 1)..=n {
                        let adjacent = y == x + 1 || (x == 1 && y == n);
                        if !adjacent {
                            self.net.partition(&[x], &[y])?;
                        }
                    }
                }
                a.nodes = all.clone();
                a.detail = "ring: each node reaches its two neighbours only".into();
                Ok(Undo::Heal)
            }
            "lossy-link" => {
                let x = random(rng);
                self.net.lossy(x, 0.3)?;
                a.nodes = vec![x];
                a.detail = "30% of packets to and from the other nodes dropped".into();
                Ok(Undo::Heal)
            }
            "full-kill" => {
                nodes(&mut |ns| {
                    for i in 1..=n {
                        ns.kill(i);
                    }
                    Ok(())
                })?;
                a.nodes = all.clone();
                Ok(Undo::Restart(all))
            }
            "membership" => {
                // Remove a node from the cluster (through another node), then start a new node
                // with a new id in its place, which joins through the API.
                let slot = random(rng);
                let old = self.nodes.lock().expect("nodes").id(slot);
                let via = (slot % n) + 1;
                tokio::time::timeout(Duration::from_secs(30), operator(via).remove_node(old))
                    .await
                    .map_err(|_| anyhow::anyhow!("removing node {old} timed out"))??;
                let new = self.nodes.lock().expect("nodes").replace(slot)?;
                a.nodes = vec![slot];
                a.detail = format!("node {old} removed; node {new} joined in its place");
                Ok(Undo::Nothing)
            }
            other => anyhow::bail!("unknown fault {other}"),
        }
    }

    fn undo(&self, undo: Undo) -> anyhow::Result<()> {
        match undo {
            Undo::Restart(list) => {
                let mut ns = self.nodes.lock().expect("nodes");
                for i in list {
                    ns.start(i)?;
                }
                Ok(())
            }
            Undo::Resume(i) => self.nodes.lock().expect("nodes").resume(i),
            Undo::Heal => self.net.heal(),
            Undo::Nothing => Ok(()),
        }
    }
}

pub fn tracing_line(s: &str) {
    eprintln!("mysocket-jepsen: {s}");
}

/// Leader changes and snapshot installs, sampled from every node through the run.
#[derive(Default, Debug, Serialize)]
pub struct Observed {
    /// (time ns, term, leader) each time the cluster's leader changed.
    pub leaders: Vec<(u64, u64, u64)>,
    pub snapshots_installed: u64,
    #[serde(skip)]
    last_snapshots: Vec<u64>,
}

pub async fn observe(ctx: Arc<Ctx>, obs: Arc<Mutex<Observed>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let n = ctx.nodes;
    obs.lock().expect("observed").last_snapshots = vec![0; n + 1];
    let mut tick = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let views =
            futures::future::join_all((1..=n).map(|i| async move {
                tokio::time::timeout(Duration::from_millis(700), api(i, None).cluster()).await
            }))
            .await;
        let now = ctx.now();
        {
            let mut o = obs.lock().expect("observed");
            for v in views.into_iter().flatten().flatten() {
                if let Some(l) = v.leader {
                    let last = o.leaders.last().map(|&(_, t, l)| (t, l));
                    if last.map(|(t, ll)| v.term > t || (v.term == t && ll != l)).unwrap_or(true) {
                        o.leaders.push((now, v.term, l));
                    }
                }
            }
        }
        if tick.is_multiple_of(4) {
            let digests =
                futures::future::join_all((1..=n).map(|i| async move {
                    tokio::time::timeout(Duration::from_millis(700), operator(i).digest()).await
                }))
                .await;
            let mut o = obs.lock().expect("observed");
            for (i, d) in digests.into_iter().enumerate() {
                if let Ok(Ok(d)) = d {
                    let node = i + 1;
                    let last = o.last_snapshots[node];
                    // A restarted node counts from zero again.
                    let add = if d.snapshots_installed >= last {
                        d.snapshots_installed - last
                    } else {
                        d.snapshots_installed
                    };
                    o.snapshots_installed += add;
                    o.last_snapshots[node] = d.snapshots_installed;
                }
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
