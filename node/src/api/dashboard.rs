//! `GET /`: a page for the people who run the edge — the cluster as this node sees it (leader,
//! term, each node's addresses, role, applied index and tunnels), the registry's totals, and
//! this node's traffic. Rendered here, without scripts, and refreshed by the browser every few
//! seconds, so it works from any browser that can reach the API port and needs nothing else.
//! It shows counts and the nodes' addresses, never an account, a socket name or a secret.
//!
//! The detail is for operators only: a request with the operator credential (a browser sends
//! it as the password of Basic auth, asked for by `GET /operator`) gets it; anyone else gets
//! the cluster's health in aggregate — whether it has a leader and how many nodes it has.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;

use crate::api::Caller;
use crate::control::NodeRef;

/// Seconds between the browser's reloads.
const REFRESH_SECS: u32 = 5;

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:.3em .8em;text-align:left}\
th{background:#f4f4f4}td.n{text-align:right}\
.down{color:#b00}.lead{font-weight:bold}small{color:#666}\
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,30em),1fr));gap:.5em 1.5em}\
svg.chart{width:100%;height:auto;background:#fff}.scroll{overflow-x:auto}\
@media (max-width:40em){body{margin:.8em}th,td{padding:.25em .4em}}";

/// The dashboard draws without scripts: its inline style and SVG only.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn html(h: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        h,
    )
        .into_response()
}

#[utoipa::path(get, path = "/", tag = "cluster", responses((status = 200, description = "The dashboard: for an operator the cluster, the registry's totals and this node's traffic; for anyone else the cluster's health in aggregate", content_type = "text/html")))]
pub(crate) async fn page(State(node): State<NodeRef>, headers: HeaderMap) -> Response {
    match crate::api::caller(&node, &headers).await {
        Ok(Caller::Operator) => detail(&node).await,
        _ => health(&node),
    }
}

/// `GET /operator`: the detailed page, after the browser asks for the operator credential.
#[utoipa::path(get, path = "/operator", tag = "cluster", responses((status = 200, description = "The operators' dashboard", content_type = "text/html"), (status = 401, description = "Basic auth: any user name, the operator token as the password")))]
pub(crate) async fn operator_page(State(node): State<NodeRef>, headers: HeaderMap) -> Response {
    match crate::api::caller(&node, &headers).await {
        Ok(Caller::Operator) => detail(&node).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"mysocket operator\", charset=\"UTF-8\"")],
            "the dashboard's detail needs the operator credential: any user name, the operator token as the password\n",
        )
            .into_response(),
    }
}

fn head(h: &mut String, id: u64) {
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=refresh content={REFRESH_SECS}>\
         <title>mysocket — node {id}</title><style>{STYLE}</style></head><body>\
         <h1>mysocket edge <small>node {id}</small></h1>",
    );
}

/// What anyone may see: whether the cluster has a leader, and how many nodes it has. Local
/// reads only, so repeating it costs nothing but the page.
fn health(node: &NodeRef) -> Response {
    let m = node.metrics();
    let members = m.membership_config.membership().nodes().count();
    let mut h = String::with_capacity(2048);
    head(&mut h, node.id);
    let status = match m.current_leader {
        Some(_) => "<p id=health>The cluster has a leader and accepts changes.</p>",
        None => "<p id=health class=down>The cluster has no leader right now: changes wait for an election.</p>",
    };
    let _ = write!(
        h,
        "{status}<p id=members>{members} nodes.</p>\
         <p><a href=/operator>Operators: the cluster in detail</a> · <a href=/openapi.json>API (OpenAPI)</a> · \
         <a href=/cluster/ca.pem>cluster CA</a> · <a href=/console>Console: your sockets</a></p></body></html>"
    );
    html(h)
}

