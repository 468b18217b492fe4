//! Public endpoints: HTTP routed by Host on the HTTP port. A request's socket is looked up in
//! the local replica; the connection goes to a live tunnel of that socket held on this node
//! (a `forwarded-tcpip` channel on its SSH session). Keep-alive, WebSocket upgrades,
//! `X-Forwarded-For/-Proto/-Host`, Basic auth for protected sockets, clear 404/401/502/503
//! pages.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header;
use hyper::header::HeaderValue;
use hyper::Request;
use hyper::Response;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use mysocket_raft_store::Socket;
use mysocket_raft_store::SocketType;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::NodeRef;
use crate::forwarding::Fate;
use crate::tunnels::Holding;
use crate::tunnels::Holdings;

/// Streams one public HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 128;
/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle HTTP/2 connection told to go away has to close before it is dropped.
const H2_GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Requests in flight on a connection, and when the last one ended.
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `since` when a request last ended (or the connection began).
    last_ms: std::sync::atomic::AtomicU64,
    since: std::sync::OnceLock<Instant>,
}

/// A request in flight; dropped when it ends.
struct Busy(Arc<Activity>);

impl Activity {
    fn start(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(self.clone())
    }

    fn now_ms(&self) -> u64 {
        self.since.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    /// How long no request has been in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let last = self.last_ms.load(std::sync::atomic::Ordering::SeqCst);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), std::sync::atomic::Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Most concurrent public connections per listener.
const MAX_CONNECTIONS: usize = 20_000;
/// Time a client gets to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, hyper::Error>;

/// The public URLs of a socket, as shown in banners and listings.
pub fn public_urls(node: &NodeRef, s: &Socket) -> Vec<String> {
    match s.socket_type {
        SocketType::Http | SocketType::Https => vec![
            format!("http://{}:{}/", s.dnsname, node.config.http_addr.port()),
            format!("https://{}:{}/", s.dnsname, node.config.https_addr.port()),
        ],
        SocketType::Tcp => vec![format!("tcp://{}:{}", s.dnsname, s.port.unwrap_or(0))],
        SocketType::Tls => vec![format!("tls://{}:{}", s.dnsname, s.port.unwrap_or(0))],
    }
}

fn page_html(status: StatusCode, title: &str, detail: &str) -> String {
    format!(
        "<!doctype html><html><head><title>{code} {title}</title></head><body><h1>{code} {title}</h1><p>{detail}</p><hr><p>mysocket</p></body></html>\n",
        code = status.as_u16()
    )
}

fn page(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    let html = page_html(status, title, detail);
    let mut r = Response::new(Full::new(Bytes::from(html)).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

/// [`page`] as the bytes of a whole HTTP/1.1 response, which closes the connection or not; to
/// a HEAD request, the head alone.
pub fn page_bytes(status: StatusCode, title: &str, detail: &str, close: bool, head_request: bool) -> Vec<u8> {
    let html = page_html(status, title, detail);
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        html.len(),
        if close { "connection: close\r\n" } else { "" },
        if head_request { "" } else { &html },
    )
    .into_bytes()
}

/// Serves public HTTP until `stop`.
pub async fn serve_http(node: NodeRef, holdings: Arc<Holdings>, listener: TcpListener, stop: CancellationToken) {
    // One sweeper for the upstream pool that HTTP and HTTPS share.
    {
        let (holdings, stop) = (holdings.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {
                        holdings.upstreams.sweep();
                        holdings.streams.sweep();
                    }
                }
            }
        });
    }
    crate::accept::serve(
        listener,
        MAX_CONNECTIONS,
        node.config.max_connections_per_source,
        crate::metrics::Listener::Http,
        stop,
        |stream, peer| {
            let (node, holdings) = (node.clone(), holdings.clone());
            async move { crate::h1::serve(node, holdings, stream, peer, "http").await }
        },
    )
    .await
}

