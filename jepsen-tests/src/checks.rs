//! The checkers that judge a history: tunnel ownership (linearizability, with the WGL
//! checker), sockets and accounts (uniqueness and durability, against what every node lists at
//! the end), replica convergence, the data-plane probes (routing, fencing, recovery), and
//! the cloud probes (no request reaches a cloud-auth socket's service without an allowed
//! identity).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use mysocket_api::DigestView;
use serde::Deserialize;
use serde::Serialize;

use crate::checker;
use crate::cloud::Visitor;
use crate::cloud::ALICE;
use crate::nemesis::Fault;
use crate::workload::api;
use crate::workload::operator;
use crate::workload::Fixture;
use crate::workload::Op;
use crate::workload::OpKind;
use crate::workload::OpValue;
use crate::workload::Outcome;
use crate::workload::TunnelFixture;

/// A superseded session may serve for this long after the newer claim was acknowledged (the
/// old holder applies the claim and closes its session in milliseconds).
const FENCING_GRACE_NS: u64 = 1_000_000_000;
/// Probes served by a node this soon before or after a fault that touched it are not judged for
/// fencing: a node that was cut off, paused or killed serves from its stale replica until it has
/// caught up, which the design allows.
const SETTLE_NS: u64 = 3_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Invalid,
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unknown => "unknown",
        }
    }

    /// The suite's exit code for a run with this verdict.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// `non-linearizable`, `lost-write`, `duplicate`, `diverged`, `misrouted`, `stale-holder`,
    /// `unauthorised-visitor`, `wrong-identity`.
    pub kind: String,
    pub detail: String,
}

fn anomaly(kind: &str, detail: String) -> Anomaly {
    Anomaly { kind: kind.into(), detail }
}

// ----- tunnel ownership -----

/// A tunnel's holder as a register: a claim makes the claimer's node the holder with the next
/// epoch; a read sees `(node, epoch)` or nobody. A session may be released at any time (its
/// client left, or the cluster released a silent node), so reading "nobody" is always possible
/// and releases the model's holder; the epoch never goes back.
pub struct Ownership;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnIn {
    Claim { node: u64 },
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnOut {
    Claimed,
    Read(Option<(u64, u64)>),
}

impl checker::Model for Ownership {
    /// (last epoch, holder node).
    type State = (u64, Option<u64>);
    type Input = OwnIn;
    type Output = OwnOut;

    fn init(&self) -> Self::State {
        (0, None)
    }

