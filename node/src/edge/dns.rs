//! The cluster's authoritative DNS: every node with `--dns-listen` answers for the cluster's
//! domain from its replica of the registry. The apex and every socket's name resolve to the
//! public addresses of the nodes the registry holds alive, so a node that dies or is cut off
//! leaves the answers as soon as the leader marks it dead (its liveness timeout, 3 s) plus the
//! records' TTL ([`TTL`], 5 s). Names of no socket are NXDOMAIN, names outside the domain are
//! REFUSED (this is no resolver), malformed messages get FORMERR from hickory's server, and each
//! source address (an IPv6 /64) may ask [`crate::config::Dns::rate_limit`] queries a second:
//! past that its queries are dropped unanswered, so the server cannot be used to flood a
//! forged source. A node that has lost touch with the cluster answers SERVFAIL, so resolvers
//! ask another of the zone's name servers.
//!
//! The zone: SOA (serial: the registry's applied index), NS `ns<id>.<domain>` for each live
//! node with a public address, A/AAAA for those names, the apex and every socket name, and TXT
//! for `_acme-challenge.<name>` while the cluster answers an ACME DNS-01 challenge for it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use governor::DefaultKeyedRateLimiter;
use governor::Quota;
use governor::RateLimiter;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::Header;
use hickory_server::proto::op::HeaderCounts;
use hickory_server::proto::op::MessageType;
use hickory_server::proto::op::Metadata;
use hickory_server::proto::op::OpCode;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::rdata::AAAA;
use hickory_server::proto::rr::rdata::NS;
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::rdata::TXT;
use hickory_server::proto::rr::Name;
use hickory_server::proto::rr::RData;
use hickory_server::proto::rr::Record;
use hickory_server::proto::rr::RecordType;
use hickory_server::server::Request;
use hickory_server::server::RequestHandler;
use hickory_server::server::ResponseHandler;
use hickory_server::server::ResponseInfo;
use hickory_server::zone_handler::MessageResponseBuilder;
use mysocket_raft_store::Registry;
use tokio::net::TcpListener;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::control::NodeRef;

/// TTL of the address and TXT records, and of negative answers: how long a resolver may keep
/// sending visitors to a node after it left the answers.
pub const TTL: u32 = 5;
/// TTL of the SOA and NS records.
const ZONE_TTL: u32 = 60;
/// How long a TCP connection may stay without a query.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// How long this node answers after a leader last confirmed its contact with the cluster.
const CONTACT: Duration = crate::tunnels::CUT_OFF;

/// What the zone says about one name and type.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// Not in the cluster's domain.
    Refused,
    /// No such name in the zone (with the SOA, for negative caching).
    NxDomain,
    /// The name exists; its records of the type asked (none: NODATA).
    Records(Vec<Record>),
}

/// The zone as the registry holds it now.
pub struct Zone<'a> {
    reg: &'a Registry,
    apex: Name,
    domain: String,
    /// Live nodes with a public address, by id.
    nodes: Vec<(u64, Vec<IpAddr>)>,
}

