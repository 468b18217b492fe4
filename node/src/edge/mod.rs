//! The public data plane: what a visitor's connection meets. [`listen`] accepts on the HTTP
//! and HTTPS ports and [`tcp`] on each tcp/tls socket's port; [`route`] finds the socket a
//! request names; [`policy`] decides whether it may pass (the one place every access rule is
//! decided, for every path), with [`cloud`] for the identity provider's logins; [`upstream`] finds the way to the service — a tunnel held here or
//! a relay to its holder — and pools idle connections; [`http`] forwards requests (headers,
//! pages, the hand-written HTTP/1 path and hyper's); [`log`] writes the tunnel owner's access
//! log; [`certs`] presents the cluster's certificates, [`acme`] obtains them from a public CA; [`relay`] serves relays other nodes open
//! to tunnels held here; [`dns`] answers for the cluster's domain with the live nodes;
//! [`domains`] verifies custom domains; [`proxy_header`] writes the PROXY protocol header a
//! tcp or tls socket may ask for.

pub mod acme;
pub mod certs;
pub mod cloud;
pub mod dns;
pub mod domains;
pub mod http;
pub mod listen;
pub mod log;
pub mod policy;
pub mod proxy_header;
pub mod relay;
pub mod route;
pub mod tcp;
pub mod upstream;

use std::sync::Arc;

use crate::control::NodeRef;
use crate::net::Io;
use crate::tunnels::Holdings;

/// What every public connection's handler shares: the registry, the tunnels held here, and the
/// idle connections through them.
pub struct Edge {
    pub node: NodeRef,
    pub holdings: Arc<Holdings>,
    /// Idle HTTP connections through the tunnels (held here or relayed), per socket: hyper's,
    /// and the plain streams of the hand-written HTTP/1 path.
    pub upstreams: upstream::UpstreamPool<upstream::SendRequest>,
    pub streams: upstream::UpstreamPool<Box<dyn Io>>,
    /// The rate limits per socket and visitor.
    pub visits: policy::Visits,
    /// The identity provider of cloud authentication, if the operator configured one.
    pub cloud: Option<Arc<cloud::Provider>>,
}

impl Edge {
    pub fn new(node: NodeRef, holdings: Arc<Holdings>) -> Arc<Edge> {
        let cloud = node.oidc.clone();
        let edge = Arc::new(Edge {
            node,
            holdings,
            upstreams: Default::default(),
            streams: Default::default(),
            visits: Default::default(),
            cloud,
        });
        // The rate limits forget visitors whose bucket is full again, and sockets gone.
        let weak = Arc::downgrade(&edge);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                let Some(edge) = weak.upgrade() else { return };
                edge.visits.prune(|id| edge.node.read(|r| r.socket(id).map(|s| s.access.rate_limit).unwrap_or(0)));
            }
        });
        edge
    }
}