    fn step(&self, state: &Self::State, input: &OwnIn, output: Option<&OwnOut>) -> Option<Self::State> {
        let (epoch, holder) = *state;
        match (input, output) {
            (OwnIn::Claim { node }, None | Some(OwnOut::Claimed)) => Some((epoch + 1, Some(*node))),
            (OwnIn::Read, None) => Some(*state),
            (OwnIn::Read, Some(OwnOut::Read(None))) => Some((epoch, None)),
            (OwnIn::Read, Some(OwnOut::Read(Some((n, e))))) => (*e == epoch && holder == Some(*n)).then_some(*state),
            _ => None,
        }
    }
}

pub fn ownership_ops(history: &[Op]) -> Vec<checker::Operation<OwnIn, OwnOut>> {
    let mut out = Vec::new();
    for op in history {
        // The claimer's Raft id (a slot's node changes when the membership nemesis replaces it).
        let node = match op.value {
            OpValue::Claim { node_id, .. } => node_id,
            _ => op.node as u64,
        };
        let (input, output) = match (op.kind, op.outcome) {
            (OpKind::Claim, Outcome::Ok) => (OwnIn::Claim { node }, Some(OwnOut::Claimed)),
            (OpKind::Claim, Outcome::Info) => (OwnIn::Claim { node }, None),
            (OpKind::Read, Outcome::Ok) => {
                let holder = match op.value {
                    OpValue::Holder { holder } => holder,
                    _ => None,
                };
                (OwnIn::Read, Some(OwnOut::Read(holder)))
            }
            // A failed claim or read did nothing; an unanswered read constrains nothing.
            _ => continue,
        };
        out.push(checker::Operation {
            client: op.client,
            key: op.key.clone(),
            input,
            output,
            call: op.call,
            ret: op.ret,
        });
    }
    out
}

pub fn check_ownership(history: &[Op], deadline: Instant) -> (Verdict, Vec<Anomaly>, checker::CheckResult) {
    let ops = ownership_ops(history);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let r = checker::check(&Ownership, &ops, deadline, threads);
    let verdict = match r.verdict {
        checker::Verdict::Ok => Verdict::Valid,
        checker::Verdict::Illegal => Verdict::Invalid,
        checker::Verdict::Unknown => Verdict::Unknown,
    };
    let anomalies = r
        .keys
        .iter()
        .filter(|k| k.verdict == checker::Verdict::Illegal)
        .map(|k| {
            anomaly(
                "non-linearizable",
                format!("tunnel {}: {}", k.key, k.explanation.clone().unwrap_or_else(|| "no linearization".into())),
            )
        })
        .collect();
    (verdict, anomalies, r)
}

// ----- sockets and accounts -----

async fn with_retries<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, mysocket_api::ClientError>>,
{
    for _ in 0..10 {
        if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(5), f()).await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// Every acknowledged socket is listed by every node; no name or port is held twice.
pub async fn check_sockets(history: &[Op], fx: &Fixture, nodes: usize) -> (Verdict, Vec<Anomaly>) {
    let mut anomalies = Vec::new();
    let acked: Vec<&Op> =
        history.iter().filter(|o| o.kind == OpKind::CreateSocket && o.outcome == Outcome::Ok).collect();
    let mut unknown = false;
    for i in 1..=nodes {
        let client = api(i, Some(&fx.creator_token));
        let Some(listed) = with_retries(|| client.sockets()).await else {
            unknown = true;
            continue;
        };
        let ids: BTreeSet<&str> = listed.iter().map(|s| s.socket_id.as_str()).collect();
        for op in &acked {
            let id = op.value.socket_id().unwrap_or_default();
            if !ids.contains(id) {
                anomalies.push(anomaly(
                    "lost-write",
                    format!("socket {} ({id}) acknowledged by node {} is missing on node {i}", op.key, op.node),
                ));
            }
        }
        let mut names = BTreeMap::new();
        let mut ports = BTreeMap::new();
        for s in &listed {
            if let Some(other) = names.insert(s.dnsname.to_ascii_lowercase(), &s.socket_id) {
                anomalies
                    .push(anomaly("duplicate", format!("dnsname {} held by {other} and {}", s.dnsname, s.socket_id)));
            }
            if s.socket_type == "tcp" || s.socket_type == "tls" {
                for p in &s.socket_tcp_ports {
                    if let Some(other) = ports.insert(*p, &s.socket_id) {
                        anomalies.push(anomaly("duplicate", format!("port {p} held by {other} and {}", s.socket_id)));
                    }
                }
            }
        }
    }
    (verdict_of(&anomalies, unknown), anomalies)
}

/// The same email through two nodes at once succeeds at most once; a created account can log in.
pub async fn check_accounts(history: &[Op], nodes: usize) -> (Verdict, Vec<Anomaly>) {
    let mut anomalies = Vec::new();
    let mut ok: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.kind == OpKind::CreateAccount && o.outcome == Outcome::Ok) {
        ok.entry(op.key.as_str()).or_default().push(op);
    }
    let mut unknown = false;
    for (email, ops) in &ok {
        if ops.len() > 1 {
            anomalies.push(anomaly("duplicate", format!("account {email} created {} times", ops.len())));
        }
        let node = (ops[0].node % nodes) + 1;
        match tokio::time::timeout(Duration::from_secs(5), api(node, None).login(email, "twin-password")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.status().map(|s| s.is_client_error()).unwrap_or(false) => anomalies.push(anomaly(
                "lost-write",
                format!("account {email} acknowledged by node {} cannot log in through node {node}: {e}", ops[0].node),
            )),
            _ => unknown = true,
        }
    }
    (verdict_of(&anomalies, unknown), anomalies)
}

fn verdict_of(anomalies: &[Anomaly], unknown: bool) -> Verdict {
    if !anomalies.is_empty() {
        Verdict::Invalid
    } else if unknown {
        Verdict::Unknown
    } else {
        Verdict::Valid
    }
}

/// All nodes reach the same applied index with the same registry digest.
pub async fn check_convergence(nodes: usize) -> (Verdict, Vec<Anomaly>, Vec<DigestView>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let mut views = Vec::new();
        for i in 1..=nodes {
            if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(2), operator(i).digest()).await {
                views.push(d);
            }
        }
        if views.len() == nodes && views.iter().all(|d| d.last_applied == views[0].last_applied) {
            if views.iter().all(|d| d.digest == views[0].digest) {
                return (Verdict::Valid, Vec::new(), views);
            }
            let detail =
                views.iter().map(|d| format!("node {}: {}", d.node_id, d.digest)).collect::<Vec<_>>().join(", ");
            let diverged =
                anomaly("diverged", format!("same applied index {}, different state: {detail}", views[0].last_applied));
            return (Verdict::Invalid, vec![diverged], views);
        }
        last = views;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (Verdict::Unknown, Vec::new(), last)
}

