//! The run folder: `history.jsonl`, `schedule.json`, `results.json`, `timeline.html`,
//! `summary.md` (node logs are written there by the nodes themselves).

use std::fmt::Write as _;
use std::path::Path;

use crate::nemesis::Fault;
use crate::results::to_json;
use crate::results::Results;
use crate::results::Schedule;
use crate::workload::Op;
use crate::workload::OpKind;
use crate::workload::Outcome;

pub fn write_schedule(dir: &Path, schedule: &Schedule) -> anyhow::Result<()> {
    std::fs::write(dir.join("schedule.json"), to_json(schedule)?)?;
    Ok(())
}

/// `results.json`, `timeline.html` and `summary.md`; returns the summary.
pub fn write_results(dir: &Path, results: &Results, history: &[Op], total_ns: u64) -> anyhow::Result<String> {
    std::fs::write(dir.join("results.json"), to_json(results)?)?;
    let timeline = timeline(history, &results.faults, &results.leaders, total_ns);
    std::fs::write(dir.join("timeline.html"), timeline)?;
    let summary = summary(results);
    std::fs::write(dir.join("summary.md"), &summary)?;
    Ok(summary)
}

pub fn write_history(dir: &Path, ops: &[Op]) -> anyhow::Result<()> {
    let mut s = String::new();
    for op in ops {
        s.push_str(&serde_json::to_string(op)?);
        s.push('\n');
    }
    std::fs::write(dir.join("history.jsonl"), s)?;
    Ok(())
}

