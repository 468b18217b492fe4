//! Plain HTTP/1.1 on the public ports, without hyper. Most public traffic is requests that
//! need nothing of an HTTP library but their framing: no upgrade, no `Expect`, no chunked
//! request body, an origin-form target and one Host. Such a request is parsed once, its head
//! rewritten for the service (`X-Forwarded-*` added, hop-by-hop fields dropped) and written
//! to a stream through the tunnel, its body copied by its length; the answer's head is read,
//! passed on less its hop-by-hop fields, and its body copied by its framing (length, chunked, or
//! to the end of the stream). All of it in the public connection's own task, so a request
//! costs two task wakeups (the SSH session's and this one's) instead of a hyper server and
//! a hyper client handing it to each other.
//!
//! Anything else — another kind of request, or an answer the edge gives itself (404, 401,
//! 503) — hands the connection, with the bytes already read, to the hyper path in
//! [`crate::edge::http::hyper`], which keeps it from then on. Hand-overs happen only between requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use hyper::StatusCode;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::edge::http::headers::is_hop_by_hop;
use crate::edge::http::headers::tokens;
use crate::edge::http::headers::Fate;
use crate::edge::log::LogSink;
use crate::edge::Edge;
use crate::net::prefixed::Prefixed;
use crate::net::Io;

/// Largest request or response head read here (a larger request goes to hyper, which answers
/// 431 Request Header Fields Too Large).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a head read here.
const MAX_HEADERS: usize = 64;
/// Room made in a head buffer before each read.
const HEAD_READ: usize = 4096;
/// Buffer for bodies, allocated by the first request that has one.
const BODY_CHUNK: usize = 32 * 1024;

/// A stream through a tunnel to a socket's service.
struct Upstream {
    socket_id: Uuid,
    io: Box<dyn Io>,
    log: LogSink,
}

/// A request this path forwards; its head for the service is in the connection's `out`.
#[derive(Debug)]
struct Req {
    /// Length of the client's request head in the read buffer.
    head_len: usize,
    socket_id: Uuid,
    method: String,
    path: String,
    /// Length of the request body.
    body: u64,
    /// The client asked to close the connection after this request.
    close: bool,
    /// A HEAD request: the answer has no body whatever its head says.
    head: bool,
}

impl Req {
    /// Whether the request may be sent again on a fresh stream when a reused one ended before
    /// answering (the service may have closed it meanwhile).
    fn retryable(&self) -> bool {
        self.body == 0 && matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS")
    }
}

#[derive(Debug)]
enum Prepared {
    /// The head is not complete yet.
    Partial,
    /// Not a request for this path: hyper's.
    Other,
    Forward(Req),
}

/// How the end of a response body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// The body ends with the stream.
    Eof,
}

/// A response head, parsed.
#[derive(Debug)]
struct RespHead {
    len: usize,
    status: u16,
    framing: Framing,
    /// The service keeps the connection open after this response.
    keep_alive: bool,
    /// The head for the client, up to its last field: an HTTP/1.1 status line and the
    /// service's fields less the hop-by-hop ones (`Connection`, what it names, `Keep-Alive`,
    /// `Proxy-Connection`), which concern the stream through the tunnel.
    head: Vec<u8>,
}

/// Why a body copy stopped early: the side read from failed or ended, or the side written to.
enum CopyFailed {
    Read,
    Write,
}

/// The client went away while a request was being sent (or sent nothing of its body for the
/// stall timeout).
struct ClientGone;

/// What came of sending a request through a stream.
enum Sent {
    Answered(RespHead),
    /// The stream failed or ended before an answer.
    Failed,
    /// The service sent nothing for the stall timeout.
    Silent,
}