// ----- data plane -----

pub struct ProbeReport {
    pub routing: Verdict,
    pub fencing: Verdict,
    pub anomalies: Vec<Anomaly>,
    /// Per healed fault: milliseconds from the heal to the next successful probe.
    pub recovery_ms: Vec<Option<u64>>,
}

pub fn check_probes(history: &[Op], tunnels: &[TunnelFixture], faults: &[Fault]) -> ProbeReport {
    let mut anomalies = Vec::new();
    let tunnel_of: BTreeMap<&str, &str> =
        tunnels.iter().map(|t| (t.socket_id.as_str(), t.tunnel_id.as_str())).collect();
    // (mover, seq) -> claim op; tunnel -> acknowledged claims.
    let mut claims: BTreeMap<(u64, u64), &Op> = BTreeMap::new();
    let mut acked: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.kind == OpKind::Claim) {
        let seq = op.value.seq().unwrap_or(0);
        claims.insert((op.client, seq), op);
        if op.outcome == Outcome::Ok {
            acked.entry(op.key.as_str()).or_default().push(op);
        }
    }
    // Only a fault that touched the serving node can excuse it: a node that was not cut off,
    // paused or killed applies the newer claim as soon as it commits. A lossy link slows the
    // log to every node, so it excuses them all.
    let unsettled = |t: u64, serving_node: usize| {
        faults.iter().any(|f| {
            let end = f.end.unwrap_or(u64::MAX);
            let touched = f.kind == "lossy-link" || f.nodes.contains(&serving_node);
            touched && t + SETTLE_NS >= f.start && t <= end.saturating_add(SETTLE_NS)
        })
    };
    let probes: Vec<&Op> = history.iter().filter(|o| o.kind == OpKind::Probe).collect();
    let (mut misrouted, mut stale) = (0, 0);
    for p in probes.iter().filter(|p| p.outcome == Outcome::Ok) {
        let served = p.value.socket_id().unwrap_or_default();
        if served != p.key {
            misrouted += 1;
            if misrouted <= 20 {
                anomalies.push(anomaly(
                    "misrouted",
                    format!("a request for socket {} through node {} reached socket {served:?}", p.key, p.node),
                ));
            }
            continue;
        }
        let OpValue::Served { mover: Some(mover), seq: Some(seq), .. } = p.value else { continue };
        let Some(serving) = claims.get(&(mover, seq)) else { continue };
        let (Some(serving_ret), Some(tunnel)) = (serving.ret, tunnel_of.get(p.key.as_str())) else { continue };
        if unsettled(p.call, serving.node) {
            continue;
        }
        let newer = acked
            .get(tunnel)
            .into_iter()
            .flatten()
            .find(|c| c.call > serving_ret && c.ret.map(|r| r + FENCING_GRACE_NS < p.call).unwrap_or(false));
        if let Some(c) = newer {
            stale += 1;
            if stale <= 20 {
                anomalies.push(anomaly(
                    "stale-holder",
                    format!(
                        "probe at {:.3}s through node {} was served by mover {mover}'s claim {seq} (node {}), superseded by mover {}'s claim on node {} acknowledged at {:.3}s",
                        p.call as f64 / 1e9,
                        p.node,
                        serving.node,
                        c.client,
                        c.node,
                        c.ret.unwrap_or(0) as f64 / 1e9
                    ),
                ));
            }
        }
    }
    let recovery_ms = faults
        .iter()
        .filter_map(|f| f.end)
        .map(|end| {
            probes
                .iter()
                .filter(|p| p.outcome == Outcome::Ok && p.call >= end)
                .filter_map(|p| p.ret)
                .min()
                .map(|r| (r - end) / 1_000_000)
        })
        .collect();
    ProbeReport {
        routing: if misrouted > 0 { Verdict::Invalid } else { Verdict::Valid },
        fencing: if stale > 0 { Verdict::Invalid } else { Verdict::Valid },
        anomalies,
        recovery_ms,
    }
}

// ----- cloud authentication -----

/// The cloud probes of one visitor: answered by the service, turned away by the edge (sent to
/// the provider, 401, 403), or neither (no answer, a timeout, another status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudCounts {
    pub other: u64,
    pub served: u64,
    pub turned_away: u64,
}

