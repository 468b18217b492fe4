//! The request inspector: the last HTTP requests through this client's tunnels (method,
//! path, status, timing, both heads and the first 64 KiB of both bodies), kept in memory only,
//! shown by a small web page and a JSON API on 127.0.0.1:4040 ([`web`]), each replayable to
//! the local service, edited or not.
//!
//! Requests are read as they pass ([`parse`]): the bytes between the tunnel and the service
//! are copied exactly as without the inspector, and what it cannot follow (an upgrade to
//! WebSocket, garbage) it stops reading. Memory: at most [`MAX_ENTRIES`] entries of at most
//! two heads of 64 KiB and two bodies of [`MAX_BODY`] each — 25 MiB at worst, a few KiB
//! for ordinary requests.

pub mod parse;
pub mod web;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use parse::Event;
use parse::Reader;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// Requests kept; the oldest goes when one more comes.
pub const MAX_ENTRIES: usize = 100;
/// Bytes of each body kept; the rest is counted and marked as cut.
pub const MAX_BODY: usize = 64 * 1024;

/// A request or a response as recorded: its head's fields and its body's first
/// [`MAX_BODY`] bytes (only these bytes are kept; the text forms are made when asked for).
#[derive(Clone, Debug, Default)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    raw: Vec<u8>,
    /// The whole body's size.
    pub body_size: u64,
    /// The body was larger than what is kept.
    pub cut: bool,
}

impl Message {
    fn add(&mut self, bytes: &[u8]) {
        self.body_size += bytes.len() as u64;
        let room = MAX_BODY.saturating_sub(self.raw.len());
        self.raw.extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.cut |= bytes.len() > room;
    }

    /// As the API shows it: with the body (as text, invalid UTF-8 replaced, and exactly, in
    /// base64) or, in the list, without.
    fn view(&self, bodies: bool) -> serde_json::Value {
        use base64::Engine;
        let mut v = serde_json::json!({ "headers": self.headers, "body_size": self.body_size, "cut": self.cut });
        if bodies {
            v["body"] = String::from_utf8_lossy(&self.raw).into();
            v["body_base64"] = base64::engine::general_purpose::STANDARD.encode(&self.raw).into();
        }
        v
    }
}

/// One request and, once it came, its answer.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub id: u64,
    /// The socket's name.
    pub socket: String,
    /// When it came, ms since the epoch.
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    /// `None` while the answer has not come (or never will: the connection ended first).
    pub status: Option<u16>,
    /// From the request's head to the end of the answer.
    pub duration_ms: Option<u64>,
    pub request: Message,
    pub response: Option<Message>,
    /// A replay: the entry it replayed.
    pub replay_of: Option<u64>,
    /// The local service it went to (`host:port`), where a replay goes.
    pub service: String,
}

pub struct Inspector {
    entries: Mutex<VecDeque<Arc<Mutex<Entry>>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Entry {
    /// As the API shows it, with or without the bodies.
    pub fn view(&self, bodies: bool) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "socket": self.socket,
            "at_ms": self.at_ms,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "request": self.request.view(bodies),
            "response": self.response.as_ref().map(|r| r.view(bodies)),
            "replay_of": self.replay_of,
            "service": self.service,
        })
    }
}

impl Inspector {
    pub fn new() -> Arc<Inspector> {
        Arc::new(Inspector { entries: Mutex::default(), next: 1.into() })
    }

    fn add(&self, e: Entry) -> Arc<Mutex<Entry>> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let e = Arc::new(Mutex::new(Entry { id, ..e }));
        let mut all = self.entries.lock().expect("entries");
        all.push_back(e.clone());
        while all.len() > MAX_ENTRIES {
            all.pop_front();
        }
        e
    }

    /// Every entry, newest first, without the bodies (`get` has them).
    pub fn list(&self) -> Vec<serde_json::Value> {
        self.entries.lock().expect("entries").iter().rev().map(|e| e.lock().expect("entry").view(false)).collect()
    }

    pub fn get(&self, id: u64) -> Option<Entry> {
        self.entries.lock().expect("entries").iter().map(|e| e.lock().expect("entry").clone()).find(|e| e.id == id)
    }

    pub fn clear(&self) {
        self.entries.lock().expect("entries").clear();
    }

    /// Copies both ways between the tunnel's channel and the local service until both end,
    /// recording each HTTP request and its answer as they pass: the same copy as without the
    /// inspector (buffers of a whole SSH packet), each side read through a [`Tap`].
    /// `service` is the local service's `host:port`, where a replay goes.
    pub async fn pipe<R, L>(&self, socket: &str, service: &str, remote: &mut R, local: &mut L)
    where
        R: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let conn = Mutex::new(Conn::new());
        let mut from_visitor = Tap { inner: remote, inspector: self, conn: &conn, requests: Some((socket, service)) };
        let mut from_service = Tap { inner: local, inspector: self, conn: &conn, requests: None };
        let _ = tokio::io::copy_bidirectional_with_sizes(&mut from_visitor, &mut from_service, PACKET, PACKET).await;
        let mut c = conn.lock().expect("conn");
        let mut evs = Vec::new();
        c.responses.close(&mut evs);
        c.apply_responses(evs);
    }

    fn requests(&self, conn: &Mutex<Conn>, socket: &str, service: &str, bytes: &[u8]) {
        let mut c = conn.lock().expect("conn");
        if !c.requests.following() {
            return;
        }
        let mut evs = Vec::new();
        c.requests.feed(bytes, &mut evs);
        for e in evs {
            match e {
                Event::Head(h) => {
                    let is_head = h.method.eq_ignore_ascii_case("HEAD");
                    let entry = self.add(Entry {
                        socket: socket.to_string(),
                        at_ms: now_ms(),
                        method: h.method.clone(),
                        path: h.target.clone(),
                        request: Message { headers: h.headers, ..Message::default() },
                        service: service.to_string(),
                        ..Entry::default()
                    });
                    c.responses.expect_head.push_back(is_head);
                    c.current = Some(entry);
                }
                Event::Body(b) => {
                    if let Some(e) = &c.current {
                        e.lock().expect("entry").request.add(&b);
                    }
                }
                Event::End => {
                    if let Some(e) = c.current.take() {
                        c.open.push_back((e, Instant::now()));
                    }
                }
            }
        }
    }

    fn responses(&self, conn: &Mutex<Conn>, bytes: &[u8]) {
        let mut c = conn.lock().expect("conn");
        if !c.responses.following() {
            return;
        }
        let mut evs = Vec::new();
        c.responses.feed(bytes, &mut evs);
        c.apply_responses(evs);
        // An upgrade's answer ends what can be followed both ways.
        if !c.responses.following() {
            c.requests.stop();
        }
    }
}