async fn detail(node: &NodeRef) -> Response {
    let view = crate::api::cluster_view(node, Caller::Operator).await;
    let (accounts, sockets, tunnels, connected) = node.read(|r| r.counts());
    let traffic = crate::metrics::get().summary();
    let mut h = String::with_capacity(8 * 1024);
    head(&mut h, node.id);
    match view.leader {
        Some(l) => {
            let _ = write!(h, "<p id=leader>Leader: node {l}, term {}.</p>", view.term);
        }
        None => {
            let _ =
                write!(h, "<p id=leader class=down>No leader (term {}): writes wait for an election.</p>", view.term);
        }
    }
    let (charts, changes) =
        crate::api::charts::cluster(crate::control::now_ms(), &crate::control::history::gather(node).await);
    let _ =
        write!(h, "<h2>The last hour</h2><p id=leader-changes>Leader changes in the last hour: {changes}.</p>{charts}");
    h.push_str(
        "<h2>Nodes</h2><div class=scroll><table id=nodes><tr><th>node</th><th>API</th><th>SSH</th><th>role</th>\
         <th>applied index</th><th>tunnels held</th></tr>",
    );
    for n in &view.nodes {
        let role = match (view.leader == Some(n.id), n.voter == Some(true)) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        let applied = match n.last_applied {
            Some(i) => format!("<td class=n>{i}</td>"),
            None => "<td class=down>not answering</td>".to_string(),
        };
        let _ = write!(
            h,
            "<tr{cls}><td>{id}{me}</td><td>{api}</td><td>{ssh}</td><td>{role}</td>{applied}<td class=n>{t}</td></tr>",
            cls = if role == "leader" { " class=lead" } else { "" },
            id = n.id,
            me = if n.id == node.id { " (this node)" } else { "" },
            api = esc(&n.api_addr),
            ssh = esc(&n.ssh_addr),
            t = n.tunnels.unwrap_or(0),
        );
    }
    let _ = write!(
        h,
        "</table></div><h2>Registry</h2><table id=registry>\
         <tr><th>accounts</th><td class=n>{accounts}</td></tr>\
         <tr><th>sockets</th><td class=n>{sockets}</td></tr>\
         <tr><th>tunnels</th><td class=n>{tunnels}</td></tr>\
         <tr><th>tunnels connected</th><td class=n>{connected}</td></tr></table>"
    );
    certificates(node, &mut h);
    h.push_str(
        "<h2>This node's traffic</h2><table id=traffic><tr><th>port</th><th>connections open</th>\
         <th>accepted since start</th></tr>",
    );
    for (name, open, accepted) in traffic.ports {
        let _ = write!(h, "<tr><td>{name}</td><td class=n>{open}</td><td class=n>{accepted}</td></tr>");
    }
    h.push_str("</table><table id=responses><tr><th>HTTP answers</th>");
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
        let _ = write!(h, "<th>{class}</th>");
    }
    h.push_str("</tr><tr><td>since start</td>");
    for n in traffic.responses {
        let _ = write!(h, "<td class=n>{n}</td>");
    }
    let _ = write!(
        h,
        "</tr></table><p id=relays>Connections relayed to the node holding their tunnel: {} sent, {} received.</p>\
         <p><a href=/metrics>metrics</a> · <a href=/cluster>cluster (JSON)</a> · \
         <a href=/openapi.json>API (OpenAPI)</a> · <a href=/cluster/ca.pem>cluster CA</a></p></body></html>",
        traffic.relayed_out, traffic.relays_served,
    );
    html(h)
}

/// A span of milliseconds, roughly: `3 d 4 h`, `2 h 13 min`, `41 s`.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// The certificates obtained over ACME: the cluster's wildcard by name, custom domains' in
/// aggregate (their names are the accounts'), and the last failures with what to fix.
fn certificates(node: &NodeRef, h: &mut String) {
    let Some(acme) = &node.config.acme else { return };
    let now = crate::control::now_ms();
    let (domain, state) = node.read(|r| (r.config().map(|c| c.domain.clone()).unwrap_or_default(), r.acme().clone()));
    let wildcard = mysocket_raft_store::AcmeState::wildcard(&domain);
    let _ = write!(h, "<h2>Certificates (ACME: {})</h2><table id=certificates>", esc(&acme.directory));
    h.push_str("<tr><th>name</th><th>expires in</th><th>last failure</th></tr>");
    let failure = |name: &str| match state.failures.get(name) {
        Some((at, why)) => format!("<td class=down>{} ago: {}</td>", span(now.saturating_sub(*at)), esc(why)),
        None => "<td>-</td>".to_string(),
    };
    let expires = match state.certificates.get(&wildcard) {
        Some(c) if c.not_after_ms > now => format!("<td class=n>{}</td>", span(c.not_after_ms - now)),
        Some(_) => "<td class=down>expired</td>".to_string(),
        None => "<td class=down>none yet (the cluster CA's is served)</td>".to_string(),
    };
    let _ = write!(h, "<tr><td>{}</td>{expires}{}</tr>", esc(&wildcard), failure(&wildcard));
    let custom: Vec<&String> = state.certificates.keys().filter(|k| **k != wildcard).collect();
    let failing = state.failures.keys().filter(|k| **k != wildcard).count();
    let _ = write!(
        h,
        "<tr><td>custom domains</td><td class=n>{} with a certificate</td><td{}>{failing} failing</td></tr></table>",
        custom.len(),
        if failing > 0 { " class=down" } else { "" }
    );
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(super::span(41_000), "41 s");
        assert_eq!(super::span(7_980_000), "2 h 13 min");
        assert_eq!(super::span(277_200_000), "3 d 5 h");
    }

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(esc(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(esc("127.0.0.1:7070"), "127.0.0.1:7070");
    }
}