/// Serves public HTTPS until `stop`: TLS terminated with the cluster's certificates, then the
/// same routing as HTTP.
pub async fn serve_https(
    node: NodeRef,
    holdings: Arc<Holdings>,
    tls: crate::tls::Slot,
    listener: TcpListener,
    stop: CancellationToken,
) {
    crate::accept::serve(
        listener,
        MAX_CONNECTIONS,
        node.config.max_connections_per_source,
        crate::metrics::Listener::Https,
        stop,
        |stream, peer| {
            let (node, holdings) = (node.clone(), holdings.clone());
            // None until the cluster is bootstrapped: the connection is closed, nothing to present.
            let acceptor = tls.read().expect("tls slot").clone();
            async move {
                let Some(acceptor) = acceptor else { return };
                match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                            serve_connection(node, holdings, TokioIo::new(tls), peer, "https", true).await
                        } else {
                            crate::h1::serve(node, holdings, tls, peer, "https").await
                        }
                    }
                    _ => tracing::debug!(%peer, "TLS handshake failed"),
                }
            }
        },
    )
    .await
}

/// One client connection (HTTP/1.1, or HTTP/2 when TLS negotiated `h2`); its upstream (one
/// channel through the tunnel, always HTTP/1.1) is reused by the requests that follow on it
/// while they go to the same socket.
pub async fn serve_connection<I>(
    node: NodeRef,
    holdings: Arc<Holdings>,
    io: I,
    peer: SocketAddr,
    scheme: &'static str,
    h2: bool,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let upstream: Arc<Mutex<Option<Upstream>>> = Arc::default();
    let (pool, ours) = (holdings.clone(), upstream.clone());
    let idle_timeout = node.config.idle_timeout;
    // Requests in flight, for the idle timeout of HTTP/2 (HTTP/1 has its head deadline).
    let activity = h2.then(|| Arc::new(Activity::default()));
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (node, holdings, upstream) = (node.clone(), holdings.clone(), upstream.clone());
        let busy = seen.as_ref().map(|a| a.start());
        async move {
            let resp = handle(node, holdings, upstream, peer, scheme, req).await;
            crate::metrics::get().response(scheme, resp.status().as_u16());
            drop(busy);
            Ok::<_, Infallible>(resp)
        }
    });
    let ended = if let Some(activity) = activity {
        activity.now_ms();
        // Bounded: streams at once, header size, a ping that must be answered, and an idle
        // connection (no request in flight for `idle_timeout`) told to go away; HTTP/2 has no
        // head deadline of its own to end a connection that says nothing.
        let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(crate::h1::MAX_HEAD as u32)
            .keep_alive_interval(Some(H2_PING_INTERVAL))
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .serve_connection(io, svc);
        let mut conn = std::pin::pin!(conn);
        loop {
            let check = idle_timeout.min(Duration::from_secs(1));
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = tokio::time::sleep(check) => {
                    if activity.idle_for() >= idle_timeout {
                        // GOAWAY, then a bounded wait for the client to close: one that never
                        // answers (not even the GOAWAY's PING) is dropped.
                        conn.as_mut().graceful_shutdown();
                        break tokio::time::timeout(H2_GOAWAY_GRACE, conn.as_mut()).await.unwrap_or(Ok(()));
                    }
                }
            }
        }
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            // A head larger than h1's (which hands it over) is answered 431.
            .max_buf_size(crate::h1::MAX_HEAD)
            .keep_alive(true)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "public connection ended");
    }
    // The upstream outlives this client: the next public connection of the socket takes it.
    let left = ours.lock().await.take();
    if let Some((socket_id, sender, log)) = left {
        keep_when_ready(&pool.upstreams, socket_id, sender, log).await;
    }
}

/// Idle upstream connections (HTTP/1.1 through a tunnel) per socket, which new public
/// connections take before opening a channel through the tunnel: a round trip to the tunnel
/// client and a connection to the service saved per public connection. A connection through a
/// session that was superseded or released is closed with that session, and such connections
/// are never taken. Bounded per socket and in idle time. `T` is a hyper connection or, for
/// [`crate::h1`], the stream itself.
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

