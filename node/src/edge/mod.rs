//! The public data plane: what a visitor's connection meets. [`listen`] accepts on the HTTP
//! and HTTPS ports and [`tcp`] on each tcp/tls socket's port; [`route`] finds the socket a
//! request names; [`policy`] decides whether it may pass (the one place every access rule is
//! decided, for every path); [`upstream`] finds the way to the service — a tunnel held here or
//! a relay to its holder — and pools idle connections; [`http`] forwards requests (headers,
//! pages, the hand-written HTTP/1 path and hyper's); [`log`] writes the tunnel owner's access
//! log; [`certs`] presents the cluster's certificates; [`relay`] serves relays other nodes open
//! to tunnels held here.

pub mod certs;
pub mod http;
pub mod listen;
pub mod log;
pub mod policy;
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
}

impl Edge {
    pub fn new(node: NodeRef, holdings: Arc<Holdings>) -> Arc<Edge> {
        Arc::new(Edge { node, holdings, upstreams: Default::default(), streams: Default::default() })
    }
}