/// Serves one public connection (plain TCP or TLS with HTTP/1.1) until it ends, or hands it to
/// hyper.
pub async fn serve<S>(edge: Arc<Edge>, client: S, peer: SocketAddr, scheme: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut c = Conn {
        edge,
        client,
        peer,
        scheme,
        buf: Vec::new(),
        out: Vec::new(),
        rbuf: Vec::new(),
        scratch: Vec::new(),
        peer_ip: peer.ip().to_string(),
        up: None,
        line_due: false,
        line_timer: Box::pin(tokio::time::sleep(LINE_WAIT)),
        timer: Box::pin(tokio::time::sleep(crate::net::accept::HEADER_TIMEOUT)),
    };
    let hand_over = c.run().await;
    if let Some(up) = c.up.take() {
        // Only a stream that finished its last answer cleanly is still here.
        c.pool(up).await;
    }
    if hand_over {
        // HTTP/2 with prior knowledge (h2c, as gRPC clients speak it to an http:// URL) opens
        // with its preface.
        let h2 = c.buf.starts_with(b"PRI * HTTP/2.0");
        let io = Prefixed::new(std::mem::take(&mut c.buf), c.client, ());
        let io = hyper_util::rt::TokioIo::new(io);
        crate::edge::http::hyper::serve_connection(c.edge, io, peer, scheme, h2).await;
    } else {
        let _ = c.client.shutdown().await;
    }
}