/// Keeps `sender` for later once it is ready for another request (the last response may
/// still be finishing); one that does not become ready soon is dropped.
async fn keep_when_ready(pool: &UpstreamPool<SendRequest>, socket_id: Uuid, mut sender: SendRequest, log: LogSink) {
    if matches!(tokio::time::timeout(Duration::from_millis(500), sender.ready()).await, Ok(Ok(()))) {
        pool.keep(socket_id, sender, log);
    }
}

/// The socket a request is for: the target's authority (HTTP/2's :authority, or an HTTP/1
/// absolute-form target, which RFC 9112 §3.2.2 puts before Host), else Host; case-insensitive,
/// port stripped.
fn socket_for(node: &NodeRef, req: &Request<Incoming>) -> Option<Socket> {
    let host = req.uri().host().or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))?;
    socket_named(node, host)
}

/// RFC 9112 §3.2: a request with more than one Host field, or an HTTP/1.1 request with none
/// and no authority in its target, is refused (400) — the edge and the service could each
/// take a different one for the name.
fn one_host(req: &Request<Incoming>) -> Result<(), &'static str> {
    match req.headers().get_all(header::HOST).iter().count() {
        0 if req.version() == hyper::Version::HTTP_11 && req.uri().authority().is_none() => {
            Err("The request has no Host field naming the socket.")
        }
        0 | 1 => Ok(()),
        _ => Err("The request has more than one Host field."),
    }
}

/// The http/https socket named by a Host value: case-insensitive, port stripped.
pub fn socket_named(node: &NodeRef, host: &str) -> Option<Socket> {
    with_socket_named(node, host, |s, _| s.clone())
}

/// `f` of the http/https socket named by a Host value, looked at in the local replica.
/// `f` also gets the cluster's token key, which keys the hashes of Basic-auth passwords.
pub fn with_socket_named<T>(node: &NodeRef, host: &str, f: impl FnOnce(&Socket, &str) -> T) -> Option<T> {
    // The registry compares names case-insensitively.
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).trim_end_matches('.');
    node.read(|r| {
        let key = r.config().map(|c| c.token_key.as_str()).unwrap_or("");
        r.socket_by_dnsname(name)
            .filter(|s| matches!(s.socket_type, SocketType::Http | SocketType::Https))
            .map(|s| f(s, key))
    })
}

fn authorized(node: &NodeRef, s: &Socket, req: &Request<Incoming>) -> bool {
    if !s.protected {
        return true;
    }
    let key = node.read(|r| r.config().map(|c| c.token_key.clone())).unwrap_or_default();
    authorized_by(&key, s, req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()))
}

/// Whether a request with this Authorization value (if any) may use the socket. The password
/// is checked against the socket's keyed hash, in constant time whatever its length.
pub fn authorized_by(key: &str, s: &Socket, authorization: Option<&[u8]>) -> bool {
    if !s.protected {
        return true;
    }
    let Some(v) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else { return false };
    let Some(b64) = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")) else { return false };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
    let Ok(pair) = String::from_utf8(raw) else { return false };
    let Some((u, p)) = pair.split_once(':') else { return false };
    use subtle::ConstantTimeEq;
    let want_u = s.protected_username.as_deref().unwrap_or("");
    let stored = s.protected_password_hash.as_deref().unwrap_or("");
    bool::from(u.as_bytes().ct_eq(want_u.as_bytes())) & crate::auth::basic_password_matches(key, stored, p)
}

