//! The hyper path: HTTP/2 on the public HTTPS port (ALPN `h2`), and HTTP/1 requests the
//! hand-written path hands over (upgrades, absolute-form targets, anything unusual). Each
//! request is routed, checked against the socket's policy, given the edge's fields and sent
//! over an HTTP/1.1 connection through a tunnel, reused while the client's requests go to
//! the same socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header;
use hyper::header::HeaderValue;
use hyper::Method;
use hyper::Request;
use hyper::Response;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use mysocket_raft_store::Socket;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::edge::cloud::callback;
use crate::edge::cloud::needs_session;
use crate::edge::cloud::not_allowed;
use crate::edge::cloud::sign_in;
use crate::edge::cloud::sign_out;
use crate::edge::cloud::CALLBACK;
use crate::edge::cloud::SIGN_OUT;
use crate::edge::http::headers::Fate;
use crate::edge::http::pages::page;
use crate::edge::http::Body;
use crate::edge::log::request_line;
use crate::edge::log::LogSink;
use crate::edge::policy::decide;
use crate::edge::policy::Passed;
use crate::edge::policy::Refusal;
use crate::edge::policy::Visitor;
use crate::edge::route::one_host;
use crate::edge::route::socket_for;
use crate::edge::upstream::open_upstream;
use crate::edge::upstream::pipe;
use crate::edge::upstream::NoUpstream;
use crate::edge::upstream::SendRequest;
use crate::edge::upstream::UpstreamPool;
use crate::edge::Edge;
use crate::net::accept::HEADER_TIMEOUT;

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