impl<'a> Zone<'a> {
    /// `None` until the cluster has bootstrapped (no domain yet).
    pub fn of(reg: &'a Registry) -> Option<Zone<'a>> {
        let domain = reg.config()?.domain.to_ascii_lowercase();
        let apex = Name::from_ascii(format!("{domain}.")).ok()?;
        let nodes = reg
            .nodes()
            .filter(|n| n.alive || crate::planted::on(crate::planted::Bug::DeadNodesAnswered))
            .filter(|n| !n.public_ips.is_empty() && !reg.is_retired(n.node_id))
            .map(|n| (n.node_id, n.public_ips.clone()))
            .collect();
        Some(Zone { reg, apex, domain, nodes })
    }

    fn name(&self, label: &str) -> Name {
        Name::from_ascii(format!("{label}.{}.", self.domain)).unwrap_or_else(|_| self.apex.clone())
    }

    fn soa(&self) -> Record {
        let mname =
            self.nodes.first().map(|(id, _)| self.name(&format!("ns{id}"))).unwrap_or_else(|| self.apex.clone());
        let rname = self.name("hostmaster");
        let serial = self.reg.applied_index() as u32;
        Record::from_rdata(
            self.apex.clone(),
            ZONE_TTL,
            RData::SOA(SOA::new(mname, rname, serial, 3600, 600, 86400, TTL)),
        )
    }

    fn addresses(&self, name: &Name, qtype: RecordType, ips: impl Iterator<Item = IpAddr>) -> Vec<Record> {
        ips.filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(v4))),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(name.clone(), TTL, rdata))
        .collect()
    }

    fn every_node(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.nodes.iter().flat_map(|(_, ips)| ips.iter().copied())
    }

    /// The answer for `name` (any case, with or without the final dot) and `qtype`.
    pub fn lookup(&self, name: &str, qtype: RecordType) -> Lookup {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let Ok(qname) = Name::from_ascii(format!("{name}.")) else { return Lookup::Refused };
        let label = if name == self.domain {
            ""
        } else {
            match name.strip_suffix(&self.domain).and_then(|l| l.strip_suffix('.')) {
                Some(l) if !l.is_empty() => l,
                _ => return Lookup::Refused,
            }
        };
        if label.is_empty() {
            let mut out = Vec::new();
            if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                out.push(self.soa());
            }
            if matches!(qtype, RecordType::NS | RecordType::ANY) {
                for (id, _) in &self.nodes {
                    let ns = RData::NS(NS(self.name(&format!("ns{id}"))));
                    out.push(Record::from_rdata(self.apex.clone(), ZONE_TTL, ns));
                }
            }
            out.extend(self.addresses(&qname, qtype, self.every_node()));
            return Lookup::Records(out);
        }
        if let Some(id) = label.strip_prefix("ns").and_then(|n| n.parse::<u64>().ok()) {
            return match self.nodes.iter().find(|(n, _)| *n == id) {
                Some((_, ips)) => Lookup::Records(self.addresses(&qname, qtype, ips.iter().copied())),
                None => Lookup::NxDomain,
            };
        }
        if let Some(owner) = label.strip_prefix("_acme-challenge") {
            let owner = owner.strip_prefix('.').unwrap_or(owner);
            let values = self.reg.acme_challenges(if owner.is_empty() { &self.domain } else { owner }, &self.domain);
            if values.is_empty() {
                return Lookup::NxDomain;
            }
            let txt = |v: &String| Record::from_rdata(qname.clone(), TTL, RData::TXT(TXT::new(vec![v.clone()])));
            let want = matches!(qtype, RecordType::TXT | RecordType::ANY);
            return Lookup::Records(if want { values.iter().map(txt).collect() } else { Vec::new() });
        }
        if self.reg.socket_by_dnsname(&name).is_some() {
            return Lookup::Records(self.addresses(&qname, qtype, self.every_node()));
        }
        Lookup::NxDomain
    }
}

/// The request handler hickory's server calls for every well-formed message.
pub struct Dns {
    node: NodeRef,
    per_source: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Milliseconds since the process started at which a leader last confirmed this node's
    /// contact with the cluster.
    contact_ms: Arc<AtomicU64>,
    started: std::time::Instant,
}

impl Dns {
    fn in_contact(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        now.saturating_sub(self.contact_ms.load(Ordering::Relaxed)) <= CONTACT.as_millis() as u64
    }