/// Live tunnels of a socket held on this node, in a rotating order so several tunnels share
/// new connections.
fn local_tunnels(node: &NodeRef, holdings: &Holdings, socket_id: &Uuid) -> Vec<Holding> {
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

/// The HTTP/1.1 connection through a tunnel that a public connection's requests reuse.
type Upstream = (Uuid, SendRequest, LogSink);

/// Where a public connection's log lines go: the SSH session holding the tunnel on this node,
/// or, for a relayed connection, along the relay to the holder, which writes them there.
#[derive(Clone)]
pub enum LogSink {
    Local(Holding),
    Relay { log: crate::relay::RelayLog, tunnel_id: Uuid, epoch: u64 },
}

impl LogSink {
    pub fn line(&self, line: String) {
        match self {
            LogSink::Local(h) => log_line(h, line),
            LogSink::Relay { log, .. } => log.line(line),
        }
    }

    /// Whether the tunnel session this way goes through is still the one the local replica
    /// names: a connection through a superseded or released session takes no more requests,
    /// even if its holder has not heard yet (cut off from the cluster, it cannot).
    pub fn current(&self, node: &NodeRef) -> bool {
        let (tunnel_id, epoch, here) = match self {
            LogSink::Local(h) => (h.tunnel_id, h.epoch, true),
            LogSink::Relay { tunnel_id, epoch, .. } => (*tunnel_id, *epoch, false),
        };
        node.read(|r| r.session(&tunnel_id).is_some_and(|s| s.epoch == epoch && (s.node_id == node.id) == here))
    }
}

/// A byte stream to the service behind a tunnel: a channel on a local SSH session, or a relay
/// to the node holding the tunnel.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Opens a stream to a live tunnel of the socket: tunnels held here first, then relays to the
/// nodes holding the others. When every candidate fails (the local replica may be stale), the
/// replica is refreshed once and the choice made again.
pub async fn open_upstream(
    node: &NodeRef,
    holdings: &Holdings,
    socket_id: &Uuid,
    peer: SocketAddr,
    log_connection: bool,
) -> Result<(Box<dyn Io>, LogSink), NoUpstream> {
    for attempt in 0..2 {
        // Tunnels tried in this pass, and how many of them refused because their client could
        // not reach its service: that answer is the client's own, and no fresher view of the
        // registry changes it.
        let (mut tried, mut service_down) = (0, 0);
        let local = local_tunnels(node, holdings, socket_id);
        for h in &local {
            match open_channel(h, peer).await {
                Ok(stream) => {
                    crate::metrics::get().upstream("local");
                    return Ok((Box::new(stream), LogSink::Local(h.clone())));
                }
                Err(e) => {
                    tried += 1;
                    if matches!(e, russh::Error::ChannelOpenFailure(_)) {
                        service_down += 1;
                    }
                    crate::metrics::get().upstream("local_failed");
                    tracing::debug!(tunnel_id = %h.tunnel_id, error = %e, "tunnel channel refused; trying the next")
                }
            }
        }
        let membership = node.metrics().membership_config.membership().clone();
        let mut remote: Vec<(Uuid, u64, String)> = node.read(|r| {
            r.tunnels_of(socket_id)
                .iter()
                .filter_map(|t| r.session(&t.tunnel_id))
                .filter(|s| s.node_id != node.id)
                .filter_map(|s| membership.get_node(&s.node_id).map(|n| (s.tunnel_id, s.epoch, n.addr.clone())))
                .collect()
        });
        if remote.len() > 1 {
            let k = rand::random::<usize>() % remote.len();
            remote.rotate_left(k);
        }
        for (tunnel_id, epoch, addr) in &remote {
            let open = mysocket_api::internal::RelayOpen {
                socket_id: socket_id.to_string(),
                tunnel_id: tunnel_id.to_string(),
                epoch: *epoch,
                client_addr: peer.to_string(),
                log_connection,
            };
            match crate::relay::connect(&node.peers, addr, open).await {
                Ok((stream, log)) => {
                    crate::metrics::get().upstream("relayed");
                    return Ok((stream, LogSink::Relay { log, tunnel_id: *tunnel_id, epoch: *epoch }));
                }
                Err(e) => {
                    tried += 1;
                    if e.code() == crate::relay::SERVICE_DOWN {
                        service_down += 1;
                    }
                    crate::metrics::get().upstream("relay_failed");
                    tracing::debug!(%tunnel_id, epoch, %addr, error = %e.message(), "relay refused; trying the next")
                }
            }
        }
        if tried > 0 && service_down == tried {
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

/// A new HTTP/1.1 connection through a tunnel of the socket, or the page that says why not.
async fn new_upstream(
    node: &NodeRef,
    holdings: &Holdings,
    socket_id: &Uuid,
    peer: SocketAddr,
) -> Result<(SendRequest, LogSink), Response<Body>> {
    let (stream, log) = open_upstream(node, holdings, socket_id, peer, false).await.map_err(NoUpstream::page)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| page(StatusCode::BAD_GATEWAY, "Bad Gateway", &format!("The tunnel failed: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok((sender, log))
}

fn empty_body() -> Body {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed()
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

    fn page(self) -> Response<Body> {
        let (status, title, why) = self.parts();
        page(status, title, why)
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
/// wakeups than 64 KiB (its CPU per relayed GB fell by 5–20% in interleaved runs).
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
    let size = if relayed { RELAY_COPY } else { crate::ssh::SSH_PACKET };
    tokio::io::copy_bidirectional_with_sizes(a, b, size, size).await
}

/// Writes a line to the session log of the SSH session holding `h`, if it has one.
pub fn log_line(h: &Holding, line: String) {
    if let Some(log) = &h.log {
        log.line(line);
    }
}

async fn handle(
    node: NodeRef,
    holdings: Arc<Holdings>,
    upstream: Arc<Mutex<Option<Upstream>>>,
    peer: SocketAddr,
    scheme: &'static str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    if let Err(why) = one_host(&req) {
        let mut r = page(StatusCode::BAD_REQUEST, "Bad Request", why);
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let Some(socket) = socket_for(&node, &req) else {
        return page(StatusCode::NOT_FOUND, "Not Found", "There is no socket with this name.");
    };
    if !authorized(&node, &socket, &req) {
        let mut r = page(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "This socket is protected: log in with its username and password.",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"mysocket\", charset=\"UTF-8\""));
        return r;
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let authority = req.uri().authority().map(|a| match a.port() {
        // Host and port only: never a userinfo part a target may carry.
        Some(port) => format!("{}:{port}", a.host()),
        None => a.host().to_string(),
    });
    if let Some(a) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
        // HTTP/2's :authority, or an HTTP/1 absolute-form target: the service gets the name
        // the request was routed by as its Host, and an origin-form target.
        req.headers_mut().insert(header::HOST, a);
        let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        *req.uri_mut() = target.parse().unwrap_or_default();
    }
    if req.version() == hyper::Version::HTTP_2 {
        // The tunnel speaks HTTP/1.1.
        *req.version_mut() = hyper::Version::HTTP_11;
    }

    // The fields as [`crate::forwarding`] decides. An upgrade keeps `Connection: upgrade` and
    // its `Upgrade`, and nothing else the client's list named.
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let is_upgrade = upgrade.is_some();
    {
        let hs = req.headers_mut();
        let values: Vec<HeaderValue> = hs.get_all(header::CONNECTION).iter().cloned().collect();
        let policy = crate::forwarding::Request::new(values.iter().map(|v| v.as_bytes()), socket.protected);
        let mut dropped = Vec::new();
        let mut forwarded_for = Vec::new();
        for (name, value) in hs.iter() {
            match policy.fate(name.as_str()) {
                Fate::Forward => {}
                Fate::Drop => dropped.push(name.clone()),
                Fate::ForwardedFor => forwarded_for.push(value.clone()),
            }
        }
        for n in dropped {
            hs.remove(n);
        }
        hs.remove("x-forwarded-for");
        let host = hs.get(header::HOST).cloned();
        let prior: Vec<&[u8]> = forwarded_for.iter().map(|v| v.as_bytes()).collect();
        let mut edge = Vec::with_capacity(3);
        crate::forwarding::edge_fields(
            &prior,
            &peer.ip().to_string(),
            scheme,
            host.as_ref().map(|h| h.as_bytes()),
            |name, parts| edge.push((name, parts.concat())),
        );
        for (name, value) in edge {
            // Made of the client's own field values, which were valid, and an address.
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                hs.insert(name, v);
            }
        }
        if let Some(u) = upgrade {
            hs.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            hs.insert(header::UPGRADE, u);
        }
    }

    let mut guard = upstream.lock().await;
    let reuse = matches!(&*guard, Some((sid, s, log))
        if *sid == socket.socket_id && s.is_ready() && !is_upgrade && log.current(&node));
    if !reuse {
        if let Some((sid, sender, log)) = guard.take() {
            // This connection moves to another socket: its upstream serves others meanwhile.
            keep_when_ready(&holdings.upstreams, sid, sender, log).await;
        }
        if !is_upgrade {
            if let Some((sender, log)) = holdings.upstreams.take(&socket.socket_id, &node) {
                *guard = Some((socket.socket_id, sender, log));
            }
        }
    }
    let reused = guard.is_some();
    if !reused {
        match new_upstream(&node, &holdings, &socket.socket_id, peer).await {
            Ok((sender, log)) => *guard = Some((socket.socket_id, sender, log)),
            Err(page) => return page,
        }
    }
    let client_upgrade = if is_upgrade { Some(hyper::upgrade::on(&mut req)) } else { None };
    // A request without a body that may be sent twice goes again on a new connection if the
    // reused one closed under it (the service may close an idle connection at any time).
    let again = (reused
        && !is_upgrade
        && hyper::body::Body::is_end_stream(req.body())
        && matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS))
    .then(|| {
        let mut r = Request::new(empty_body());
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.version_mut() = req.version();
        *r.headers_mut() = req.headers().clone();
        r
    });
    let (_, sender, _) = guard.as_mut().expect("set above");
    // The service's answer (its head) must start within the stall timeout of the request.
    let stall = node.config.stall_timeout;
    let mut resp = match tokio::time::timeout(stall, sender.send_request(req.map(BodyExt::boxed))).await {
        Ok(r) => r,
        Err(_) => {
            let log = guard.take().expect("set above").2;
            log.line(request_line(&peer.ip().to_string(), method.as_str(), &path, 504, 0, started));
            let why = "The service behind the tunnel took the request and did not answer in time.";
            let mut r = page(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout", why);
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    if let (Err(_), Some(again)) = (&resp, again) {
        match new_upstream(&node, &holdings, &socket.socket_id, peer).await {
            Ok((mut sender, log)) => {
                resp = sender.send_request(again).await;
                *guard = Some((socket.socket_id, sender, log));
            }
            Err(page) => return page,
        }
    }
    let log = guard.as_ref().expect("set above").2.clone();
    drop(guard);
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => {
            *upstream.lock().await = None;
            let local = e.is_closed() || e.is_incomplete_message() || e.is_canceled();
            let why = if local {
                "The service behind the tunnel is not answering (is it running?)."
            } else {
                "The service behind the tunnel failed."
            };
            log.line(format!("{} {} {method} {path} 502 ({e})\r\n", now_hms(), peer.ip()));
            return page(StatusCode::BAD_GATEWAY, "Bad Gateway", why);
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(cu) = client_upgrade {
            let su = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(c), Ok(s)) = (cu.await, su.await) {
                    let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                    let _ = pipe(&mut c, &mut s, false).await;
                }
            });
        }
        *upstream.lock().await = None;
    }
    // The line is written once the body has gone out (or the client left): bytes and latency
    // cover the whole answer.
    let status = resp.status().as_u16();
    let peer_ip = peer.ip();
    resp.map(|b| {
        Logged {
            inner: b,
            bytes: 0,
            done: Some(Box::new(move |bytes| {
                log.line(request_line(&peer_ip.to_string(), method.as_str(), &path, status, bytes, started))
            })),
        }
        .boxed()
    })
}

/// A response body that counts what it yields and reports the total when it is dropped:
/// after the last frame, or when the client goes away mid-body.
struct Logged {
    inner: Incoming,
    bytes: u64,
    done: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                self.bytes += d.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes);
        }
    }
}

/// Longest path a log line shows in full; a longer one is cut and ends in `...`, so a line
/// stays small whatever a visitor asks for, and so does a session's queue of lines.
const LOGGED_PATH: usize = 256;

/// The log line of one HTTP request.
/// "HH:MM:SS <client> <method> <path> <status> <bytes>B <ms>ms", put together by hand: it is
/// written for every request, and `format!` (an `IpAddr` above all) showed in profiles.
pub fn request_line(client: &str, method: &str, path: &str, status: u16, bytes: u64, started: Instant) -> String {
    let (path, cut) = match path.char_indices().nth(LOGGED_PATH) {
        Some((at, _)) => (&path[..at], "..."),
        None => (path, ""),
    };
    let mut line = String::with_capacity(43 + client.len() + method.len() + path.len());
    let (h, m, s) = hms();
    for (i, part) in [h, m, s].into_iter().enumerate() {
        if i > 0 {
            line.push(':');
        }
        if part < 10 {
            line.push('0');
        }
        push_number(&mut line, part);
    }
    for text in [" ", client, " ", method, " ", path, cut, " "] {
        push_printable(&mut line, text);
    }
    push_number(&mut line, u64::from(status));
    line.push(' ');
    push_number(&mut line, bytes);
    line.push_str("B ");
    push_number(&mut line, u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    line.push_str("ms\r\n");
    line
}

/// Appends `text` with every control character (C0, DEL and C1: what a terminal would take as
/// a command) shown as `?`: a log line goes to the tunnel owner's terminal, and a visitor
/// chooses the path and method in it.
fn push_printable(line: &mut String, text: &str) {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        line.push_str(text);
    } else {
        line.extend(text.chars().map(|c| if c.is_control() { '?' } else { c }));
    }
}

fn push_number(line: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.extend(digits[at..].iter().map(|d| char::from(*d)));
}

/// The log line of a whole tcp/tls connection.
pub fn connection_line(client: SocketAddr, to_service: u64, to_client: u64, took: Duration) -> String {
    format!(
        "{} {} connection closed: {to_service}B in, {to_client}B out, {}ms\r\n",
        now_hms(),
        client.ip(),
        took.as_millis()
    )
}

fn now_hms() -> String {
    let (h, m, s) = hms();
    format!("{h:02}:{m:02}:{s:02}")
}

/// The time of day (UTC) for log lines.
fn hms() -> (u64, u64, u64) {
    let secs = crate::cluster::now_ms() / 1000;
    ((secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_reads_like_an_access_log() {
        let line = request_line("203.0.113.7", "GET", "/index.html", 200, 1234567, Instant::now());
        let (time, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, "203.0.113.7 GET /index.html 200 1234567B 0ms\r\n");
        let hms: Vec<u64> = time.split(':').map(|p| p.parse().unwrap()).collect();
        assert!(time.len() == 8 && hms.len() == 3 && hms[0] < 24 && hms[1] < 60 && hms[2] < 60, "{time}");
        let line = request_line("::1", "HEAD", "/", 404, 0, Instant::now() - Duration::from_millis(1500));
        // Control characters a visitor put in the path never reach the owner's terminal.
        let line = {
            let evil = request_line("::1", "GET", "/a\u{1b}[2J\u{9b}31m\u{7f}\r\nb", 200, 0, Instant::now());
            assert!(evil.contains(" /a?[2J?31m???b 200 "), "{evil:?}");
            assert!(!evil.trim_end_matches("\r\n").chars().any(char::is_control), "{evil:?}");
            line
        };
        assert!(line.ends_with(" ::1 HEAD / 404 0B 1500ms\r\n"), "{line}");
        // A long path is cut (at a character, not inside one); one of the limit is not.
        let whole = format!("/{}", "a".repeat(LOGGED_PATH - 1));
        assert!(request_line("::1", "GET", &whole, 200, 0, Instant::now()).contains(&format!(" {whole} 200 ")));
        let long = format!("/{}", "é".repeat(40_000));
        let line = request_line("::1", "GET", &long, 200, 0, Instant::now());
        let shown = format!(" /{}... 200 ", "é".repeat(LOGGED_PATH - 1));
        assert!(line.contains(&shown) && line.len() < 700, "{line}");
    }
}
