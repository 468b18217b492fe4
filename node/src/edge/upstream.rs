//! The way to a socket's service: a channel on a tunnel held here, or a relay to the node
//! holding one; idle upstream connections pooled per socket; the copy loop for whole
//! connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use hyper::Response;
use hyper::StatusCode;
use uuid::Uuid;

use crate::control::NodeRef;
use crate::edge::http::Body;
use crate::edge::log::LogSink;
use crate::edge::Edge;
use crate::net::Io;
use crate::tunnels::Holding;
use crate::tunnels::Holdings;

/// Idle upstream connections (HTTP/1.1 through a tunnel) per socket, which new public
/// connections take before opening a channel through the tunnel: a round trip to the tunnel
/// client and a connection to the service saved per public connection. A connection through a
/// session that was superseded or released is closed with that session, and such connections
/// are never taken. Bounded per socket and in idle time. `T` is a hyper connection or, for
/// [`crate::edge::http::h1`], the stream itself.
pub struct UpstreamPool<T> {
    map: std::sync::Mutex<HashMap<Uuid, Vec<Pooled<T>>>>,
}

/// An idle connection in a pool: since when, the connection, where its log lines go.
type Pooled<T> = (Instant, T, LogSink);

impl<T> Default for UpstreamPool<T> {
    fn default() -> Self {
        UpstreamPool { map: Default::default() }
    }
}

pub type SendRequest = hyper::client::conn::http1::SendRequest<Body>;

/// Idle upstream connections kept per socket.
const POOL_PER_SOCKET: usize = 128;

/// How long an upstream connection may wait idle in the pool.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// An idle upstream connection that can say whether it would take a request now.
pub trait Idle {
    fn usable(&mut self) -> bool;
}

impl Idle for SendRequest {
    fn usable(&mut self) -> bool {
        self.is_ready()
    }
}

impl<T: Idle> UpstreamPool<T> {
    /// An idle upstream connection to the socket's service that can take a request now,
    /// through a tunnel session the local replica still names.
    pub fn take(&self, socket_id: &Uuid, node: &NodeRef) -> Option<(T, LogSink)> {
        let mut map = self.map.lock().expect("upstream pool");
        let idle = map.get_mut(socket_id)?;
        while let Some((at, mut up, log)) = idle.pop() {
            if at.elapsed() < POOL_IDLE && up.usable() && log.current(node) {
                return Some((up, log));
            }
        }
        None
    }

    /// Keeps an upstream connection that can take another request.
    pub fn keep(&self, socket_id: Uuid, up: T, log: LogSink) {
        let mut map = self.map.lock().expect("upstream pool");
        let idle = map.entry(socket_id).or_default();
        if idle.len() >= POOL_PER_SOCKET {
            idle.remove(0);
        }
        idle.push((Instant::now(), up, log));
    }

    /// Drops connections idle too long or closed.
    pub fn sweep(&self) {
        self.map.lock().expect("upstream pool").retain(|_, idle| {
            idle.retain_mut(|(at, up, _)| at.elapsed() < POOL_IDLE && up.usable());
            !idle.is_empty()
        });
    }
}

/// Live tunnels of a socket held on this node, in a rotating order so several tunnels share
/// new connections.
pub fn local_tunnels(node: &NodeRef, holdings: &Holdings, socket_id: &Uuid) -> Vec<Holding> {
    if crate::planted::on(crate::planted::Bug::StaleHolder) {
        // Planted bug: any session held here serves, superseded or not.
        return node.read(|r| r.tunnels_of(socket_id).iter().filter_map(|t| holdings.get(&t.tunnel_id)).collect());
    }
    let mut held: Vec<Holding> = node.read(|r| {
        r.tunnels_of(socket_id)
            .iter()
            .filter_map(|t| r.session(&t.tunnel_id))
            .filter(|s| s.node_id == node.id)
            .filter_map(|s| holdings.get(&s.tunnel_id).filter(|h| h.epoch == s.epoch))
            .collect()
    });
    if held.len() > 1 {
        let k = rand::random::<usize>() % held.len();
        held.rotate_left(k);
    }
    held
}

/// Tunnels tried in one pass, and how many of them refused because their client could not
/// reach its service: that answer is the client's own, and no fresher view of the registry
/// changes it.
#[derive(Default)]
pub struct Tried {
    pub tunnels: usize,
    pub service_down: usize,
}

