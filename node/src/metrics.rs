//! What this node did and sees, for `GET /metrics` (Prometheus text format 0.0.4) and the
//! dashboard. Counters of events live in one process-wide [`Metrics`]: the accept loops, the
//! HTTP paths and the SSH server count into it without a handle threaded through each of them,
//! and each counter on a hot path is a plain atomic (labelled series are resolved once, here,
//! not looked up per request). Gauges of the cluster's state (Raft, the registry) are read at
//! scrape time, so they cannot drift from what they describe.

use std::sync::LazyLock;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// A listening port of the node, as its connections are counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Api,
    Internal,
    Ssh,
    Http,
    Https,
    TcpSocket,
    TlsSocket,
}

impl Listener {
    pub const ALL: [Listener; 7] = [
        Listener::Api,
        Listener::Internal,
        Listener::Ssh,
        Listener::Http,
        Listener::Https,
        Listener::TcpSocket,
        Listener::TlsSocket,
    ];

    /// The `listener` label, and the name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Api => "api",
            Listener::Internal => "internal",
            Listener::Ssh => "ssh",
            Listener::Http => "http",
            Listener::Https => "https",
            Listener::TcpSocket => "tcp",
            Listener::TlsSocket => "tls",
        }
    }
}

/// Why a caller was refused before any work was done for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Past a token bucket (429).
    RateLimit,
    /// The password-hashing queue was full (503).
    HashingQueue,
    /// A request body that did not arrive within the API's deadline (408).
    SlowBody,
    /// A connection past its source address's share of a port.
    PerSource,
    /// An SSH connection that waited past the node's count of connections still logging in
    /// and got no turn.
    SshStartups,
    /// An internal-port connection without the cluster credential.
    Unauthenticated,
}

impl Refusal {
    fn name(self) -> &'static str {
        match self {
            Refusal::RateLimit => "rate_limit",
            Refusal::HashingQueue => "hashing_queue",
            Refusal::SlowBody => "slow_body",
            Refusal::PerSource => "per_source",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::SshStartups => "ssh_startups",
        }
    }
}

const SOCKET_TYPES: [&str; 4] = ["http", "https", "tcp", "tls"];
const VISITOR_REFUSALS: [&str; 5] = ["address", "rate_limit", "basic_auth", "cloud_auth", "no_provider"];