/// One client connection (HTTP/1.1, or HTTP/2 when TLS negotiated `h2`); its upstream (one
/// channel through the tunnel, always HTTP/1.1) is reused by the requests that follow on it
/// while they go to the same socket.
pub async fn serve_connection<I>(edge: Arc<Edge>, io: I, peer: SocketAddr, scheme: &'static str, h2: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let upstream: Arc<Mutex<Option<Upstream>>> = Arc::default();
    let h2c: crate::edge::http::h2c::Slot = Arc::default();
    let (pool, ours) = (edge.clone(), upstream.clone());
    let idle_timeout = edge.node.config.idle_timeout;
    // Requests in flight, for the idle timeout of HTTP/2 (HTTP/1 has its head deadline).
    let activity = h2.then(|| Arc::new(Activity::default()));
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (edge, upstream, h2c) = (edge.clone(), upstream.clone(), h2c.clone());
        let busy = seen.as_ref().map(|a| a.start());
        async move {
            let resp = handle(edge, upstream, h2c, peer, scheme, req).await;
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
            .max_header_list_size(crate::edge::http::h1::MAX_HEAD as u32)
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
            .max_buf_size(crate::edge::http::h1::MAX_HEAD)
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

/// Keeps `sender` for later once it is ready for another request (the last response may
/// still be finishing); one that does not become ready soon is dropped.
async fn keep_when_ready(pool: &UpstreamPool<SendRequest>, socket_id: Uuid, mut sender: SendRequest, log: LogSink) {
    if matches!(tokio::time::timeout(Duration::from_millis(500), sender.ready()).await, Ok(Ok(()))) {
        pool.keep(socket_id, sender, log);
    }
}

/// The HTTP/1.1 connection through a tunnel that a public connection's requests reuse.
type Upstream = (Uuid, SendRequest, LogSink);

/// A new HTTP/1.1 connection through a tunnel of the socket, or the page that says why not.
async fn new_upstream(
    edge: &Edge,
    socket_id: &Uuid,
    peer: SocketAddr,
) -> Result<(SendRequest, LogSink), Response<Body>> {
    let (stream, log) = open_upstream(edge, socket_id, peer, false).await.map_err(NoUpstream::page)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| page(StatusCode::BAD_GATEWAY, "Bad Gateway", &format!("The tunnel failed: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok((sender, log))
}

pub fn empty_body() -> Body {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed()
}

async fn handle(
    edge: Arc<Edge>,
    upstream: Arc<Mutex<Option<Upstream>>>,
    h2c: crate::edge::http::h2c::Slot,
    peer: SocketAddr,
    scheme: &'static str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let (socket, email) = match admit(&edge, &req, peer, scheme).await {
        Ok(s) => s,
        Err(refusal) => return *refusal,
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    to_service_form(&mut req);
    let is_upgrade = req.headers().contains_key(header::UPGRADE);
    forwarded_fields(req.headers_mut(), socket.access.protected, peer, scheme);
    if let Some(v) = email.and_then(|e| HeaderValue::from_str(&e).ok()) {
        req.headers_mut().insert(crate::edge::http::headers::EMAIL, v);
    }
    if socket.access.upstream == mysocket_raft_store::UpstreamProtocol::H2c {
        return match crate::edge::http::h2c::send(&edge, &h2c, socket.socket_id, peer, req).await {
            Ok((resp, log)) => logged(resp, log, peer, method, path, started),
            Err(page) => page,
        };
    }

    let mut guard = upstream.lock().await;
    let reused = match take_upstream(&edge, &mut guard, &socket, peer, is_upgrade).await {
        Ok(reused) => reused,
        Err(page) => return page,
    };
    let client_upgrade = if is_upgrade { Some(hyper::upgrade::on(&mut req)) } else { None };
    let again = if reused && !is_upgrade { sent_again(&req) } else { None };
    let (_, sender, _) = guard.as_mut().expect("set above");
    // The service's answer (its head) must start within the stall timeout of the request.
    let stall = edge.node.config.stall_timeout;
    let mut resp = match tokio::time::timeout(stall, sender.send_request(req.map(BodyExt::boxed))).await {
        Ok(r) => r,
        Err(_) => {
            let log = guard.take().expect("set above").2;
            log.line(request_line(&peer.ip().to_string(), method.as_str(), &path, 504, 0, started));
            let why = "The service behind the tunnel took the request and did not answer in time.";
            return closing(page(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout", why));
        }
    };
    if let (Err(_), Some(again)) = (&resp, again) {
        match new_upstream(&edge, &socket.socket_id, peer).await {
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
            log.line(format!("{} {} {method} {path} 502 ({e})\r\n", crate::edge::log::now_hms(), peer.ip()));
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
    logged(resp, log, peer, method, path, started)
}

/// The service's response, its log line written once the body has gone out (or the client
/// left): bytes and latency cover the whole answer.
fn logged(
    resp: Response<Incoming>,
    log: LogSink,
    peer: SocketAddr,
    method: Method,
    path: String,
    started: Instant,
) -> Response<Body> {
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

/// `r`, closing the connection after it.
fn closing(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The socket a request is for, if it names one and the socket's rules let the visitor
/// through (with the email cloud authentication verified); else the page that says why, or
/// the step of a sign-in (the provider's redirect, the callback, signing out).
async fn admit(
    edge: &Edge,
    req: &Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Result<(Socket, Passed), Box<Response<Body>>> {
    if let Err(why) = one_host(req) {
        return Err(Box::new(closing(page(StatusCode::BAD_REQUEST, "Bad Request", why))));
    }
    if let Some(answer) = crate::edge::domains::http01(&edge.node, req.uri().path()) {
        return Err(Box::new(crate::edge::domains::http01_response(answer)));
    }
    let Some(socket) = socket_for(&edge.node, req) else {
        return Err(Box::new(page(StatusCode::NOT_FOUND, "Not Found", "There is no socket with this name.")));
    };
    // The cluster's token key keys the Basic-auth hashes and the session cookies.
    let key = match socket.access.protected || socket.access.cloud_auth_enabled {
        true => edge.node.read(|r| r.config().map(|c| c.token_key.clone())).unwrap_or_default(),
        false => String::new(),
    };
    let cookies: Vec<&[u8]> = req.headers().get_all(header::COOKIE).iter().map(|v| v.as_bytes()).collect();
    let visitor = Visitor {
        ip: peer.ip(),
        authorization: req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        cookies: &cookies,
    };
    let verdict = decide(edge, &key, &socket, &visitor);
    let cloud = edge.cloud.as_ref().filter(|_| socket.access.cloud_auth_enabled);
    if let (Some(p), Ok(_) | Err(Refusal::SignIn | Refusal::NotAllowed { .. })) = (cloud, &verdict) {
        // The public host and port the visitor used: HTTP/2's :authority (without a userinfo
        // part), or Host.
        let host = match req.uri().authority() {
            Some(a) => a.port().map(|p| format!("{}:{p}", a.host())).unwrap_or_else(|| a.host().to_string()),
            None => req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_string(),
        };
        let host = host.as_str();
        match req.uri().path() {
            CALLBACK => {
                let query = req.uri().query().unwrap_or("");
                return Err(Box::new(callback(p, &key, &socket.socket_id, scheme, host, query, &cookies).await));
            }
            SIGN_OUT => return Err(Box::new(sign_out(scheme))),
            _ => {}
        }
        if let Err(Refusal::SignIn) = verdict {
            crate::metrics::get().visitor_refused(socket.socket_type.as_str(), "cloud_auth");
            let dest = req.headers().get("sec-fetch-dest").map(|v| v.as_bytes());
            if dest.is_some_and(|d| !matches!(d, b"document" | b"iframe" | b"frame")) {
                return Err(Box::new(needs_session()));
            }
            let back = match *req.method() {
                Method::GET | Method::HEAD => req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                _ => "/",
            };
            return Err(Box::new(sign_in(p, &key, &socket.socket_id, scheme, host, back).await));
        }
    }
    match verdict {
        Ok(email) => Ok((socket, email)),
        Err(why) => {
            crate::metrics::get().visitor_refused(socket.socket_type.as_str(), why.reason());
            Err(Box::new(refusal_page(&why)))
        }
    }
}

/// The page for a visitor the socket's rules refuse.
fn refusal_page(why: &Refusal) -> Response<Body> {
    match why {
        Refusal::Address => closing(page(StatusCode::FORBIDDEN, "Forbidden", "Your address may not use this socket.")),
        Refusal::RateLimited { retry_after } => {
            let mut r = page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                "Too many requests from your address to this socket; slow down.",
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            r
        }
        Refusal::Basic => {
            let mut r = page(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "This socket is protected: log in with its username and password.",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mysocket\", charset=\"UTF-8\""),
            );
            r
        }
        Refusal::NotAllowed { email } => not_allowed(email),
        Refusal::SignIn | Refusal::NoProvider => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "This socket asks visitors to sign in, and this node has no identity provider configured.",
        ),
    }
}

/// The request as the service gets it: HTTP/1.1 (the tunnel speaks it), an origin-form
/// target, and as Host the name it was routed by (HTTP/2's :authority, or an HTTP/1
/// absolute-form target's).
fn to_service_form(req: &mut Request<Incoming>) {
    let authority = req.uri().authority().map(|a| match a.port() {
        // Host and port only: never a userinfo part a target may carry.
        Some(port) => format!("{}:{port}", a.host()),
        None => a.host().to_string(),
    });
    if let Some(a) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
        req.headers_mut().insert(header::HOST, a);
        let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        *req.uri_mut() = target.parse().unwrap_or_default();
    }
    if req.version() == hyper::Version::HTTP_2 {
        *req.version_mut() = hyper::Version::HTTP_11;
    }
}

/// The fields as [`crate::edge::http::headers`] decides. An upgrade keeps `Connection: upgrade`
/// and its `Upgrade`, and nothing else the client's list named.
fn forwarded_fields(hs: &mut hyper::HeaderMap, protected: bool, peer: SocketAddr, scheme: &str) {
    let upgrade = hs.get(header::UPGRADE).cloned();
    let values: Vec<HeaderValue> = hs.get_all(header::CONNECTION).iter().cloned().collect();
    let policy = crate::edge::http::headers::Request::new(values.iter().map(|v| v.as_bytes()), protected);
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
    let mut fields = Vec::with_capacity(3);
    crate::edge::http::headers::edge_fields(
        &prior,
        &peer.ip().to_string(),
        scheme,
        host.as_ref().map(|h| h.as_bytes()),
        |name, parts| fields.push((name, parts.concat())),
    );
    for (name, value) in fields {
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

/// Puts in `slot` an upstream for `socket`: the one this connection used, if it is for the same
/// socket and ready; else an idle one from the pool; else a new one. Whether it was reused.
async fn take_upstream(
    edge: &Edge,
    slot: &mut Option<Upstream>,
    socket: &Socket,
    peer: SocketAddr,
    is_upgrade: bool,
) -> Result<bool, Response<Body>> {
    let reuse = matches!(&*slot, Some((sid, s, log))
        if *sid == socket.socket_id && s.is_ready() && !is_upgrade && log.current(&edge.node));
    if !reuse {
        if let Some((sid, sender, log)) = slot.take() {
            // This connection moves to another socket: its upstream serves others meanwhile.
            keep_when_ready(&edge.upstreams, sid, sender, log).await;
        }
        if !is_upgrade {
            if let Some((sender, log)) = edge.upstreams.take(&socket.socket_id, &edge.node) {
                *slot = Some((socket.socket_id, sender, log));
            }
        }
    }
    if slot.is_some() {
        return Ok(true);
    }
    let (sender, log) = new_upstream(edge, &socket.socket_id, peer).await?;
    *slot = Some((socket.socket_id, sender, log));
    Ok(false)
}

/// A copy of a request without a body that may be sent twice, to send again on a new
/// connection if the reused one closed under it (the service may close an idle connection at
/// any time).
fn sent_again(req: &Request<Incoming>) -> Option<Request<Body>> {
    let idempotent = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS);
    if !idempotent || !hyper::body::Body::is_end_stream(req.body()) {
        return None;
    }
    let mut r = Request::new(empty_body());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    Some(r)
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