    fn answer(&self, request: &Request) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        if request.metadata.message_type != MessageType::Query || request.metadata.op_code != OpCode::Query {
            return (ResponseCode::NotImp, Vec::new(), Vec::new());
        }
        let Ok(info) = request.request_info() else { return (ResponseCode::FormErr, Vec::new(), Vec::new()) };
        let (qname, qtype) = (info.query.name().to_string(), info.query.query_type());
        if !self.in_contact() {
            return (ResponseCode::ServFail, Vec::new(), Vec::new());
        }
        self.node.read(|reg| {
            let Some(zone) = Zone::of(reg) else { return (ResponseCode::ServFail, Vec::new(), Vec::new()) };
            match zone.lookup(&qname, qtype) {
                Lookup::Refused => (ResponseCode::Refused, Vec::new(), Vec::new()),
                Lookup::NxDomain => (ResponseCode::NXDomain, Vec::new(), vec![zone.soa()]),
                Lookup::Records(r) if r.is_empty() => (ResponseCode::NoError, r, vec![zone.soa()]),
                Lookup::Records(mut r) => {
                    // Round robin: each query gets the nodes in another order.
                    let n = r.len();
                    r.rotate_left(usize::from(request.metadata.id) % n);
                    (ResponseCode::NoError, r, Vec::new())
                }
            }
        })
    }
}

fn rcode_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "noerror",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::Refused => "refused",
        ResponseCode::FormErr => "formerr",
        ResponseCode::NotImp => "notimp",
        _ => "servfail",
    }
}

#[async_trait::async_trait]
impl RequestHandler for Dns {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        if self.per_source.check_key(&crate::edge::policy::visitor_key(request.src().ip())).is_err() {
            crate::metrics::get().dns_answer("dropped");
            metadata.response_code = ResponseCode::Refused;
            return ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() });
        }
        let (code, answers, soa) = self.answer(request);
        crate::metrics::get().dns_answer(rcode_name(code));
        metadata.response_code = code;
        metadata.authoritative = matches!(code, ResponseCode::NoError | ResponseCode::NXDomain);
        let message = MessageResponseBuilder::from_message_request(request).build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            soa.iter(),
            std::iter::empty(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "could not send a DNS answer");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
            }
        }
    }
}

/// Binds the DNS server's UDP socket and TCP listener on `addr`.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((UdpSocket::bind(addr).await?, TcpListener::bind(addr).await?))
}

