//! The cluster's DNS under faults: probers ask random nodes for a socket's name, and the
//! checker requires that no answer lists a node the majority has lost (killed, paused, or on
//! the minority side of a partition) for longer than [`GRACE_NS`]: the leader marks a silent
//! node dead after its liveness timeout, and a node cut off answers SERVFAIL.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::op::Query;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Name;
use hickory_proto::rr::RData;
use hickory_proto::rr::RecordType;

use crate::checks::Anomaly;
use crate::checks::Verdict;
use crate::nemesis::Fault;
use crate::net;
use crate::workload::Ctx;
use crate::workload::Fixture;
use crate::workload::Op;
use crate::workload::OpKind;
use crate::workload::OpValue;
use crate::workload::Outcome;

/// The nodes' DNS port.
pub const PORT: u16 = 5353;
/// How long a node lost by the majority may still be answered: an election (a lost leader,
/// 1–2 s), the liveness timeout (3 s) and a margin for the leader's write.
pub const GRACE_NS: u64 = 8_000_000_000;
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// One query to `node` for `name` (A): the answer's code and the slots it listed.
async fn ask(node: usize, name: &str, nodes: usize) -> anyhow::Result<(String, Vec<usize>)> {
    let mut q = Message::query();
    q.metadata.id = rand::random();
    q.add_query(Query::query(Name::from_ascii(format!("{name}."))?, RecordType::A));
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    sock.send_to(&q.to_vec()?, (net::ip(node).as_str(), PORT)).await?;
    let mut buf = vec![0u8; 1500];
    let n = tokio::time::timeout(QUERY_TIMEOUT, sock.recv(&mut buf)).await??;
    let answer = Message::from_vec(&buf[..n])?;
    let listed = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => (1..=nodes).find(|i| net::ip(*i) == a.0.to_string()),
            _ => None,
        })
        .collect();
    let code = match answer.metadata.response_code {
        ResponseCode::NoError => "NOERROR".to_string(),
        ResponseCode::ServFail => "SERVFAIL".to_string(),
        ResponseCode::NXDomain => "NXDOMAIN".to_string(),
        ResponseCode::Refused => "REFUSED".to_string(),
        other => format!("{other:?}").to_uppercase(),
    };
    Ok((code, listed))
}

/// Asks random nodes for the first tunnel's socket name until the run stops.
pub async fn prober(ctx: Arc<Ctx>, fx: Arc<Fixture>, client: u64) {
    use rand::Rng;
    let mut rng = ctx.rng(client);
    let Some(t) = fx.tunnels.first() else { return };
    while !ctx.done() {
        let node = rng.gen_range(1..=ctx.nodes);
        let call = ctx.now();
        let (outcome, value) = match ask(node, &t.dnsname, ctx.nodes).await {
            Ok((answer, listed)) => {
                let ok = if answer == "NOERROR" { Outcome::Ok } else { Outcome::Fail };
                (ok, OpValue::Dns { answer, listed })
            }
            Err(e) => (Outcome::Fail, OpValue::Dns { answer: format!("no answer: {e}"), listed: Vec::new() }),
        };
        ctx.record(client, OpKind::DnsProbe, &t.dnsname, node, call, outcome, value);
        ctx.think(&mut rng).await;
    }
}

/// When each slot was lost by the majority: `(slot, from, until)` in ns since the start.
fn lost(faults: &[Fault], nodes: usize) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    for f in faults.iter().filter(|f| f.error.is_none()) {
        let end = f.end.unwrap_or(u64::MAX);
        let struck = match f.kind.as_str() {
            "kill-leader" | "kill-random" | "kill-holder" | "kill-fleet-holder" | "pause-leader" | "pause-random" => {
                f.nodes.clone()
            }
            "partition-leader-minority" | "partition-one" | "partition-oneway" => f.nodes.clone(),
            // The side named is one half: lost when it is the smaller.
            "partition-halves" if f.nodes.len() * 2 < nodes => f.nodes.clone(),
            // A ring, a lossy link, every node down, a membership change: no node is lost by a
            // majority that still answers.
            _ => Vec::new(),
        };
        out.extend(struck.into_iter().map(|slot| (slot, f.start, end)));
    }
    out
}

