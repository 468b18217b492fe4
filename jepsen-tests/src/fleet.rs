//! The fleet: many tunnels of many accounts, each held by an SSH client that behaves like
//! `mysocketctl` (a lost session moves to another node after a random part of a second, failures
//! back off), all starting on slot 1. The `fleet` nemesis (`kill-fleet-holder`) kills -9 the
//! node holding most of them and measures, for each tunnel it held, how long until a public
//! request through the surviving nodes is answered by that tunnel's service again.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use mysocket_api::reconnect::doubled;
use mysocket_api::reconnect::jittered;
use mysocket_api::reconnect::FIRST_BACKOFF;
use mysocket_api::SocketCreate;
use mysocket_api::UserCreate;
use rand::Rng;
use serde::Deserialize;
use serde::Serialize;

use crate::checks::Anomaly;
use crate::checks::Verdict;
use crate::workload::api;
use crate::workload::claim;
use crate::workload::http_get;
use crate::workload::patiently;
use crate::workload::Ctx;
use crate::workload::Fixture;
use crate::workload::Service;
use crate::workload::TunnelFixture;

/// Sockets per fleet account: the nodes' default cap on http sockets per account, which the
/// fleet keeps (it runs on the default configuration).
const PER_ACCOUNT: usize = 10;
/// The slot every fleet client claims through first.
const HOME: usize = 1;
/// SSH connect, authentication and the claim.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(8);
/// A tunnel of a killed holder not answering through the survivors this long after the kill
/// has not recovered: an anomaly.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// Between two probes of a tunnel that has not answered yet.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// The fleet's tunnels and where each client's live session is.
pub struct Fleet {
    /// Per tunnel: its account's SSH user name and the tunnel.
    pub tunnels: Vec<(String, TunnelFixture)>,
    /// Per tunnel: the slot its client's session is on, 0 while it has none.
    pub at: Vec<AtomicUsize>,
}

impl Fleet {
    pub fn empty() -> Fleet {
        Fleet { tunnels: Vec::new(), at: Vec::new() }
    }

    /// `size` http sockets, each with a tunnel, over accounts of [`PER_ACCOUNT`] sockets each.
    pub async fn create(size: usize, public_key: &str) -> anyhow::Result<Fleet> {
        let a = api(1, None);
        let mut tunnels = Vec::with_capacity(size);
        for k in 0..size.div_ceil(PER_ACCOUNT) {
            let user = UserCreate {
                name: format!("Fleet{k}"),
                email: format!("fleet{k}@jepsen.test"),
                password: format!("fleet{k}-password"),
                sshkey: public_key.to_string(),
            };
            let u = patiently("create a fleet account", || a.create_user(&user)).await?;
            let token = patiently("log in", || a.login(&user.email, &user.password)).await?.token;
            let owner = api(1, Some(&token));
            for t in (k * PER_ACCOUNT)..size.min((k + 1) * PER_ACCOUNT) {
                let req =
                    SocketCreate { name: format!("fleet-{t}"), socket_type: Some("http".into()), ..Default::default() };
                let s = patiently("create a fleet socket", || owner.create_socket(&req)).await?;
                let tn = patiently("create a fleet tunnel", || owner.create_tunnel(&s.socket_id)).await?;
                let fixture = TunnelFixture {
                    socket_id: s.socket_id,
                    tunnel_id: tn.tunnel_id,
                    dnsname: s.dnsname,
                    relay_port: tn.local_port,
                };
                tunnels.push((u.user_name.clone(), fixture));
            }
        }
        let at = (0..tunnels.len()).map(|_| AtomicUsize::new(0)).collect();
        Ok(Fleet { tunnels, at })
    }

    /// The slot holding the most fleet sessions, and the tunnels it holds.
    pub fn busiest(&self) -> Option<(usize, Vec<usize>)> {
        let slots: Vec<usize> = self.at.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        let max = slots.iter().copied().filter(|&s| s != 0).max()?;
        let mut best = (0, 0);
        for s in 1..=max {
            let n = slots.iter().filter(|&&x| x == s).count();
            if n > best.1 {
                best = (s, n);
            }
        }
        Some((best.0, (0..slots.len()).filter(|&i| slots[i] == best.0).collect()))
    }
}

/// Holds fleet tunnel `i` until the run stops: claims it through [`HOME`] first, and whenever
/// its session ends or a claim fails, through another node.
pub async fn client(ctx: Arc<Ctx>, fx: Arc<Fixture>, i: usize, client: u64) {
    let (user, t) = fx.fleet.tunnels[i].clone();
    let mut rng = ctx.rng(client);
    let mut node = HOME;
    let mut backoff = FIRST_BACKOFF;
    let mut seq = 0u64;
    while !ctx.done() {
        seq += 1;
        let service = Service::new(format!("{} fleet{i} {seq}", t.socket_id));
        let attempt =
            tokio::time::timeout(CLAIM_TIMEOUT, claim(node, &user, fx.key.clone(), t.relay_port, service)).await;
        let wait = match attempt {
            Ok(Ok(session)) => {
                fx.fleet.at[i].store(node, Ordering::Relaxed);
                while !ctx.done() && !session.is_closed() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                fx.fleet.at[i].store(0, Ordering::Relaxed);
                let _ = session.disconnect(russh::Disconnect::ByApplication, "done", "").await;
                backoff = FIRST_BACKOFF;
                FIRST_BACKOFF
            }
            _ => {
                let w = backoff;
                backoff = doubled(backoff);
                w
            }
        };
        tokio::time::sleep(jittered(wait, &mut rng)).await;
        if ctx.nodes > 1 {
            // Another node than the one that just failed or was lost.
            node = (node + rng.gen_range(0..ctx.nodes - 1)) % ctx.nodes + 1;
        }
    }
}