struct Conn<S> {
    edge: Arc<Edge>,
    client: S,
    peer: SocketAddr,
    scheme: &'static str,
    /// Bytes from the client not yet forwarded.
    buf: Vec<u8>,
    /// What goes out next (a request head for the service, an answer's head for the client).
    out: Vec<u8>,
    /// Bytes from the service not yet forwarded.
    rbuf: Vec<u8>,
    scratch: Vec<u8>,
    /// The client's address as the log shows it.
    peer_ip: String,
    /// The stream the last request went through, while it can take another.
    up: Option<Upstream>,
    /// The last request's log line waits in `up` (a relay, which sends lines with its writes)
    /// and goes out when `line_timer` fires, unless the next request's write took it first.
    line_due: bool,
    line_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Set for the first head's deadline; each later head's deadline is later, so the timer
    /// is moved only when it fires early (once per header timeout, not once per request).
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// How long the last request's log line waits on a relay for the next request to carry it:
/// on a busy connection the line costs no write of its own (nor a read and a wakeup on the
/// holder), on an idle one it reaches the session log this much later (where lines wait
/// 10 ms anyway to go out together).
const LINE_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// How long a stream going to the pool may take to send its last log line.
const LINE_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Once `timer` fires, flushes the stream, if there is one (a relay sends the log lines it
/// holds).
async fn flush_after(timer: std::pin::Pin<&mut tokio::time::Sleep>, up: &mut Option<Upstream>) -> std::io::Result<()> {
    timer.await;
    match up {
        Some(up) => up.io.flush().await,
        None => Ok(()),
    }
}

/// Reads more into `buf`, making room first.
async fn read_more<R: AsyncRead + Unpin + ?Sized>(io: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < HEAD_READ / 4 {
        buf.reserve(HEAD_READ);
    }
    io.read_buf(buf).await
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// Forwards requests until the connection ends (false) or one is for hyper (true).
    async fn run(&mut self) -> bool {
        loop {
            // The whole head must come within the header timeout (an idle keep-alive
            // connection, too, gets that long for its next request).
            let deadline = tokio::time::Instant::now() + crate::net::accept::HEADER_TIMEOUT;
            // Bytes of `buf` already parsed (see `worth_parsing`).
            let mut scanned = 0;
            let req = loop {
                let parsed = if worth_parsing(&self.buf, scanned) {
                    prepare(&self.edge, &self.buf, self.peer, &self.peer_ip, self.scheme, &mut self.out)
                } else {
                    Prepared::Partial
                };
                scanned = self.buf.len();
                match parsed {
                    Prepared::Forward(r) => break r,
                    Prepared::Other => return true,
                    Prepared::Partial if self.buf.len() >= MAX_HEAD => return true,
                    Prepared::Partial => loop {
                        tokio::select! {
                            biased;
                            read = read_more(&mut self.client, &mut self.buf) => match read {
                                Ok(n) if n > 0 => break,
                                _ => return false,
                            },
                            // Between requests: the last one's line goes to the tunnel's log soon,
                            // not only with the next request, which may be long in coming.
                            flushed = flush_after(self.line_timer.as_mut(), &mut self.up), if self.line_due => {
                                self.line_due = false;
                                if flushed.is_err() {
                                    self.up = None;
                                }
                            }
                            () = self.timer.as_mut() => {
                                if tokio::time::Instant::now() >= deadline {
                                    return false;
                                }
                                self.timer.as_mut().reset(deadline);
                            }
                        }
                    },
                }
            };
            let started = Instant::now();
            let mut reused = match self.acquire(req.socket_id, false).await {
                Ok(reused) => reused,
                Err(no) => {
                    // No tunnel takes it: the page that says why. (Handed to hyper, the
                    // request would be tried on every tunnel a second time.) A body left
                    // unread ends the connection.
                    let close = req.body > 0 || req.close;
                    self.buf.drain(..req.head_len);
                    if !self.page(no.parts(), close, req.head).await {
                        return false;
                    }
                    continue;
                }
            };
            // The request head for the service, then what of the body came with it.
            let first = (self.buf.len() - req.head_len).min(usize::try_from(req.body).unwrap_or(usize::MAX));
            self.out.extend_from_slice(&self.buf[req.head_len..req.head_len + first]);
            self.buf.drain(..req.head_len + first);
            let body_left = req.body - first as u64;
            let sent = loop {
                match self.send(body_left, req.head).await {
                    Ok(Sent::Failed) if reused && req.retryable() => {
                        // A reused stream ended before answering: once more on a fresh one.
                        reused = false;
                        if self.acquire(req.socket_id, true).await.is_err() {
                            break Sent::Failed;
                        }
                    }
                    Ok(sent) => break sent,
                    Err(ClientGone) => {
                        // Mid-request: the stream is in no state for another one.
                        self.up = None;
                        return false;
                    }
                }
            };
            let head = match sent {
                Sent::Answered(head) => head,
                failed => {
                    let up = self.up.take();
                    let (status, title, why) = match failed {
                        Sent::Silent => (
                            StatusCode::GATEWAY_TIMEOUT,
                            "Gateway Timeout",
                            "The service behind the tunnel took the request and did not answer in time.",
                        ),
                        _ => (
                            StatusCode::BAD_GATEWAY,
                            "Bad Gateway",
                            "The service behind the tunnel is not answering (is it running?).",
                        ),
                    };
                    let close = body_left > 0 || req.close || status == StatusCode::GATEWAY_TIMEOUT;
                    if let Some(up) = up {
                        let line = crate::edge::log::request_line(
                            &self.peer_ip,
                            &req.method,
                            &req.path,
                            status.as_u16(),
                            0,
                            started,
                        );
                        up.log.line(line);
                    }
                    if !self.page((status, title, why), close, req.head).await {
                        return false;
                    }
                    continue;
                }
            };
            let keep_client = !req.close && head.keep_alive;
            crate::metrics::get().response(self.scheme, head.status);
            let answered = self.answer(&head, !keep_client).await;
            let up = self.up.take().expect("acquired above");
            let (bytes, clean) = match answered {
                Ok((bytes, clean)) => (bytes, Some(clean)),
                Err(bytes) => (bytes, None),
            };
            up.log.line(crate::edge::log::request_line(
                &self.peer_ip,
                &req.method,
                &req.path,
                head.status,
                bytes,
                started,
            ));
            match clean {
                None => return false,
                // Nothing more than the answer came: the stream can take the next request.
                Some(true) if head.keep_alive => {
                    self.line_due = matches!(up.log, LogSink::Relay { .. });
                    if self.line_due {
                        self.line_timer.as_mut().reset(tokio::time::Instant::now() + LINE_WAIT);
                    }
                    self.up = Some(up);
                }
                // A dropped relay still sends the lines written to it (`relay::linger`).
                Some(_) => {}
            }
            if !keep_client {
                return false;
            }
        }
    }

    /// Answers with the node's own page (status, title, text), counted; whether the client
    /// connection can take the next request.
    async fn page(&mut self, (status, title, why): (StatusCode, &str, &str), close: bool, head_request: bool) -> bool {
        let page = crate::edge::http::pages::page_bytes(status, title, why, close, head_request);
        crate::metrics::get().response(self.scheme, status.as_u16());
        self.client.write_all(&page).await.is_ok() && self.client.flush().await.is_ok() && !close
    }

    /// Puts a stream that can take another request in the pool, its last log line sent first
    /// (a stream used again sends it with its next write).
    async fn pool(&mut self, mut up: Upstream) {
        let due = std::mem::take(&mut self.line_due);
        if !due || matches!(tokio::time::timeout(LINE_FLUSH, up.io.flush()).await, Ok(Ok(()))) {
            self.edge.streams.keep(up.socket_id, up.io, up.log);
        }
    }

    /// A stream to the socket's service in `self.up`: the one the last request used, an idle
    /// one, or (always, when `fresh`) a new one. Whether it was used before.
    async fn acquire(&mut self, socket_id: Uuid, fresh: bool) -> Result<bool, crate::edge::upstream::NoUpstream> {
        let last = self.up.take();
        if !fresh {
            if let Some(up) = last {
                if up.socket_id == socket_id && up.log.current(&self.edge.node) {
                    self.up = Some(up);
                    return Ok(true);
                }
                if up.socket_id != socket_id {
                    self.pool(up).await;
                }
            }
            if let Some((io, log)) = self.edge.streams.take(&socket_id, &self.edge.node) {
                self.up = Some(Upstream { socket_id, io, log });
                return Ok(true);
            }
        }
        let (io, log) = crate::edge::upstream::open_upstream(&self.edge, &socket_id, self.peer, false).await?;
        self.up = Some(Upstream { socket_id, io, log });
        Ok(false)
    }

    /// Sends the request (`out`, then `body_left` more bytes from the client) and reads the
    /// answer's head, passing 1xx heads on.
    async fn send(&mut self, body_left: u64, head_request: bool) -> Result<Sent, ClientGone> {
        let stall = self.edge.node.config.stall_timeout;
        let up = &mut self.up.as_mut().expect("acquired").io;
        if up.write_all(&self.out).await.is_err() {
            return Ok(Sent::Failed);
        }
        if body_left > 0 {
            match copy_n(&mut self.client, up, body_left, &mut self.scratch, stall).await {
                Ok(()) => {}
                Err(CopyFailed::Read) => return Err(ClientGone),
                Err(CopyFailed::Write) => return Ok(Sent::Failed),
            }
        }
        if up.flush().await.is_err() {
            return Ok(Sent::Failed);
        }
        self.rbuf.clear();
        loop {
            match parse_response(&self.rbuf, head_request) {
                Ok(Some(head)) if head.status >= 100 && head.status < 200 && head.status != 101 => {
                    // 100 Continue, 103 Early Hints: passed on; the answer follows.
                    let informational = self.client.write_all(&self.rbuf[..head.len]).await;
                    if informational.is_err() {
                        return Err(ClientGone);
                    }
                    self.rbuf.drain(..head.len);
                }
                // A switch of protocols nobody asked for is no answer.
                Ok(Some(head)) if head.status == 101 => return Ok(Sent::Failed),
                Ok(Some(head)) => return Ok(Sent::Answered(head)),
                Ok(None) if self.rbuf.len() < MAX_HEAD => {
                    match tokio::time::timeout(stall, read_more(up, &mut self.rbuf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return Ok(Sent::Failed),
                        Err(_) => return Ok(Sent::Silent),
                    }
                }
                _ => return Ok(Sent::Failed),
            }
        }
    }

    /// Passes the answer (head, saying `connection: close` when the client connection ends
    /// after it, and body) to the client: the body's bytes, and whether the stream ended cleanly
    /// where the body did. Err with the bytes sent when either side failed mid-body.
    async fn answer(&mut self, head: &RespHead, close: bool) -> Result<(u64, bool), u64> {
        let up = &mut self.up.as_mut().expect("acquired").io;
        self.out.clear();
        self.out.extend_from_slice(&head.head);
        if close {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        let rest = &self.rbuf[head.len..];
        let (sent, clean) = match head.framing {
            Framing::Empty => {
                if self.client.write_all(&self.out).await.is_err() {
                    return Err(0);
                }
                (0, rest.is_empty())
            }
            Framing::Length(n) => {
                let first = (rest.len() as u64).min(n) as usize;
                self.out.extend_from_slice(&rest[..first]);
                if self.client.write_all(&self.out).await.is_err() {
                    return Err(0);
                }
                match copy_n(
                    up,
                    &mut self.client,
                    n - first as u64,
                    &mut self.scratch,
                    self.edge.node.config.stall_timeout,
                )
                .await
                {
                    Ok(()) => (n, rest.len() == first),
                    Err(_) => return Err(first as u64),
                }
            }
            Framing::Chunked => {
                let mut chunks = Chunks::default();
                let (first, done) = match chunks.feed(rest) {
                    Ok(Some(end)) => (end, true),
                    Ok(None) => (rest.len(), false),
                    Err(()) => return Err(0),
                };
                self.out.extend_from_slice(&rest[..first]);
                let clean_first = first == rest.len();
                if self.client.write_all(&self.out).await.is_err() {
                    return Err(0);
                }
                if done {
                    (first as u64, clean_first)
                } else {
                    let stall = self.edge.node.config.stall_timeout;
                    match copy_rest(up, &mut self.client, Some(&mut chunks), &mut self.scratch, stall).await {
                        Ok((n, clean)) => (first as u64 + n, clean),
                        Err(n) => return Err(first as u64 + n),
                    }
                }
            }
            Framing::Eof => {
                self.out.extend_from_slice(rest);
                let first = rest.len() as u64;
                if self.client.write_all(&self.out).await.is_err() {
                    return Err(0);
                }
                match copy_rest(up, &mut self.client, None, &mut self.scratch, self.edge.node.config.stall_timeout)
                    .await
                {
                    Ok((n, _)) => (first + n, false),
                    Err(n) => return Err(first + n),
                }
            }
        };
        if self.client.flush().await.is_err() {
            return Err(sent);
        }
        Ok((sent, clean))
    }
}

/// Whether `buf` is worth parsing (again): nothing of it was looked at yet, or the bytes past
/// `scanned` complete a line. A head ends with a line, and a bad byte shows when its line
/// is parsed; so junk is refused as it comes, while a head that comes a few bytes at a time is
/// parsed once per line it completes (a head of more than [`MAX_HEADERS`] fields goes to
/// hyper), not once per read.
fn worth_parsing(buf: &[u8], scanned: usize) -> bool {
    !buf.is_empty() && (scanned == 0 || buf.get(scanned..).is_some_and(|new| new.contains(&b'\n')))
}

fn is(name: &str, want: &str) -> bool {
    name.eq_ignore_ascii_case(want)
}

/// Writes a field whose value is `parts`, one after the other.
fn put_field(out: &mut Vec<u8>, name: &[u8], parts: &[&[u8]]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a request head in `buf` and, for a request this path forwards, writes the head for
/// the service into `out`, its fields as [`crate::edge::http::headers`] decides. A request the
/// socket's rules do not let through goes to hyper's path, which answers it.
fn prepare(edge: &Edge, buf: &[u8], peer: SocketAddr, peer_ip: &str, scheme: &str, out: &mut Vec<u8>) -> Prepared {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Prepared::Partial,
        Err(_) => return Prepared::Other,
    };
    let (Some(method), Some(path), Some(1)) = (r.method, r.path, r.version) else { return Prepared::Other };
    if !path.starts_with('/') || method == "CONNECT" {
        return Prepared::Other;
    }
    let (mut host, mut body, mut close, mut authorization) = (None, None, false, None);
    let (mut connection, mut cookies): (Vec<&[u8]>, Vec<&[u8]>) = (Vec::new(), Vec::new());
    for h in r.headers.iter() {
        if is(h.name, "host") {
            if host.is_some() {
                return Prepared::Other;
            }
            host = Some(h.value);
        } else if is(h.name, "content-length") {
            let n =
                std::str::from_utf8(h.value).ok().filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            match (body, n.and_then(|v| v.parse::<u64>().ok())) {
                (None, Some(n)) => body = Some(n),
                _ => return Prepared::Other,
            }
        } else if is(h.name, "transfer-encoding") || is(h.name, "upgrade") || is(h.name, "expect") {
            return Prepared::Other;
        } else if is(h.name, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"upgrade") {
                    return Prepared::Other;
                }
                close |= t.eq_ignore_ascii_case(b"close");
            }
            connection.push(h.value);
        } else if is(h.name, "authorization") && authorization.is_none() {
            authorization = Some(h.value);
        } else if is(h.name, "cookie") {
            cookies.push(h.value);
        }
    }
    let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) else { return Prepared::Other };
    // ACME's HTTP-01 validator: answered by hyper's path.
    if path.starts_with(crate::edge::domains::ACME_PATH) && crate::edge::domains::http01(&edge.node, path).is_some() {
        return Prepared::Other;
    }
    let visitor = crate::edge::policy::Visitor { ip: peer.ip(), authorization, cookies: &cookies };
    let routed = crate::edge::route::with_socket_named(&edge.node, host, |s, key| {
        // The reserved paths of cloud authentication are served by hyper's path, and so is
        // every request to a service that speaks HTTP/2.
        if (s.access.cloud_auth_enabled && path.starts_with("/.mysocket/")) || !s.access.upstream.is_http1() {
            return None;
        }
        crate::edge::policy::passes(edge, key, s, &visitor).map(|email| (s.socket_id, s.access.protected, email))
    });
    let Some(Some((socket_id, protected, email))) = routed else { return Prepared::Other };

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let policy = crate::edge::http::headers::Request::new(connection, protected);
    let mut forwarded_for = Vec::new();
    for h in r.headers.iter() {
        match policy.fate(h.name) {
            Fate::Drop => {}
            Fate::ForwardedFor => forwarded_for.push(h.value),
            Fate::Forward => put_field(out, h.name.as_bytes(), &[h.value]),
        }
    }
    crate::edge::http::headers::edge_fields(&forwarded_for, peer_ip, scheme, Some(host.as_bytes()), |name, parts| {
        put_field(out, name.as_bytes(), parts)
    });
    if let Some(email) = email {
        put_field(out, crate::edge::http::headers::EMAIL.as_bytes(), &[email.as_bytes()]);
    }
    out.extend_from_slice(b"\r\n");
    Prepared::Forward(Req {
        head_len,
        socket_id,
        method: method.to_string(),
        path: path.split('?').next().unwrap_or(path).to_string(),
        body: body.unwrap_or(0),
        close,
        head: method == "HEAD",
    })
}

/// Parses a response head at the start of `buf` (the answer to a HEAD request when
/// `head_request`): None while incomplete, Err for garbage.
fn parse_response(buf: &[u8], head_request: bool) -> Result<Option<RespHead>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(version), Some(status)) = (r.version, r.code) else { return Err(()) };
    let (mut length, mut chunked, mut coded, mut close, mut keep) = (None, false, false, false, false);
    let mut connection_options: Vec<&[u8]> = Vec::new();
    for h in r.headers.iter() {
        if is(h.name, "content-length") {
            let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        } else if is(h.name, "transfer-encoding") {
            coded = true;
            chunked = tokens(h.value).last().is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if is(h.name, "connection") {
            for t in tokens(h.value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep |= t.eq_ignore_ascii_case(b"keep-alive");
                connection_options.push(t);
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else if coded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Eof
        }
    } else {
        length.map_or(Framing::Eof, Framing::Length)
    };
    let keep_alive = !close && (version == 1 || keep) && framing != Framing::Eof;
    let mut head = Vec::with_capacity(len + 16);
    head.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads exactly three digits.
    head.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    head.push(b' ');
    head.extend_from_slice(r.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for h in r.headers.iter() {
        if !is_hop_by_hop(h.name, &connection_options) {
            head.extend_from_slice(h.name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(h.value);
            head.extend_from_slice(b"\r\n");
        }
    }
    Ok(Some(RespHead { len, status, framing, keep_alive, head }))
}

/// The body buffer, allocated on first use.
fn body_buffer(scratch: &mut Vec<u8>) -> &mut [u8] {
    if scratch.len() < BODY_CHUNK {
        scratch.resize(BODY_CHUNK, 0);
    }
    scratch
}

/// Copies exactly `n` bytes (the caller flushes); a side that sends nothing for `stall` counts
/// as failed.
async fn copy_n<R, W>(
    from: &mut R,
    to: &mut W,
    mut n: u64,
    scratch: &mut Vec<u8>,
    stall: Duration,
) -> Result<(), CopyFailed>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let buf = body_buffer(scratch);
    while n > 0 {
        let want = (n.min(buf.len() as u64)) as usize;
        let got = match tokio::time::timeout(stall, from.read(&mut buf[..want])).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return Err(CopyFailed::Read),
            Ok(Ok(k)) => k,
        };
        to.write_all(&buf[..got]).await.map_err(|_| CopyFailed::Write)?;
        n -= got as u64;
    }
    Ok(())
}

/// Copies the rest of a chunked body (with `chunks`) or, without, everything until `from`
/// ends: the bytes copied, and whether nothing followed the chunked body's end. Err with the
/// bytes copied when a side failed, or sent nothing for `stall` (or a chunked body was cut
/// short or malformed).
async fn copy_rest<R, W>(
    from: &mut R,
    to: &mut W,
    mut chunks: Option<&mut Chunks>,
    scratch: &mut Vec<u8>,
    stall: Duration,
) -> Result<(u64, bool), u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let buf = body_buffer(scratch);
    let mut sent = 0u64;
    loop {
        let got = match tokio::time::timeout(stall, from.read(buf)).await {
            Ok(Ok(0)) if chunks.is_none() => return Ok((sent, false)),
            Ok(Ok(0) | Err(_)) | Err(_) => return Err(sent),
            Ok(Ok(k)) => k,
        };
        let (upto, done) = match chunks.as_mut().map(|c| c.feed(&buf[..got])) {
            None | Some(Ok(None)) => (got, false),
            Some(Ok(Some(end))) => (end, true),
            Some(Err(())) => return Err(sent),
        };
        to.write_all(&buf[..upto]).await.map_err(|_| sent)?;
        sent += upto as u64;
        if done {
            return Ok((sent, upto == got));
        }
    }
}