/// Opens a stream to a live tunnel of the socket: tunnels held here first, then relays to the
/// nodes holding the others. When every candidate fails (the local replica may be stale), the
/// replica is refreshed once and the choice made again.
pub async fn open_upstream(
    edge: &Edge,
    socket_id: &Uuid,
    peer: SocketAddr,
    log_connection: bool,
) -> Result<(Box<dyn Io>, LogSink), NoUpstream> {
    let node = &edge.node;
    for attempt in 0..2 {
        let mut tried = Tried::default();
        let local = local_tunnels(node, &edge.holdings, socket_id);
        if let Some(found) = open_local(&local, peer, &mut tried).await {
            return Ok(found);
        }
        let remote = crate::edge::relay::holders(node, socket_id);
        let open = |tunnel_id: &Uuid, epoch: u64| mysocket_api::internal::RelayOpen {
            socket_id: socket_id.to_string(),
            tunnel_id: tunnel_id.to_string(),
            epoch,
            client_addr: peer.to_string(),
            log_connection,
        };
        if let Some(found) = crate::edge::relay::open(node, &remote, open, &mut tried).await {
            return Ok(found);
        }
        if tried.tunnels > 0 && tried.service_down == tried.tunnels {
            crate::metrics::get().unavailable("service_down");
            return Err(NoUpstream::ServiceDown);
        }
        if local.is_empty() && remote.is_empty() && attempt == 1 {
            crate::metrics::get().unavailable("no_tunnel");
            return Err(NoUpstream::NoTunnel);
        }
        if attempt == 0 && node.linearizable().await.is_err() {
            break;
        }
    }
    crate::metrics::get().unavailable("refused");
    Err(NoUpstream::Refused)
}

/// A channel on the first of the tunnels held here that opens one.
async fn open_local(local: &[Holding], peer: SocketAddr, tried: &mut Tried) -> Option<(Box<dyn Io>, LogSink)> {
    for h in local {
        match open_channel(h, peer).await {
            Ok(stream) => {
                crate::metrics::get().upstream("local");
                return Some((Box::new(stream), LogSink::Local(h.clone())));
            }
            Err(e) => {
                tried.tunnels += 1;
                if matches!(e, russh::Error::ChannelOpenFailure(_)) {
                    tried.service_down += 1;
                }
                crate::metrics::get().upstream("local_failed");
                tracing::debug!(tunnel_id = %h.tunnel_id, error = %e, "tunnel channel refused; trying the next")
            }
        }
    }
    None
}

/// Why no stream to the service could be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoUpstream {
    /// No tunnel of the socket is connected anywhere.
    NoTunnel,
    /// Every tunnel tried was refused by its client, which could not reach the service.
    ServiceDown,
    /// Tunnels exist but none accepted the connection.
    Refused,
}

impl NoUpstream {
    /// The status, title and text of the page that says why.
    pub fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            NoUpstream::NoTunnel => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "This socket has no live tunnel: start mysocketctl connect (or ssh -R) for it.",
            ),
            NoUpstream::ServiceDown => (
                StatusCode::BAD_GATEWAY,
                "Bad Gateway",
                "The tunnel is up, but the service behind it did not take the connection (is it running?).",
            ),
            NoUpstream::Refused => {
                (StatusCode::BAD_GATEWAY, "Bad Gateway", "The tunnels of this socket did not accept the connection.")
            }
        }
    }

    pub fn page(self) -> Response<Body> {
        let (status, title, why) = self.parts();
        crate::edge::http::pages::page(status, title, why)
    }
}

pub async fn open_channel(
    h: &Holding,
    peer: SocketAddr,
) -> Result<russh::ChannelStream<russh::server::Msg>, russh::Error> {
    let ch = h
        .handle
        .channel_open_forwarded_tcpip(
            h.bind_address.clone(),
            h.relay_port,
            peer.ip().to_string(),
            u32::from(peer.port()),
        )
        .await?;
    Ok(ch.into_stream())
}

/// Buffers for copying between a public connection and an unframed relay: both are plain
/// sockets, and reads and writes of 256 KiB cost the relaying node fewer system calls and
/// wakeups than 64 KiB (BENCHMARKS.md, data plane: 256 KiB relay buffers).
const RELAY_COPY: usize = 256 * 1024;

/// Copies both ways between a public connection and its way through a tunnel until both
/// sides end: (bytes to the service, bytes to the client). Buffers of a full SSH packet, so a
/// busy connection moves one packet per channel message instead of tokio's default 8 KiB —
/// or, toward a relay (`relayed`), bigger ones.
pub async fn pipe<A, B>(a: &mut A, b: &mut B, relayed: bool) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let size = if relayed { RELAY_COPY } else { crate::net::SSH_PACKET };
    tokio::io::copy_bidirectional_with_sizes(a, b, size, size).await
}

impl Idle for Box<dyn Io> {
    /// An idle stream has nothing to read: neither bytes (the service spoke out of turn) nor
    /// its end (the service or the tunnel closed it).
    fn usable(&mut self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        tokio::io::AsyncRead::poll_read(std::pin::Pin::new(self), &mut cx, &mut probe).is_pending()
    }
}