/// Bytes copied at once, as without the inspector: a whole SSH packet.
const PACKET: usize = 64 * 1024;

/// One side of an inspected connection: what is read from it is also given to the
/// inspector (requests from the visitor's side, answers from the service's); writes pass
/// through untouched.
struct Tap<'a, S> {
    inner: &'a mut S,
    inspector: &'a Inspector,
    conn: &'a Mutex<Conn>,
    /// The visitor's side: the socket's name and the service's address, for new entries.
    requests: Option<(&'a str, &'a str)>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tap<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            match self.requests {
                Some((socket, service)) => self.inspector.requests(self.conn, socket, service, read),
                None => self.inspector.responses(self.conn, read),
            }
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tap<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// One connection's requests waiting for their answers, in order.
struct Conn {
    open: VecDeque<(Arc<Mutex<Entry>>, Instant)>,
    /// The request being read.
    current: Option<Arc<Mutex<Entry>>>,
    requests: Reader,
    responses: Reader,
}

impl Conn {
    fn new() -> Conn {
        Conn { open: VecDeque::new(), current: None, requests: Reader::requests(), responses: Reader::responses() }
    }

    fn apply_responses(&mut self, evs: Vec<Event>) {
        for e in evs {
            let Some((entry, started)) = self.open.front() else { return };
            let mut entry = entry.lock().expect("entry");
            match e {
                Event::Head(h) => {
                    entry.status = Some(h.status);
                    entry.response = Some(Message { headers: h.headers, ..Message::default() });
                }
                Event::Body(b) => {
                    if let Some(r) = entry.response.as_mut() {
                        r.add(&b);
                    }
                }
                Event::End => {
                    entry.duration_ms = Some(started.elapsed().as_millis() as u64);
                    drop(entry);
                    self.open.pop_front();
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A replay's changes to the recorded request; what is absent stays as recorded.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    pub method: Option<String>,
    pub path: Option<String>,
    /// Replaces every header (Content-Length and the connection's own are set anew).
    pub headers: Option<Vec<(String, String)>>,
    /// Replaces the body (text).
    pub body: Option<String>,
}

impl Inspector {
    /// Sends entry `id`'s request again to the local service it went to, changed by `edit`,
    /// and records it (and its answer) as a new entry.
    pub async fn replay(&self, id: u64, edit: Edit) -> Result<Entry, String> {
        let orig = self.get(id).ok_or_else(|| format!("no request {id} (only the last {MAX_ENTRIES} are kept)"))?;
        if orig.service.is_empty() {
            return Err("this request's service is not known".into());
        }
        if orig.request.cut && edit.body.is_none() {
            return Err(format!(
                "the request's body was larger than {MAX_BODY} bytes and was not kept whole; give a body"
            ));
        }
        let method = edit.method.unwrap_or(orig.method.clone());
        let path = edit.path.unwrap_or(orig.path.clone());
        let valid_token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !valid_token(&method) || !path.starts_with('/') || !valid_token(&path) {
            return Err("method and path: visible ASCII, the path starting with /".into());
        }
        let headers = edit.headers.unwrap_or(orig.request.headers.clone());
        let body = match edit.body {
            Some(b) => b.into_bytes(),
            None => orig.request.raw.clone(),
        };
        let mut req = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
        for (n, v) in &headers {
            let own = ["content-length", "transfer-encoding", "connection", "keep-alive"];
            if own.iter().any(|o| n.eq_ignore_ascii_case(o)) {
                continue;
            }
            if !valid_token(n) || n.contains(':') || v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(format!("header {n:?}: not a valid field"));
            }
            req.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        req.extend_from_slice(format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
        req.extend_from_slice(&body);
        let mut s =
            tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(&orig.service))
                .await
                .map_err(|_| format!("the local service at {} did not answer in time", orig.service))?
                .map_err(|e| format!("the local service at {} is down: {e}", orig.service))?;
        let conn = Mutex::new(Conn::new());
        self.requests(&conn, &orig.socket, &orig.service, &req);
        let entry =
            conn.lock().expect("conn").open.back().map(|(e, _)| e.clone()).ok_or("the request did not parse")?;
        entry.lock().expect("entry").replay_of = Some(id);
        s.write_all(&req).await.map_err(|e| format!("sending to the local service: {e}"))?;
        let mut buf = vec![0u8; 64 * 1024];
        let read = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        self.responses(&conn, &buf[..n]);
                        if conn.lock().expect("conn").open.is_empty() {
                            break;
                        }
                    }
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), read).await;
        {
            let mut c = conn.lock().expect("conn");
            let mut evs = Vec::new();
            c.responses.close(&mut evs);
            c.apply_responses(evs);
        }
        let e = entry.lock().expect("entry").clone();
        Ok(e)
    }
}