/// Counters per value of a label, resolved once.
struct ByLabel<const N: usize> {
    values: [&'static str; N],
    counters: [Counter; N],
}

impl<const N: usize> ByLabel<N> {
    fn register(
        registry: &mut Registry,
        name: &str,
        help: &str,
        label: &'static str,
        values: [&'static str; N],
    ) -> Self {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        let counters = values.map(|v| family.get_or_create(&[(label, v)]).clone());
        ByLabel { values, counters }
    }

    fn get(&self, value: &str) -> &Counter {
        let i = self.values.iter().position(|v| *v == value).expect("a registered label value");
        &self.counters[i]
    }
}

/// Counters of this process, and the gauges set at scrape time.
pub struct Metrics {
    registry: Registry,
    accepted: [Counter; 7],
    open: [Gauge; 7],
    /// Per scheme (http, https) and status class (1xx … 5xx).
    responses: [[Counter; 5]; 2],
    ssh_logins: ByLabel<2>,
    forwards: ByLabel<2>,
    upstreams: ByLabel<4>,
    unavailable: ByLabel<3>,
    relays_served: ByLabel<4>,
    tunnels_closed: ByLabel<4>,
    refused: ByLabel<6>,
    /// Per socket type and reason: see [`Metrics::visitor_refused`].
    visitors_refused: [[Counter; 5]; 4],
    orphans_released: Counter,
    /// Bytes to and from visitors through this node's public ports.
    public_bytes: Counter,
    dns: ByLabel<7>,
    acme: ByLabel<3>,
    state: StateGauges,
}

/// Read from Raft and the registry when scraped.
pub struct StateGauges {
    pub term: Gauge,
    pub leader: Gauge,
    pub is_leader: Gauge,
    pub voters: Gauge,
    pub learners: Gauge,
    pub last_log_index: Gauge,
    pub committed_index: Gauge,
    pub applied_index: Gauge,
    pub snapshot_index: Gauge,
    pub lag: Family<[(&'static str, String); 1], Gauge>,
    pub accounts: Gauge,
    pub sockets: Gauge,
    pub tunnels: Gauge,
    pub tunnels_connected: Gauge,
    pub tunnels_here: Gauge,
    pub snapshots_installed: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mysocket");
        let r = &mut registry;
        let accepted_f = Family::<Labels, Counter>::default();
        r.register("connections_accepted", "Connections accepted, per listening port", accepted_f.clone());
        let open_f = Family::<Labels, Gauge>::default();
        r.register("connections_open", "Connections open now, per listening port", open_f.clone());
        let accepted = Listener::ALL.map(|l| accepted_f.get_or_create(&[("listener", l.name())]).clone());
        let open = Listener::ALL.map(|l| open_f.get_or_create(&[("listener", l.name())]).clone());
        let responses_f = Family::<Labels2, Counter>::default();
        r.register(
            "http_responses",
            "Answers to public HTTP requests (the service's, or the edge's own pages), per scheme and status class",
            responses_f.clone(),
        );
        let responses = ["http", "https"].map(|s| {
            ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| responses_f.get_or_create(&[("scheme", s), ("code", c)]).clone())
        });
        let ssh_logins = ByLabel::register(
            r,
            "ssh_logins",
            "SSH logins: accepted, or connections that asked to log in and ended without",
            "result",
            ["accepted", "refused"],
        );
        let forwards = ByLabel::register(
            r,
            "ssh_forwards",
            "tcpip-forward requests: tunnels claimed, or requests refused",
            "result",
            ["claimed", "refused"],
        );
        let upstreams = ByLabel::register(
            r,
            "upstreams",
            "Streams to a service opened for public connections: through a tunnel held here (local) or relayed to its holder, and attempts that failed",
            "result",
            ["local", "relayed", "local_failed", "relay_failed"],
        );
        let unavailable = ByLabel::register(
            r,
            "upstreams_unavailable",
            "Public connections no tunnel could take: none connected, their services down, or none accepted",
            "reason",
            ["no_tunnel", "service_down", "refused"],
        );
        let relays_served = ByLabel::register(
            r,
            "relays_served",
            "Relays from other nodes to tunnels held here: served, or refused (stale epoch: fenced)",
            "result",
            ["served", "stale_epoch", "not_held", "refused"],
        );
        let tunnels_closed = ByLabel::register(
            r,
            "tunnels_closed",
            "Tunnel sessions this node closed: superseded by a newer connection, released by the cluster (this node was silent), deleted, or cut off from the majority",
            "reason",
            ["superseded", "released", "deleted", "cut_off"],
        );
        let refused = ByLabel::register(
            r,
            "refused",
            "Callers refused before any work was done for them: past a rate limit, the password-hashing queue full, a request body too slow, a connection past its address's share of a port, an SSH connection past the count of those still logging in, an internal-port connection without the cluster credential",
            "reason",
            ["rate_limit", "hashing_queue", "slow_body", "per_source", "ssh_startups", "unauthenticated"],
        );
        let dns = ByLabel::register(
            r,
            "dns_queries",
            "DNS queries to this node's authoritative server, per answer: noerror, nxdomain (no such name), refused (outside the cluster's domain), formerr, notimp, servfail (the node out of touch with the cluster), dropped (past the per-source rate limit, unanswered)",
            "answer",
            ["noerror", "nxdomain", "refused", "formerr", "notimp", "servfail", "dropped"],
        );
        let acme = ByLabel::register(
            r,
            "acme_orders",
            "ACME orders this node made: issued, failed, and challenges answered over HTTP-01 on the public HTTP port (served)",
            "result",
            ["issued", "failed", "served"],
        );
        let visitors_f = Family::<Labels2, Counter>::default();
        r.register(
            "visitors_refused",
            "Public requests and connections a socket's access rules refused, per socket type and reason: the visitor's address (allow and deny lists), the rate limit per visitor, Basic auth, cloud authentication (no session, or an email not allowed), cloud authentication on a node without an identity provider",
            visitors_f.clone(),
        );
        let visitors_refused = SOCKET_TYPES
            .map(|t| VISITOR_REFUSALS.map(|why| visitors_f.get_or_create(&[("type", t), ("reason", why)]).clone()));
        let orphans_released = Counter::default();
        r.register(
            "orphan_claims_released",
            "Claims of this node's previous process released at start",
            orphans_released.clone(),
        );
        let public_bytes = Counter::default();
        r.register(
            "public_bytes",
            "Bytes to and from visitors of the sockets through this node's public ports (HTTP answers' bodies, tcp and tls connections both ways), counted as each request or connection ends",
            public_bytes.clone(),
        );
        let lag = Family::<[(&'static str, String); 1], Gauge>::default();
        let state = StateGauges {
            term: gauge(r, "raft_term", "Current Raft term"),
            leader: gauge(r, "raft_leader", "Id of the leader this node knows (0: none)"),
            is_leader: gauge(r, "raft_is_leader", "1 when this node is the leader"),
            voters: gauge(r, "raft_voters", "Voters in the membership"),
            learners: gauge(r, "raft_learners", "Learners in the membership"),
            last_log_index: gauge(r, "raft_last_log_index", "Index of the last entry in this node's log (-1: none)"),
            committed_index: gauge(
                r,
                "raft_committed_index",
                "Index of the last entry this node knows committed (-1: none)",
            ),
            applied_index: gauge(
                r,
                "raft_applied_index",
                "Index of the last entry applied to this node's registry (-1: none)",
            ),
            snapshot_index: gauge(r, "raft_snapshot_index", "Index of this node's last snapshot (-1: none)"),
            lag: {
                r.register(
                    "raft_replication_lag",
                    "On the leader: entries each follower is behind the leader's log",
                    lag.clone(),
                );
                lag
            },
            accounts: gauge(r, "accounts", "Accounts in the registry"),
            sockets: gauge(r, "sockets", "Sockets in the registry"),
            tunnels: gauge(r, "tunnels", "Tunnels in the registry"),
            tunnels_connected: gauge(r, "tunnels_connected", "Tunnels held by a session on some node"),
            tunnels_here: gauge(r, "tunnels_held_here", "Tunnels held by a session on this node"),
            snapshots_installed: gauge(r, "raft_snapshots_installed", "Snapshots this node installed from a leader"),
        };
        Metrics {
            registry,
            accepted,
            open,
            responses,
            ssh_logins,
            forwards,
            upstreams,
            unavailable,
            relays_served,
            tunnels_closed,
            refused,
            visitors_refused,
            orphans_released,
            public_bytes,
            dns,
            acme,
            state,
        }
    }

    /// A caller refused before any work was done for it.
    pub fn refused(&self, why: Refusal) {
        self.refused.get(why.name()).inc();
    }

    /// A public request or connection refused by its socket's access rules: `kind` is the
    /// socket's type, `why` a [`crate::edge::policy::Refusal`]'s reason.
    pub fn visitor_refused(&self, kind: &str, why: &str) {
        let t = SOCKET_TYPES.iter().position(|k| *k == kind).unwrap_or(0);
        let r = VISITOR_REFUSALS.iter().position(|w| *w == why).expect("a registered reason");
        self.visitors_refused[t][r].inc();
    }

    /// A connection accepted on `l`; it counts as open until the guard is dropped.
    pub fn accepted(&'static self, l: Listener) -> OpenGuard {
        let i = l as usize;
        self.accepted[i].inc();
        self.open[i].inc();
        OpenGuard(&self.open[i])
    }

    /// An answer to a public HTTP request.
    pub fn response(&self, scheme: &str, status: u16) {
        let s = usize::from(scheme == "https");
        let c = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[s][c].inc();
    }

    pub fn ssh_login(&self, accepted: bool) {
        self.ssh_logins.get(if accepted { "accepted" } else { "refused" }).inc();
    }

    pub fn forward(&self, claimed: bool) {
        self.forwards.get(if claimed { "claimed" } else { "refused" }).inc();
    }

    /// `result`: local, relayed, local_failed or relay_failed.
    pub fn upstream(&self, result: &'static str) {
        self.upstreams.get(result).inc();
    }

    /// `reason`: no_tunnel, service_down or refused.
    pub fn unavailable(&self, reason: &'static str) {
        self.unavailable.get(reason).inc();
    }

    /// `result`: served, stale_epoch, not_held or refused.
    pub fn relay_served(&self, result: &'static str) {
        self.relays_served.get(result).inc();
    }

    /// `reason`: superseded, released, deleted or cut_off.
    pub fn tunnel_closed(&self, reason: &'static str) {
        self.tunnels_closed.get(reason).inc();
    }

    /// `answer`: see the `dns_queries` family.
    pub fn dns_answer(&self, answer: &'static str) {
        self.dns.get(answer).inc();
    }

    /// `result`: issued, failed or served.
    pub fn acme(&self, result: &'static str) {
        self.acme.get(result).inc();
    }

    pub fn orphan_released(&self) {
        self.orphans_released.inc();
    }

    pub fn public_bytes(&self, n: u64) {
        self.public_bytes.inc_by(n);
    }

    /// Counter values the dashboard shows: connections open per listener, HTTP answers per
    /// status class (both schemes).
    pub fn summary(&self) -> Summary {
        Summary {
            ports: Listener::ALL.map(|l| (l.name(), self.open[l as usize].get(), self.accepted[l as usize].get())),
            responses: std::array::from_fn(|c| self.responses[0][c].get() + self.responses[1][c].get()),
            relays_served: self.relays_served.get("served").get(),
            relayed_out: self.upstreams.get("relayed").get(),
            public_bytes: self.public_bytes.get(),
        }
    }
}

/// A few counters, for the dashboard.
pub struct Summary {
    /// Per listening port: its name, connections open, connections accepted.
    pub ports: [(&'static str, i64, u64); 7],
    /// 1xx … 5xx.
    pub responses: [u64; 5],
    pub relays_served: u64,
    pub relayed_out: u64,
    pub public_bytes: u64,
}

/// Keeps a connection counted as open.
pub struct OpenGuard(&'static Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Gauges read from Raft and the registry when scraped (by [`crate::api::metrics`]).
impl Metrics {
    pub fn state(&self) -> &StateGauges {
        &self.state
    }

    /// Everything in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
