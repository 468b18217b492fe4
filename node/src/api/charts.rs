//! The operators' charts on `GET /`: the last hour of every member's history
//! ([`crate::control::history`]) drawn as inline SVG on the node — no script, no network
//! dependency, readable by any browser (and by the tests, which read each line's last value
//! from its `data-last`).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write;

use crate::control::history::Sample;
use crate::control::history::INTERVAL;

const HOUR_MS: u64 = 3_600_000;
const W: f64 = 640.0;
const H: f64 = 200.0;
/// The plot area inside the picture.
const LEFT: f64 = 56.0;
const RIGHT: f64 = 630.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 176.0;
const COLORS: [&str; 8] = ["#2457c5", "#c0392b", "#1e8449", "#b9770e", "#7d3c98", "#117a8b", "#6e2c00", "#555"];

/// (milliseconds since the epoch, value), in time order.
type Points = Vec<(u64, f64)>;

/// One line of a chart.
pub struct Series {
    pub label: String,
    pub points: Points,
}

/// A round number at or above `v`: 1, 2 or 5 times a power of ten.
fn nice(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|c| *c >= v).unwrap_or(10.0 * p)
}

/// `1.2k`, `3.4M`: short numbers for the axis.
fn short(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v if v.fract() == 0.0 => format!("{v:.0}"),
        v => format!("{v:.1}"),
    }
}

/// `−12 min`, `−40 s`: how long before now.
fn ago(ms: u64) -> String {
    if ms >= 120_000 {
        format!("−{} min", ms / 60_000)
    } else {
        format!("−{} s", ms / 1000)
    }
}

/// An SVG chart of `series` from `from_ms` to `now_ms` (at most the last hour), with dashed
/// marks at `marks` (leader changes). Labels are the node's own words; escaped all the same.
pub fn svg(id: &str, title: &str, (from, now_ms): (u64, u64), series: &[Series], marks: &[u64]) -> String {
    let span = now_ms.saturating_sub(from).max(1);
    let x = |t: u64| LEFT + (t.saturating_sub(from) as f64 / span as f64).min(1.0) * (RIGHT - LEFT);
    let top = nice(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max));
    let y = |v: f64| BOTTOM - (v / top).clamp(0.0, 1.0) * (BOTTOM - TOP);
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        "<svg id=\"{id}\" class=chart viewBox=\"0 0 {W} {H}\" role=img aria-label=\"{t}\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>{t}</title>\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"13\" font-weight=\"bold\" fill=\"#222\">{t}</text>",
        t = super::dashboard::esc(title)
    );
    for (v, dy) in [(top, 0.0), (top / 2.0, 0.0), (0.0, 0.0)] {
        let yy = y(v) + dy;
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#666\">{}</text>",
            LEFT - 4.0,
            yy + 4.0,
            short(v)
        );
    }
    for (t, label) in [(from, ago(span)), (from + span / 2, ago(span / 2)), (now_ms, "now".to_string())] {
        let anchor = if label == "now" { "end" } else { "middle" };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"{anchor}\" fill=\"#666\">{label}</text>",
            x(t).max(LEFT + 20.0),
            BOTTOM + 16.0
        );
    }
    for m in marks.iter().filter(|m| **m >= from) {
        let _ = write!(
            s,
            "<line class=mark x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{TOP}\" y2=\"{BOTTOM}\" stroke=\"#b00\" \
             stroke-dasharray=\"3 3\"/>",
            x(*m)
        );
    }
    let mut legend_x = LEFT;
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let label = super::dashboard::esc(&se.label);
        let shown: Vec<(u64, f64)> = se.points.iter().copied().filter(|p| p.0 >= from).collect();
        let points: Vec<String> = thin(&shown).into_iter().map(|(t, v)| format!("{:.1},{:.1}", x(t), y(v))).collect();
        let last = se.points.last().map(|p| p.1).unwrap_or(0.0);
        let _ = write!(
            s,
            "<polyline data-series=\"{label}\" data-last=\"{last:.2}\" data-points=\"{}\" fill=\"none\" \
             stroke=\"{color}\" stroke-width=\"1.6\" points=\"{}\"/>\
             <text x=\"{legend_x:.0}\" y=\"32\" font-size=\"12\" fill=\"{color}\">{label}: {}</text>",
            points.len(),
            points.join(" "),
            short(last)
        );
        legend_x += 30.0 + 7.0 * (se.label.len() as f64 + short(last).len() as f64);
    }
    s.push_str("</svg>");
    s
}

/// Points drawn per line at most: an hour of samples is averaged in groups (three to a point),
/// so a page with every chart weighs tens of KiB, not hundreds.
const MOST_POINTS: usize = 240;

/// `points`, averaged in consecutive groups down to at most [`MOST_POINTS`]; each group at its
/// last time.
fn thin(points: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let group = points.len().div_ceil(MOST_POINTS).max(1);
    points.chunks(group).map(|c| (c[c.len() - 1].0, c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64)).collect()
}