/// Per answer, what it says and how many.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsCounts {
    pub answered: u64,
    pub servfail: u64,
    pub other: u64,
}

pub struct DnsReport {
    pub verdict: Verdict,
    pub anomalies: Vec<Anomaly>,
    pub counts: DnsCounts,
}

/// Invalid if an answer listed a node the majority had lost more than [`GRACE_NS`] before the
/// query was sent (and had not got back by then); unknown if no query was answered.
pub fn check_dns(history: &[Op], faults: &[Fault], nodes: usize) -> DnsReport {
    let lost = lost(faults, nodes);
    let mut counts = DnsCounts::default();
    let mut anomalies = Vec::new();
    for op in history.iter().filter(|o| o.kind == OpKind::DnsProbe) {
        let OpValue::Dns { answer, listed } = &op.value else { continue };
        match answer.as_str() {
            "NOERROR" => counts.answered += 1,
            "SERVFAIL" => counts.servfail += 1,
            _ => counts.other += 1,
        }
        for slot in listed {
            let since =
                lost.iter().find(|(s, from, until)| s == slot && op.call >= from + GRACE_NS && op.call < *until);
            if let Some((_, from, _)) = since {
                anomalies.push(Anomaly {
                    kind: "dead-node-answered".into(),
                    detail: format!(
                        "node {} answered a query for {} at {:.1} s listing node {slot}, which the majority had lost {:.1} s before",
                        op.node,
                        op.key,
                        op.call as f64 / 1e9,
                        (op.call - from) as f64 / 1e9
                    ),
                });
            }
        }
    }
    let verdict = match (anomalies.is_empty(), counts.answered) {
        (false, _) => Verdict::Invalid,
        (true, 0) => Verdict::Unknown,
        (true, _) => Verdict::Valid,
    };
    DnsReport { verdict, anomalies, counts }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(call_s: u64, node: usize, listed: Vec<usize>) -> Op {
        Op {
            client: 1,
            kind: OpKind::DnsProbe,
            key: "s.localhost".into(),
            node,
            call: call_s * 1_000_000_000,
            ret: Some(call_s * 1_000_000_000 + 1),
            outcome: Outcome::Ok,
            value: OpValue::Dns { answer: "NOERROR".into(), listed },
        }
    }

    fn fault(kind: &str, nodes: Vec<usize>, start_s: u64, end_s: u64) -> Fault {
        Fault::at(kind, nodes, start_s, end_s)
    }

    #[test]
    fn a_lost_node_may_be_listed_only_within_the_grace() {
        let faults = [fault("kill-random", vec![3], 10, 40), fault("partition-halves", vec![2, 3, 4], 50, 70)];
        let ok = [
            probe(5, 1, vec![1, 2, 3]),
            probe(15, 1, vec![1, 2, 3]),
            probe(25, 2, vec![1, 2]),
            probe(45, 1, vec![1, 2, 3]),
        ];
        let r = check_dns(&ok, &faults, 5);
        assert_eq!((r.verdict, r.counts.answered), (Verdict::Valid, 4), "{:?}", r.anomalies);
        let late = [probe(25, 1, vec![1, 2, 3])];
        let r = check_dns(&late, &faults, 5);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(r.anomalies[0].detail.contains("node 3"), "{:?}", r.anomalies);
        // The larger half of a partition is not lost.
        assert_eq!(check_dns(&[probe(65, 1, vec![2, 3, 4])], &faults, 5).verdict, Verdict::Valid);
        assert_eq!(check_dns(&[], &faults, 5).verdict, Verdict::Unknown);
    }

    #[test]
    fn dns_probes_read_back_from_the_history_as_written() {
        let op = probe(5, 1, vec![1, 2]);
        let line = serde_json::to_string(&op).unwrap();
        assert!(line.contains(r#""value":{"answer":"NOERROR","listed":[1,2]}"#), "{line}");
        let back: Op = serde_json::from_str(&line).unwrap();
        assert_eq!(back.value, op.value);
        assert_eq!(serde_json::to_string(&back).unwrap(), line);
    }
}