/// One `kill-fleet-holder` fault as measured: the fleet tunnels its node held and how long
/// each took to answer through the survivors again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRecovery {
    /// The slot killed, and whether it led the cluster (its tunnels then wait for an election).
    pub slot: usize,
    #[serde(default)]
    pub leader: bool,
    /// Fleet tunnels it held, of how many.
    pub held: usize,
    pub fleet: usize,
    /// Milliseconds from the kill until 50%, 99% and all of the held tunnels answered through
    /// the other nodes (`None`: not within [`RECOVERY_LIMIT`]).
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub all_ms: Option<u64>,
    /// Held tunnels that had not answered within the limit.
    pub not_recovered: usize,
    /// Answers from another socket's service than the one asked for (zero tolerance).
    pub misrouted: Vec<String>,
}

/// What a `kill-fleet-holder` struck.
pub struct Struck {
    pub slot: usize,
    /// Whether it led the cluster.
    pub leader: bool,
    /// The fleet tunnels it held.
    pub held: Vec<usize>,
    pub at: Instant,
}

/// Probes each tunnel the struck node held through the other slots until it answers, from the
/// kill; the recovery times.
pub async fn measure(fx: Arc<Fixture>, nodes: usize, struck: Struck) -> FleetRecovery {
    let Struck { slot: killed, leader, held, at: killed_at } = struck;
    let survivors: Vec<usize> = (1..=nodes).filter(|&s| s != killed).collect();
    let probes = held.iter().map(|&i| {
        let (fx, survivors) = (fx.clone(), survivors.clone());
        async move {
            let t = &fx.fleet.tunnels[i].1;
            let mut misrouted = Vec::new();
            let mut n = 0usize;
            while killed_at.elapsed() < RECOVERY_LIMIT {
                let node = survivors[n % survivors.len()];
                n += 1;
                if let Ok(Ok((200, body))) =
                    tokio::time::timeout(Duration::from_secs(2), http_get(node, &t.dnsname)).await
                {
                    if body.split_whitespace().next() == Some(t.socket_id.as_str()) {
                        return (Some(killed_at.elapsed()), misrouted);
                    }
                    misrouted.push(format!("{} through slot {node} answered {body:?}", t.dnsname));
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
            (None, misrouted)
        }
    });
    let answers = futures::future::join_all(probes).await;
    let mut times: Vec<u64> = answers.iter().filter_map(|(t, _)| t.map(|d| d.as_millis() as u64)).collect();
    times.sort_unstable();
    let not_recovered = held.len() - times.len();
    let at = |q: f64| -> Option<u64> {
        if held.is_empty() {
            return Some(0);
        }
        let k = ((q * held.len() as f64).ceil() as usize).max(1);
        times.get(k - 1).copied()
    };
    FleetRecovery {
        slot: killed,
        leader,
        held: held.len(),
        fleet: fx.fleet.tunnels.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        all_ms: at(1.0),
        not_recovered,
        misrouted: answers.into_iter().flat_map(|(_, m)| m).collect(),
    }
}

/// The `fleet-recovery` verdict: every tunnel of every killed fleet holder answered again
/// within the limit, and nothing was misrouted. Unknown when no fleet holder was killed.
pub fn check(recoveries: &[FleetRecovery]) -> (Verdict, Vec<Anomaly>) {
    let mut anomalies = Vec::new();
    for r in recoveries {
        if r.not_recovered > 0 {
            anomalies.push(Anomaly {
                kind: "fleet-not-recovered".into(),
                detail: format!(
                    "{} of the {} fleet tunnels held by slot {} did not answer through the other nodes within {} s \
                     of the kill",
                    r.not_recovered,
                    r.held,
                    r.slot,
                    RECOVERY_LIMIT.as_secs()
                ),
            });
        }
        for m in r.misrouted.iter().take(20) {
            anomalies.push(Anomaly { kind: "misrouted".into(), detail: format!("fleet probe: {m}") });
        }
    }
    let verdict = if !anomalies.is_empty() {
        Verdict::Invalid
    } else if recoveries.iter().any(|r| r.held > 0) {
        Verdict::Valid
    } else {
        Verdict::Unknown
    };
    (verdict, anomalies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovery(held: usize, not_recovered: usize, misrouted: Vec<String>) -> FleetRecovery {
        FleetRecovery {
            slot: 1,
            leader: false,
            held,
            fleet: 100,
            p50_ms: Some(900),
            p99_ms: None,
            all_ms: None,
            not_recovered,
            misrouted,
        }
    }

    #[test]
    fn a_tunnel_not_back_or_a_misrouted_answer_is_an_anomaly() {
        assert_eq!(check(&[]).0, Verdict::Unknown);
        assert_eq!(check(&[recovery(0, 0, vec![])]).0, Verdict::Unknown);
        assert_eq!(check(&[recovery(40, 0, vec![])]), (Verdict::Valid, vec![]));
        let (v, a) = check(&[recovery(40, 0, vec![]), recovery(35, 2, vec![])]);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(a[0].kind, "fleet-not-recovered");
        assert!(a[0].detail.starts_with("2 of the 35"), "{}", a[0].detail);
        let (v, a) = check(&[recovery(40, 0, vec!["x answered y".into()])]);
        assert_eq!((v, a[0].kind.as_str()), (Verdict::Invalid, "misrouted"));
    }

    #[test]
    fn the_busiest_slot_is_the_one_holding_most() {
        let f = Fleet { tunnels: Vec::new(), at: [2, 1, 2, 0, 3, 2].into_iter().map(AtomicUsize::new).collect() };
        assert_eq!(f.busiest(), Some((2, vec![0, 2, 5])));
        assert_eq!(Fleet::empty().busiest(), None);
    }
}