pub struct CloudReport {
    pub verdict: Verdict,
    pub anomalies: Vec<Anomaly>,
    /// Every visitor's probes.
    pub counts: BTreeMap<Visitor, CloudCounts>,
}

/// No request reached the guarded socket's service without alice's session, whether by what
/// the probe sent or by the probe tag the service saw (`unauthorised-visitor`), and the service
/// only ever got alice's email as `X-Mysocket-Email`: never a visitor's own, none, or two
/// (`wrong-identity`). Zero tolerance, faults or not: a node cut off or restarted still has
/// the socket's rules and its token key. Unknown when no probe with alice's session was served
/// in the whole run, which would prove nothing.
pub fn check_cloud(history: &[Op]) -> CloudReport {
    let mut counts: BTreeMap<Visitor, CloudCounts> =
        Visitor::ALL.into_iter().map(|v| (v, CloudCounts::default())).collect();
    let mut anomalies = Vec::new();
    let (mut unauthorised, mut wrong_identity) = (0, 0);
    for op in history.iter().filter(|o| o.kind == OpKind::CloudProbe) {
        let OpValue::Cloud { echo, probe, status, visitor, .. } = &op.value else { continue };
        let c = counts.entry(*visitor).or_default();
        let Some(echo) = echo else {
            match status {
                Some(302 | 401 | 403) => c.turned_away += 1,
                _ => c.other += 1,
            }
            continue;
        };
        c.served += 1;
        let at = format!("probe {probe} at {:.3}s through node {}", op.call as f64 / 1e9, op.node);
        let seen = echo.probe.as_deref().and_then(Visitor::of_tag);
        if !visitor.signed_in() || seen.is_some_and(|v| !v.signed_in()) {
            unauthorised += 1;
            if unauthorised <= 20 {
                let seen = echo.probe.as_deref().unwrap_or("none");
                anomalies.push(anomaly(
                    "unauthorised-visitor",
                    format!("{at} (as {visitor}) reached the service, which saw the probe tag {seen}"),
                ));
            }
        }
        if echo.email.as_deref() != Some(ALICE) {
            wrong_identity += 1;
            if wrong_identity <= 20 {
                let email = echo.email.as_deref().unwrap_or("none");
                anomalies.push(anomaly(
                    "wrong-identity",
                    format!("{at} (as {visitor}): the service got X-Mysocket-Email {email}, not {ALICE}"),
                ));
            }
        }
    }
    let signed_in_served: u64 = counts.iter().filter(|(v, _)| v.signed_in()).map(|(_, c)| c.served).sum();
    let verdict = if unauthorised + wrong_identity > 0 {
        Verdict::Invalid
    } else if signed_in_served == 0 {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    CloudReport { verdict, anomalies, counts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Model;
    use crate::cloud::Echo;

    fn op(
        client: u64,
        input: OwnIn,
        output: Option<OwnOut>,
        call: u64,
        ret: Option<u64>,
    ) -> checker::Operation<OwnIn, OwnOut> {
        checker::Operation { client, key: "t".into(), input, output, call, ret }
    }

    fn verdict(ops: &[checker::Operation<OwnIn, OwnOut>]) -> checker::Verdict {
        checker::check(&Ownership, ops, Instant::now() + Duration::from_secs(5), 2).verdict
    }

    #[test]
    fn the_model_follows_claims_and_releases() {
        let m = Ownership;
        let s = m.step(&m.init(), &OwnIn::Claim { node: 2 }, Some(&OwnOut::Claimed)).unwrap();
        assert_eq!(s, (1, Some(2)));
        assert!(m.step(&s, &OwnIn::Read, Some(&OwnOut::Read(Some((2, 1))))).is_some());
        assert!(m.step(&s, &OwnIn::Read, Some(&OwnOut::Read(Some((3, 1))))).is_none());
        let released = m.step(&s, &OwnIn::Read, Some(&OwnOut::Read(None))).unwrap();
        assert!(
            m.step(&released, &OwnIn::Read, Some(&OwnOut::Read(Some((2, 1))))).is_none(),
            "a released epoch never returns"
        );
    }

    #[test]
    fn a_stale_read_after_a_newer_claim_is_caught() {
        let ops = vec![
            op(1, OwnIn::Claim { node: 1 }, Some(OwnOut::Claimed), 0, Some(10)),
            op(2, OwnIn::Claim { node: 2 }, Some(OwnOut::Claimed), 20, Some(30)),
            op(3, OwnIn::Read, Some(OwnOut::Read(Some((1, 1)))), 40, Some(50)),
        ];
        assert_eq!(verdict(&ops), checker::Verdict::Illegal);
    }

    #[test]
    fn overlapping_claims_and_reads_may_order_either_way() {
        let ops = vec![
            op(1, OwnIn::Claim { node: 1 }, Some(OwnOut::Claimed), 0, Some(30)),
            op(2, OwnIn::Claim { node: 2 }, Some(OwnOut::Claimed), 5, Some(35)),
            op(3, OwnIn::Read, Some(OwnOut::Read(Some((1, 2)))), 40, Some(50)),
        ];
        assert_eq!(verdict(&ops), checker::Verdict::Ok);
    }

    #[test]
    fn a_lost_acknowledged_claim_is_caught() {
        // Claim on node 3 acknowledged, yet the next claim gets epoch 2 on top of epoch 1 only.
        let ops = vec![
            op(1, OwnIn::Claim { node: 1 }, Some(OwnOut::Claimed), 0, Some(10)),
            op(2, OwnIn::Claim { node: 3 }, Some(OwnOut::Claimed), 20, Some(30)),
            op(1, OwnIn::Claim { node: 2 }, Some(OwnOut::Claimed), 40, Some(50)),
            op(3, OwnIn::Read, Some(OwnOut::Read(Some((2, 2)))), 60, Some(70)),
        ];
        assert_eq!(verdict(&ops), checker::Verdict::Illegal);
    }

    #[test]
    fn an_unanswered_claim_may_or_may_not_count() {
        let base = vec![
            op(1, OwnIn::Claim { node: 1 }, Some(OwnOut::Claimed), 0, Some(10)),
            op(2, OwnIn::Claim { node: 3 }, None, 20, None),
        ];
        for seen in [(1, 1), (3, 2)] {
            let mut ops = base.clone();
            ops.push(op(3, OwnIn::Read, Some(OwnOut::Read(Some(seen))), 40, Some(50)));
            assert_eq!(verdict(&ops), checker::Verdict::Ok, "{seen:?}");
        }
    }

    fn probe_op(node: usize, call: u64, mover: u64, seq: u64) -> Op {
        Op {
            client: 100,
            kind: OpKind::Probe,
            key: "s".into(),
            node,
            call,
            ret: Some(call + 1_000_000),
            outcome: Outcome::Ok,
            value: OpValue::Served {
                status: 200,
                socket_id: Some("s".into()),
                mover: Some(mover),
                seq: Some(seq),
                body: format!("s {mover} {seq}"),
            },
        }
    }

    fn claim_op(mover: u64, seq: u64, node: usize, call: u64, ret: u64) -> Op {
        Op {
            client: mover,
            kind: OpKind::Claim,
            key: "t".into(),
            node,
            call,
            ret: Some(ret),
            outcome: Outcome::Ok,
            value: OpValue::Claim { seq, node_id: node as u64, error: None },
        }
    }

    fn fault(kind: &str, nodes: Vec<usize>, start_s: u64, end_s: u64) -> Fault {
        Fault::at(kind, nodes, start_s, end_s)
    }

    fn fencing(history: &[Op], faults: &[Fault]) -> Verdict {
        let tunnels =
            [TunnelFixture { socket_id: "s".into(), tunnel_id: "t".into(), dnsname: "s.test".into(), relay_port: 1 }];
        check_probes(history, &tunnels, faults).fencing
    }

    const S: u64 = 1_000_000_000;

    /// Mover 1 claims through node 1 at 1 s, mover 2 through node 2 at 2 s; a probe at 10 s is
    /// still served by mover 1's superseded session on node 1.
    fn superseded_history() -> Vec<Op> {
        vec![claim_op(1, 1, 1, S, S + S / 10), claim_op(2, 1, 2, 2 * S, 2 * S + S / 10), probe_op(3, 10 * S, 1, 1)]
    }

    #[test]
    fn a_superseded_session_serving_is_caught() {
        assert_eq!(fencing(&superseded_history(), &[]), Verdict::Invalid);
        // The newest claim serving is fine.
        let mut ok = superseded_history();
        ok[2] = probe_op(3, 10 * S, 2, 1);
        assert_eq!(fencing(&ok, &[]), Verdict::Valid);
    }

    #[test]
    fn only_a_fault_that_touched_the_serving_node_excuses_it() {
        let h = superseded_history();
        // Node 3 paused around the probe: node 1 applied the newer claim regardless.
        assert_eq!(fencing(&h, &[fault("pause-leader", vec![3], 8, 11)]), Verdict::Invalid);
        // Node 1 itself cut off until 9 s: it may serve from its stale replica for a while.
        assert_eq!(fencing(&h, &[fault("partition-leader-minority", vec![1], 4, 9)]), Verdict::Valid);
        // A lossy link slows the log to every node.
        assert_eq!(fencing(&h, &[fault("lossy-link", vec![2], 8, 11)]), Verdict::Valid);
        // Long after node 1's fault healed, it must have caught up.
        assert_eq!(fencing(&h, &[fault("pause-random", vec![1], 3, 5)]), Verdict::Invalid);
    }

    /// A cloud probe as `visitor`, through node 1 at `call_s`: answered by the service with
    /// `echo` (its email and probe tag), or, without one, by the edge with `status`.
    fn cloud_op(visitor: Visitor, call_s: u64, status: u16, echo: Option<(Option<&str>, &str)>) -> Op {
        let probe = format!("{visitor}-9-{call_s}");
        let echo = echo.map(|(email, tag)| Echo { email: email.map(str::to_string), probe: Some(tag.to_string()) });
        Op {
            client: 9,
            kind: OpKind::CloudProbe,
            key: "g".into(),
            node: 1,
            call: call_s * S,
            ret: Some(call_s * S + S / 100),
            outcome: if echo.is_some() { Outcome::Ok } else { Outcome::Fail },
            value: OpValue::Cloud { echo, error: None, probe, status: Some(status), visitor },
        }
    }

    /// Every visitor once: alice and mallory served with alice's email, the others turned away.
    fn guarded_history() -> Vec<Op> {
        vec![
            cloud_op(Visitor::Alice, 1, 200, Some((Some(ALICE), "alice-9-1"))),
            cloud_op(Visitor::Anonymous, 2, 302, None),
            cloud_op(Visitor::Bob, 3, 403, None),
            cloud_op(Visitor::Forged, 4, 302, None),
            cloud_op(Visitor::Mallory, 5, 200, Some((Some(ALICE), "mallory-9-5"))),
            cloud_op(Visitor::Alice, 6, 502, None),
        ]
    }

    #[test]
    fn only_alice_reaching_the_service_as_alice_is_valid() {
        let r = check_cloud(&guarded_history());
        assert_eq!(r.verdict, Verdict::Valid, "{:?}", r.anomalies);
        assert_eq!(r.counts[&Visitor::Alice], CloudCounts { other: 1, served: 1, turned_away: 0 });
        assert_eq!(r.counts[&Visitor::Bob], CloudCounts { other: 0, served: 0, turned_away: 1 });
        assert_eq!(r.counts[&Visitor::Mallory].served, 1);
    }

    #[test]
    fn a_visitor_without_alices_session_reaching_the_service_is_caught() {
        for visitor in [Visitor::Anonymous, Visitor::Bob, Visitor::Forged] {
            let mut h = guarded_history();
            h.push(cloud_op(visitor, 7, 200, Some((Some(ALICE), &format!("{visitor}-9-7")))));
            let r = check_cloud(&h);
            assert_eq!(r.verdict, Verdict::Invalid, "{visitor}");
            assert_eq!(r.anomalies[0].kind, "unauthorised-visitor");
        }
        // Whatever answered alice's probe, the service saw bob's request.
        let mut h = guarded_history();
        h.push(cloud_op(Visitor::Alice, 7, 200, Some((Some(ALICE), "bob-9-8"))));
        assert_eq!(check_cloud(&h).verdict, Verdict::Invalid);
    }

    #[test]
    fn any_identity_but_alices_at_the_service_is_caught() {
        for email in [Some("mallory@evil.test"), Some("alice@example.com, mallory@evil.test"), None] {
            let mut h = guarded_history();
            h.push(cloud_op(Visitor::Mallory, 7, 200, Some((email, "mallory-9-7"))));
            let r = check_cloud(&h);
            assert_eq!(r.verdict, Verdict::Invalid, "{email:?}");
            assert_eq!(r.anomalies[0].kind, "wrong-identity");
        }
    }

    #[test]
    fn a_run_where_alice_was_never_served_proves_nothing() {
        let h: Vec<Op> = guarded_history().into_iter().filter(|o| o.outcome != Outcome::Ok).collect();
        assert_eq!(check_cloud(&h).verdict, Verdict::Unknown);
        assert_eq!(check_cloud(&[]).verdict, Verdict::Unknown);
    }
}
