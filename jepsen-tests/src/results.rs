//! What a run followed and what it concluded, as the report folder holds them:
//! `schedule.json` ([`Schedule`]) and `results.json` ([`Results`]).
//!
//! Fields are in alphabetical order, the order the files list them in (see [`to_json`]).

use std::collections::BTreeMap;

use mysocket_api::DigestView;
use serde::Deserialize;
use serde::Serialize;

use crate::checker::CheckResult;
use crate::checks::Anomaly;
use crate::checks::CloudCounts;
use crate::checks::Verdict;
use crate::cloud::Visitor;
use crate::nemesis::Fault;
use crate::nemesis::Observed;
use crate::nemesis::Planned;
use crate::workload::Op;
use crate::workload::OpKind;
use crate::workload::Outcome;

/// Pretty JSON with the keys of every object in alphabetical order, nested ones too: the order
/// these files had when they were written through `serde_json::Value`, kept so that a run's
/// files compare line by line with an older run's.
pub fn to_json(v: &impl Serialize) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::to_value(v)?)
}

/// `schedule.json`: the run as it was drawn from the seed, before anything started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Schedule {
    /// The fault families asked for (`--nemesis`).
    pub nemesis: Vec<String>,
    pub nodes: usize,
    pub planned: Vec<Planned>,
    pub planted_bug: Option<String>,
    pub quick: bool,
    pub seed: u64,
    pub total_ms: u64,
}

/// `results.json`: the verdict and everything it rests on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The first anomalies of every checker (the probes keep at most 20 of each kind).
    pub anomalies: Vec<Anomaly>,
    /// Each checker's verdict by name (`linearizable-ownership`, `fencing`, …).
    pub checkers: BTreeMap<String, Verdict>,
    /// The cloud probes by visitor, which the `cloud-auth` checker judged; absent from runs
    /// made before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_auth: Option<BTreeMap<Visitor, CloudCounts>>,
    /// The DNS probes by answer (runs before the cluster answered DNS have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::DnsCounts>,
    pub counts: BTreeMap<OpKind, Counts>,
    pub coverage: Coverage,
    /// Every node's digest as the convergence check last read them.
    pub digests: Vec<DigestView>,
    /// 0 valid, 1 invalid, 2 unknown or harness failure.
    pub exit_code: i32,
    /// The faults as they were injected, in order.
    pub faults: Vec<Fault>,
    /// What failed in the harness itself (healing, restoring the nodes, waiting for the
    /// cluster): with any, the run proves nothing.
    pub harness_errors: Vec<String>,
    pub leader_changes: usize,
    /// (time ns, term, leader) each time the cluster's leader changed.
    pub leaders: Vec<(u64, u64, u64)>,
    /// The ownership checker's result per tunnel.
    pub linearizability: CheckResult,
    pub nodes: usize,
    pub planted_bug: Option<String>,
    /// Per healed fault: milliseconds from the heal to the next successful probe.
    pub recovery_ms: Vec<Option<u64>>,
    pub run_seconds: f64,
    pub seed: u64,
    pub snapshots_installed: u64,
    pub verdict: Verdict,
}

/// Operations of one kind by outcome (`info`: unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub fail: u64,
    pub info: u64,
    pub ok: u64,
}

impl Counts {
    /// The history's operations by kind and outcome.
    pub fn of(history: &[Op]) -> BTreeMap<OpKind, Counts> {
        let mut counts: BTreeMap<OpKind, Counts> = BTreeMap::new();
        for o in history {
            let c = counts.entry(o.kind).or_default();
            match o.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::Fail => c.fail += 1,
                Outcome::Info => c.info += 1,
            }
        }
        counts
    }
}

/// The coverage gates: a run that saw no faults, no progress or no failover proves nothing,
/// however clean its history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Every scheduled fault was applied, and healed, without an error.
    pub every_fault_applied: bool,
    pub leader_changed: bool,
    /// A write (a claim or a socket) succeeded after the last heal...
    pub ok_after_faults: bool,
    /// ...and before the first fault.
    pub ok_before_faults: bool,
    /// Some operation succeeded while a fault was on.
    pub ok_during_faults: bool,
    pub snapshot_installed: bool,
}