/// One lane per client, one bar per operation (green ok, red fail, amber unknown, running to
/// the end of the run when it never returned), faults as shaded bands, leader changes as lines.
pub fn timeline(ops: &[Op], faults: &[Fault], leaders: &[(u64, u64, u64)], total_ns: u64) -> String {
    let width = 1600.0;
    let lane = 14.0;
    let left = 110.0;
    let mut clients: Vec<(u64, OpKind)> = ops.iter().map(|o| (o.client, o.kind)).collect();
    clients.sort();
    clients.dedup_by_key(|c| c.0);
    let height = 40.0 + lane * clients.len() as f64;
    let x = |t: u64| left + (width - left) * (t as f64 / total_ns.max(1) as f64);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="10">"#
    );
    for f in faults {
        let (a, b) = (x(f.start), x(f.end.unwrap_or(total_ns)));
        let _ = write!(
            svg,
            r##"<rect x="{a:.1}" y="0" width="{:.1}" height="{height}" fill="#c8c8ff" opacity="0.5"><title>{} {:?} {}</title></rect><text x="{a:.1}" y="10">{}</text>"##,
            (b - a).max(1.0),
            f.kind,
            f.nodes,
            f.detail,
            f.kind
        );
    }
    for (t, term, leader) in leaders {
        let lx = x(*t);
        let _ = write!(
            svg,
            r#"<line x1="{lx:.1}" y1="12" x2="{lx:.1}" y2="{height}" stroke="black" stroke-dasharray="2,2"/><text x="{lx:.1}" y="22">L{leader}/t{term}</text>"#
        );
    }
    for (row, (client, kind)) in clients.iter().enumerate() {
        let y = 28.0 + lane * row as f64;
        let _ = write!(svg, r#"<text x="2" y="{:.1}">{kind} {client}</text>"#, y + 10.0);
        for o in ops.iter().filter(|o| o.client == *client) {
            let (a, b) = (x(o.call), x(o.ret.unwrap_or(total_ns)));
            let colour = match o.outcome {
                Outcome::Ok => "#2a9d4b",
                Outcome::Fail => "#d62828",
                Outcome::Info => "#f4a261",
            };
            let _ = write!(
                svg,
                r#"<rect x="{a:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{} {} node {} {}</title></rect>"#,
                (b - a).max(1.0),
                lane - 3.0,
                o.kind,
                o.key,
                o.node,
                html_escape(&json(&o.value))
            );
        }
    }
    svg.push_str("</svg>");
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mysocket-jepsen timeline</title></head><body>\
         <p>Lanes: one per client. Green ok, red failed, amber unknown (never answered). Blue bands: faults. \
         Dashed lines: leader changes (L&lt;leader&gt;/t&lt;term&gt;). Hover for details.</p>{svg}</body></html>"
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `summary.md`: the verdicts, operation counts, faults and first anomalies of a run.
pub fn summary(r: &Results) -> String {
    let mut s = format!(
        "# mysocket-jepsen: {}\n\nseed {} · {} nodes · planted bug: {} · {:.0} s\n\n## Checkers\n\n| checker | verdict |\n|---|---|\n",
        r.verdict.as_str(),
        r.seed,
        r.nodes,
        r.planted_bug.as_deref().unwrap_or("none"),
        r.run_seconds
    );
    for (k, v) in &r.checkers {
        let _ = writeln!(s, "| {k} | {} |", v.as_str());
    }
    s.push_str("\n## Operations\n\n| kind | ok | fail | unknown |\n|---|---:|---:|---:|\n");
    for (k, c) in &r.counts {
        let _ = writeln!(s, "| {k} | {} | {} | {} |", c.ok, c.fail, c.info);
    }
    if let Some(cloud) = &r.cloud_auth {
        s.push_str(
            "\n## Cloud authentication\n\nProbes of the guarded socket (alice@example.com only) by visitor: \
             answered by the service, turned away by the edge, neither (no answer, another status).\n\n\
             | visitor | served | turned away | other |\n|---|---:|---:|---:|\n",
        );
        for (v, c) in cloud {
            let _ = writeln!(s, "| {v} | {} | {} | {} |", c.served, c.turned_away, c.other);
        }
    }
    if let Some(d) = &r.dns {
        let _ = write!(
            s,
            "\n## DNS\n\nQueries for a socket's name to random nodes: {} answered, {} SERVFAIL (a node out of touch \
             with the cluster), {} without an answer or with another code. No answer may list a node the majority \
             had lost for more than {} s.\n",
            d.answered,
            d.servfail,
            d.other,
            crate::dns::GRACE_NS / 1_000_000_000
        );
    }
    s.push_str("\n## Faults\n\n| fault | nodes | start s | end s | error |\n|---|---|---:|---:|---|\n");
    for f in &r.faults {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {} |",
            f.kind,
            json(&f.nodes),
            f.start as f64 / 1e9,
            f.end.unwrap_or(0) as f64 / 1e9,
            f.error.as_deref().unwrap_or("")
        );
    }
    let fleet: Vec<&crate::fleet::FleetRecovery> = r.faults.iter().filter_map(|f| f.fleet.as_ref()).collect();
    if !fleet.is_empty() {
        s.push_str(
            "\n## Fleet failover\n\nEach kill of the node holding most fleet tunnels: the tunnels it held, and the \
             time from the kill until 50%, 99% and all of them answered through the other nodes (none: not within \
             the limit). A leader's death adds an election.\n\n| slot | held | 50% ms | 99% ms | 100% ms | not back | misrouted |\n\
             |---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let ms = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "none".into());
        for f in fleet {
            let _ = writeln!(
                s,
                "| {}{} | {} of {} | {} | {} | {} | {} | {} |",
                f.slot,
                if f.leader { " (leader)" } else { "" },
                f.held,
                f.fleet,
                ms(f.p50_ms),
                ms(f.p99_ms),
                ms(f.all_ms),
                f.not_recovered,
                f.misrouted.len()
            );
        }
    }
    let _ = write!(
        s,
        "\nLeader changes: {} · snapshots installed: {} · recovery after each heal (ms): {}\n\nCoverage: {}\n",
        r.leader_changes,
        r.snapshots_installed,
        json(&r.recovery_ms),
        json(&r.coverage)
    );
    if !r.anomalies.is_empty() {
        let _ = write!(s, "\n## Anomalies ({})\n\n", r.anomalies.len());
        for a in r.anomalies.iter().take(30) {
            let _ = writeln!(s, "- **{}**: {}", a.kind, a.detail);
        }
    }
    if !r.harness_errors.is_empty() {
        let _ = write!(s, "\nHarness errors: {:?}\n", r.harness_errors);
    }
    s
}

/// Compact JSON, as the summary and the timeline show values.
fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CloudCounts;
    use crate::cloud::Visitor;

    /// `testdata/summary.md` is what the suite wrote for `testdata/results.json` before its
    /// results were typed, but for the harness errors, which were printed as `[String("…")]`.
    #[test]
    fn the_summary_of_a_run_is_unchanged() {
        let r: Results = serde_json::from_str(include_str!("../testdata/results.json")).unwrap();
        assert_eq!(summary(&r), include_str!("../testdata/summary.md"));
    }

    #[test]
    fn the_summary_counts_the_cloud_probes_by_visitor() {
        let mut r: Results = serde_json::from_str(include_str!("../testdata/results.json")).unwrap();
        let counts = |served, turned_away, other| CloudCounts { other, served, turned_away };
        r.cloud_auth = Some([(Visitor::Alice, counts(40, 0, 1)), (Visitor::Bob, counts(0, 41, 0))].into());
        let s = summary(&r);
        assert!(s.contains("| visitor | served | turned away | other |\n|---|---:|---:|---:|\n| alice | 40 | 0 | 1 |\n| bob | 0 | 41 | 0 |\n"), "{s}");
        let back: Results = serde_json::from_str(&to_json(&r).unwrap()).unwrap();
        assert_eq!(back, r, "results.json with the cloud probes reads back");
    }

    #[test]
    fn the_summary_gives_the_fleets_recovery_times() {
        let mut r: Results = serde_json::from_str(include_str!("../testdata/results.json")).unwrap();
        let mut f = crate::nemesis::Fault::at("kill-fleet-holder", vec![2], 30, 40);
        f.fleet = Some(crate::fleet::FleetRecovery {
            slot: 2,
            leader: true,
            held: 37,
            fleet: 100,
            p50_ms: Some(1_240),
            p99_ms: Some(2_010),
            all_ms: None,
            not_recovered: 1,
            misrouted: Vec::new(),
        });
        r.faults.push(f);
        let s = summary(&r);
        assert!(s.contains("## Fleet failover"), "{s}");
        assert!(s.contains("| 2 (leader) | 37 of 100 | 1240 | 2010 | none | 1 | 0 |\n"), "{s}");
        let back: Results = serde_json::from_str(&to_json(&r).unwrap()).unwrap();
        assert_eq!(back, r, "results.json with a fleet's recovery reads back");
    }
}