/// Answers DNS on `udp` and `tcp` until `stop`; a task beside it asks the leader every second
/// whether this node is still in touch with the cluster.
pub async fn serve(node: NodeRef, udp: UdpSocket, tcp: TcpListener, stop: CancellationToken) {
    let Some(cfg) = node.config.dns.clone() else { return };
    let rate = NonZeroU32::new(cfg.rate_limit).unwrap_or(NonZeroU32::MIN);
    let started = std::time::Instant::now();
    let contact_ms = Arc::new(AtomicU64::new(0));
    let per_source = Arc::new(RateLimiter::keyed(Quota::per_second(rate).allow_burst(rate)));
    let (n, c, l, s) = (node.clone(), contact_ms.clone(), per_source.clone(), stop.clone());
    tokio::spawn(async move {
        for pass in 0u64.. {
            if n.leader_confirms(Duration::from_secs(2)).await {
                c.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            // Forget the sources whose bucket is full again.
            if pass % 10 == 0 {
                l.retain_recent();
                l.shrink_to_fit();
            }
            tokio::select! {
                _ = s.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    let handler = Dns { node, per_source, contact_ms, started };
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 16 * 1024);
    tracing::info!(addr = %cfg.listen, "authoritative DNS listening (UDP and TCP)");
    stop.cancelled().await;
    let _ = server.shutdown_gracefully().await;
}

#[cfg(test)]
mod tests {
    use mysocket_raft_store::*;
    use uuid::Uuid;

    use super::*;

    fn apply(reg: &mut Registry, cmd: Command) {
        reg.apply(&mysocket_raft_store::Request { request_id: None, at_ms: 1, cmd }, &mut Default::default());
    }

    fn node(id: u64, ips: &[&str]) -> Command {
        Command::RegisterNode(NodeRecord {
            node_id: id,
            raft_addr: String::new(),
            api_addr: String::new(),
            ssh_addr: String::new(),
            http_addr: String::new(),
            https_addr: String::new(),
            public_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            alive: true,
            changed_at_ms: 0,
        })
    }

    /// A zone of three nodes (node 2 with IPv4 and IPv6, node 3 dead) and one socket.
    fn registry() -> Registry {
        let mut reg = Registry::default();
        let config = ClusterConfig {
            domain: "edge.test".into(),
            tcp_port_min: 20000,
            tcp_port_max: 20010,
            ssh_host_key: String::new(),
            tls_ca_cert: String::new(),
            tls_ca_key: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            token_key: String::new(),
            operator_token_hash: String::new(),
            created_at_ms: 0,
        };
        apply(&mut reg, Command::Bootstrap(config));
        apply(&mut reg, node(1, &["192.0.2.1"]));
        apply(&mut reg, node(2, &["192.0.2.2", "2001:db8::2"]));
        apply(&mut reg, node(3, &["192.0.2.3"]));
        apply(&mut reg, Command::SetNodeAlive { node_id: 3, alive: false });
        let user_id = Uuid::new_v4();
        let account = Command::CreateAccount {
            user_id,
            name: "a".into(),
            email: "a@example.com".into(),
            password_hash: String::new(),
            sshkey: String::new(),
            max_accounts: None,
        };
        apply(&mut reg, account);
        let socket = NewSocket {
            socket_id: Uuid::new_v4(),
            name: "demo".into(),
            socket_type: SocketType::Http,
            dnsname_hint: "demo".into(),
            port_hint: 0,
            label_chosen: true,
            port_chosen: false,
            access: Access::default(),
            custom_domain: None,
        };
        apply(&mut reg, Command::CreateSocket { user_id, socket, limits: SocketLimits::default(), first_tunnel: None });
        reg
    }

    fn data(l: Lookup) -> Vec<String> {
        match l {
            Lookup::Records(r) => r.iter().map(|r| r.data.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_zone_answers_with_the_live_nodes_only() {
        let reg = registry();
        let zone = Zone::of(&reg).unwrap();
        assert_eq!(data(zone.lookup("DEMO.edge.test.", RecordType::A)), ["192.0.2.1", "192.0.2.2"]);
        assert_eq!(data(zone.lookup("demo.edge.test", RecordType::AAAA)), ["2001:db8::2"]);
        assert_eq!(data(zone.lookup("edge.test", RecordType::NS)), ["ns1.edge.test.", "ns2.edge.test."]);
        assert_eq!(data(zone.lookup("ns2.edge.test", RecordType::ANY)), ["192.0.2.2", "2001:db8::2"]);
        assert_eq!(zone.lookup("ns3.edge.test", RecordType::A), Lookup::NxDomain, "a dead node's name server");
        assert_eq!(zone.lookup("other.edge.test", RecordType::A), Lookup::NxDomain);
        assert_eq!(zone.lookup("a.demo.edge.test", RecordType::A), Lookup::NxDomain);
        assert_eq!(data(zone.lookup("demo.edge.test", RecordType::MX)), Vec::<String>::new(), "NODATA");
        for outside in ["edge.test.example", "xedge.test", "test", "example.com"] {
            assert_eq!(zone.lookup(outside, RecordType::A), Lookup::Refused, "{outside}");
        }
    }

    #[test]
    fn acme_challenges_are_served_while_an_order_waits() {
        let mut reg = registry();
        assert_eq!(Zone::of(&reg).unwrap().lookup("_acme-challenge.edge.test", RecordType::TXT), Lookup::NxDomain);
        for value in ["one", "two"] {
            let change = AcmeChange::DnsChallenge { name: "edge.test".into(), value: value.into(), serve: true };
            apply(&mut reg, Command::Acme(change));
        }
        let zone = Zone::of(&reg).unwrap();
        assert_eq!(data(zone.lookup("_acme-challenge.edge.test", RecordType::TXT)), ["one", "two"]);
        assert_eq!(zone.lookup("_acme-challenge.demo.edge.test", RecordType::TXT), Lookup::NxDomain);
    }
}