/// Per second between consecutive samples of a counter (a restart, where it went down, is
/// skipped).
fn rate(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> Points {
    samples
        .windows(2)
        .filter(|w| f(&w[1]) >= f(&w[0]) && w[1].at_ms > w[0].at_ms)
        .map(|w| (w[1].at_ms, (f(&w[1]) - f(&w[0])) as f64 * 1000.0 / (w[1].at_ms - w[0].at_ms) as f64))
        .collect()
}

/// The charts of the whole cluster from each member's history, and how many leader changes
/// they show.
pub fn cluster(now_ms: u64, histories: &[(u64, Option<Vec<Sample>>)]) -> (String, usize) {
    let known: Vec<(u64, &Vec<Sample>)> = histories.iter().filter_map(|(id, h)| h.as_ref().map(|h| (*id, h))).collect();
    let per_node = |f: &dyn Fn(&[Sample]) -> Points| -> Vec<Series> {
        known.iter().map(|(id, h)| Series { label: format!("node {id}"), points: f(h) }).collect()
    };
    let requests = per_node(&|h| rate(h, |s| s.requests));
    let bytes = per_node(&|h| rate(h, |s| s.bytes));
    let tunnels = per_node(&|h| h.iter().map(|s| (s.at_ms, s.tunnels as f64)).collect());
    let applied = per_node(&|h| h.iter().map(|s| (s.at_ms, s.applied as f64)).collect());
    // Open connections per port, the members' samples added up per sampling interval.
    let step = INTERVAL.as_millis() as u64;
    let mut ports: Vec<Series> = Vec::new();
    for (i, l) in crate::metrics::Listener::ALL.iter().enumerate() {
        let mut sum: BTreeMap<u64, f64> = BTreeMap::new();
        for (_, h) in &known {
            for s in h.iter() {
                *sum.entry(s.at_ms / step * step).or_default() += s.open.get(i).copied().unwrap_or(0) as f64;
            }
        }
        if sum.values().any(|v| *v > 0.0) {
            ports.push(Series { label: l.name().to_string(), points: sum.into_iter().collect() });
        }
    }
    // A leader change: a term first seen with a leader, at the first sample that saw it.
    let mut terms: BTreeMap<u64, u64> = BTreeMap::new();
    for (_, h) in &known {
        for s in h.iter().filter(|s| s.leader != 0) {
            let at = terms.entry(s.term).or_insert(s.at_ms);
            *at = (*at).min(s.at_ms);
        }
    }
    // The first term with a leader is where the history starts, not a change.
    let first = terms.keys().next().copied();
    let marks: Vec<u64> = terms.iter().filter(|(t, _)| Some(**t) > first).map(|(_, at)| *at).collect();
    let changes = marks.len();
    let names: BTreeSet<u64> = known.iter().map(|(id, _)| *id).collect();
    let missing: Vec<String> =
        histories.iter().filter(|(id, _)| !names.contains(id)).map(|(id, _)| format!("node {id}")).collect();
    // From the oldest sample (a young cluster's charts are not squeezed into the hour's end),
    // at most an hour back, at least a minute.
    let oldest = known.iter().filter_map(|(_, h)| h.first().map(|s| s.at_ms)).min().unwrap_or(now_ms);
    let from = oldest.max(now_ms.saturating_sub(HOUR_MS)).min(now_ms.saturating_sub(60_000));
    let span = (from, now_ms);
    let mut out = String::with_capacity(32 * 1024);
    out.push_str("<div class=charts>");
    out.push_str(&svg("requests", "HTTP answers per second", span, &requests, &marks));
    out.push_str(&svg("bytes", "Visitor bytes per second", span, &bytes, &marks));
    out.push_str(&svg("connections", "Connections open, per port (cluster)", span, &ports, &marks));
    out.push_str(&svg("tunnels", "Tunnels held", span, &tunnels, &marks));
    out.push_str(&svg("applied", "Raft index applied (dashed: a new leader)", span, &applied, &marks));
    out.push_str("</div>");
    if !missing.is_empty() {
        let _ = write!(out, "<p class=down>No history from {} (not answering).</p>", missing.join(", "));
    }
    (out, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, requests: u64, term: u64, leader: u64) -> Sample {
        Sample { at_ms: at_s * 1000, requests, term, leader, open: [0, 0, 1, 3, 0, 0, 0], ..Sample::default() }
    }

    #[test]
    fn rates_leader_changes_and_lines_come_from_the_samples() {
        let now = 10_000_000;
        let a: Vec<Sample> = (0..5).map(|i| sample(now / 1000 - 20 + i * 5, i * 500, 3 + i / 3, 1)).collect();
        let b = vec![sample(now / 1000 - 10, 7, 4, 2)];
        let (html, changes) = cluster(now, &[(1, Some(a)), (2, Some(b)), (3, None)]);
        assert_eq!(changes, 1, "term 4 after term 3 (the first term is no change)");
        assert!(html.contains("data-series=\"node 1\" data-last=\"100.00\""), "500 answers in 5 s: {html}");
        assert!(html.contains("<polyline data-series=\"ssh\""), "ports with connections are drawn");
        assert!(!html.contains("data-series=\"api\""), "ports without any are not");
        assert!(html.contains("No history from node 3"), "{html}");
        assert_eq!(html.matches("class=mark").count(), 5, "one mark on each chart");
    }

    #[test]
    fn an_hour_of_samples_is_drawn_with_at_most_240_points() {
        let hour: Vec<(u64, f64)> = (0..720).map(|i| (i * 5000, (i % 3) as f64)).collect();
        let thinned = thin(&hour);
        assert_eq!(thinned.len(), 240);
        assert_eq!(thinned[0], (10_000, 1.0), "the mean of 0, 1, 2 at the group's last time");
        assert_eq!(thin(&hour[..100]).len(), 100, "a young history is drawn whole");
    }

    #[test]
    fn a_restart_is_not_a_negative_rate() {
        let s = [sample(0, 100, 1, 1), sample(5, 4, 1, 1), sample(10, 54, 1, 1)];
        assert_eq!(rate(&s, |s| s.requests), vec![(10_000, 10.0)]);
        assert_eq!((nice(0.0), nice(7.0), nice(130.0), nice(2000.0)), (1.0, 10.0, 200.0, 2000.0));
    }
}