/// Finds the end of a chunked body in the bytes that pass (which go on unchanged).
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: the size so far, whether a digit was seen.
    #[default]
    SizeStart,
    Size(u64),
    /// After the size: extensions, up to the line's end.
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the empty line that ends the body).
    TrailerStart,
    Trailer,
    EndLf,
    Done,
}

impl Chunks {
    /// Takes the next bytes of the body: Some(n) when the body ends after `n` of them.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            self.state = match self.state {
                SizeStart | Size(_) => {
                    let so_far = match self.state {
                        Size(n) => Some(n),
                        _ => None,
                    };
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            Size(so_far.unwrap_or(0).checked_mul(16).and_then(|n| n.checked_add(d as u64)).ok_or(())?)
                        }
                        None => {
                            let n = so_far.ok_or(())?;
                            match b {
                                b';' | b' ' | b'\t' => Extension(n),
                                b'\r' => SizeLf(n),
                                _ => return Err(()),
                            }
                        }
                    }
                }
                Extension(n) => match b {
                    b'\r' => SizeLf(n),
                    b'\n' => return Err(()),
                    _ => Extension(n),
                },
                SizeLf(n) => match b {
                    b'\n' if n == 0 => TrailerStart,
                    b'\n' => Data(n),
                    _ => return Err(()),
                },
                Data(n) => {
                    let take = (n.min((data.len() - i) as u64)) as usize;
                    i += take;
                    self.state = if take as u64 == n { DataCr } else { Data(n - take as u64) };
                    continue;
                }
                DataCr => match b {
                    b'\r' => DataLf,
                    _ => return Err(()),
                },
                DataLf => match b {
                    b'\n' => SizeStart,
                    _ => return Err(()),
                },
                TrailerStart => match b {
                    b'\r' => EndLf,
                    _ => Trailer,
                },
                Trailer => match b {
                    b'\n' => TrailerStart,
                    _ => Trailer,
                },
                EndLf => match b {
                    b'\n' => Done,
                    _ => return Err(()),
                },
                Done => return Ok(Some(i)),
            };
            i += 1;
            if self.state == Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\nNEXT";
        let end = body.len() - 4;
        let mut c = Chunks::default();
        assert_eq!(c.feed(body), Ok(Some(end)));
        // Split at every place: the end is found at the same byte.
        for cut in 0..end {
            let mut c = Chunks::default();
            assert_eq!(c.feed(&body[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(c.feed(&body[cut..]), Ok(Some(end - cut)), "cut at {cut}");
        }
        let mut c = Chunks::default();
        assert_eq!(c.feed(b"0\r\n\r\n"), Ok(Some(5)));
    }

    #[test]
    fn a_malformed_chunked_body_is_refused() {
        for bad in [&b"x\r\n"[..], b"4\r\nWikiXX", b"\r\n", b"fffffffffffffffff0\r\n", b"4;ext\n"] {
            assert_eq!(Chunks::default().feed(bad), Err(()), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_head_is_parsed_at_its_first_bytes_and_at_each_line() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        // Fed a byte at a time: parsed at the first byte and at each LF only.
        let parses: Vec<usize> = (1..=head.len()).filter(|&n| worth_parsing(&head[..n], n - 1)).collect();
        assert_eq!(parses, vec![1, 16, 25, 27]);
        // Junk in the first read is looked at at once, line or not.
        assert!(worth_parsing(b"\x16\x03\x01\x02\x00", 0));
        assert!(httparse::Request::new(&mut [httparse::EMPTY_HEADER; 4]).parse(b"\x16\x03\x01").is_err());
        assert!(!worth_parsing(b"", 0));
        assert!(!worth_parsing(b"GET / HTTP/1.1\r\nHost: a", 16));
    }

    #[test]
    fn response_framing_follows_the_head() {
        let f = |h: &str| parse_response(h.as_bytes(), false).unwrap().unwrap();
        let r = f("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!((r.framing, r.keep_alive), (Framing::Length(12), true));
        let r = f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(r.framing, Framing::Chunked);
        let r = f("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((r.framing, r.keep_alive), (Framing::Eof, false));
        let r = f("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((r.framing, r.keep_alive), (Framing::Empty, true));
        let r = f("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        assert_eq!(r.head, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n");
        let r = f("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert!(!r.keep_alive);
        let r = f("HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
        // Hop-by-hop fields, and those the Connection field names, stay on the tunnel's side.
        let r = f("HTTP/1.0 201 Created\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nx-hop: 1\r\nX-End: 2\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(String::from_utf8_lossy(&r.head), "HTTP/1.1 201 Created\r\nX-End: 2\r\nContent-Length: 3\r\n");
        // ...but not the framing: the client must still find the body's end.
        let r = f("HTTP/1.1 200 OK\r\nConnection: Content-Length, Transfer-Encoding\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(String::from_utf8_lossy(&r.head), "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).unwrap().unwrap();
        assert_eq!(r.framing, Framing::Empty);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_response(b"garbage\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", false).unwrap().is_none());
    }
}