impl Coverage {
    pub fn of(history: &[Op], planned: usize, faults: &[Fault], observed: &Observed, total_ns: u64) -> Coverage {
        let ok_between =
            |from: u64, to: u64| history.iter().any(|o| o.outcome == Outcome::Ok && o.call >= from && o.call <= to);
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
        Coverage {
            every_fault_applied: faults.len() == planned && faults.iter().all(|f| f.error.is_none()),
            leader_changed: observed.leaders.len() >= 2,
            ok_after_faults: writes_ok(last, total_ns),
            ok_before_faults: writes_ok(0, first),
            ok_during_faults: faults.iter().any(|f| ok_between(f.start, f.end.unwrap_or(total_ns))),
            snapshot_installed: observed.snapshots_installed >= 1,
        }
    }

    /// Every gate passed.
    pub fn covered(&self) -> bool {
        self.every_fault_applied
            && self.leader_changed
            && self.ok_after_faults
            && self.ok_before_faults
            && self.ok_during_faults
            && self.snapshot_installed
    }
}

/// The run's verdict: invalid as soon as one checker found an anomaly; unknown when a checker
/// could not decide, a coverage gate failed or the harness did.
pub fn overall(checkers: &BTreeMap<String, Verdict>, coverage: &Coverage, harness_errors: &[String]) -> Verdict {
    if checkers.values().any(|v| *v == Verdict::Invalid) {
        Verdict::Invalid
    } else if checkers.values().any(|v| *v == Verdict::Unknown) || !coverage.covered() || !harness_errors.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESULTS: &str = include_str!("../testdata/results.json");
    const HISTORY: &str = include_str!("../testdata/history.jsonl");

    /// `testdata/results.json` is what the suite wrote before its results were typed.
    #[test]
    fn results_json_reads_and_writes_back_unchanged() {
        let r: Results = serde_json::from_str(RESULTS).unwrap();
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.counts[&OpKind::CreateSocket], Counts { fail: 0, info: 2, ok: 180 });
        assert_eq!(to_json(&r).unwrap(), RESULTS.trim_end());
    }

    #[test]
    fn counts_are_by_kind_and_outcome() {
        let ops: Vec<Op> = HISTORY.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let counts = Counts::of(&ops);
        assert_eq!(counts[&OpKind::Claim], Counts { fail: 1, info: 1, ok: 1 });
        assert_eq!(counts[&OpKind::Probe], Counts { fail: 2, info: 0, ok: 2 });
        assert_eq!(counts[&OpKind::CloudProbe], Counts { fail: 2, info: 0, ok: 1 });
        assert_eq!(
            counts.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["claim", "cloud_probe", "create_account", "create_socket", "probe", "read"]
        );
    }

    fn gates(r: &Results) -> Coverage {
        Coverage { ok_during_faults: true, ..r.coverage }
    }

    #[test]
    fn the_verdict_is_invalid_first_then_unknown() {
        let r: Results = serde_json::from_str(RESULTS).unwrap();
        let coverage = gates(&r);
        assert_eq!(overall(&r.checkers, &coverage, &[]), Verdict::Invalid);
        let mut checkers = r.checkers.clone();
        checkers.insert("linearizable-ownership".into(), Verdict::Valid);
        assert_eq!(overall(&checkers, &coverage, &[]), Verdict::Unknown, "sockets-unique-durable is unknown");
        checkers.insert("sockets-unique-durable".into(), Verdict::Valid);
        assert_eq!(overall(&checkers, &coverage, &[]), Verdict::Valid);
        assert_eq!(overall(&checkers, &r.coverage, &[]), Verdict::Unknown, "a coverage gate failed");
        assert_eq!(overall(&checkers, &coverage, &r.harness_errors), Verdict::Unknown);
    }
}
