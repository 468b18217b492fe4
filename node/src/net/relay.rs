//! Cross-node relay: a public connection taken by one node is carried to the node holding the
//! tunnel over the internal port (the same port as Raft, TLS when the cluster runs it), on a
//! TCP connection of its own — outside gRPC, so a relay moving gigabits costs two plain socket
//! copies and never queues Raft's heartbeats behind its data.
//!
//! The caller opens with a hello: `MAGIC`, the cluster credential and a `RelayOpen` (socket,
//! tunnel, epoch, client address), each behind a big-endian `u16` length. The holder checks the
//! credential, then the epoch against the tunnel it holds (fencing), opens a channel on the
//! holding SSH session, and answers with a code (gRPC's numbering, 0 = go ahead) and a
//! message. From then on the holder sends the service's bytes as they come, and the caller
//! sends frames — a kind byte and a `u32` length, then the payload: data for the service, a
//! line for the tunnel's session log, or (empty) the end of the data, after which only lines
//! come until the connection closes. A relay whose connection the holder logs itself (tcp and
//! tls sockets: `log_connection`) has no lines to carry, so its caller sends the bytes as they
//! come too, in reads as big as the socket gives. Both sides stop reading when their writes back
//! up, so a slow end slows the other instead of filling memory.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::ready;
use std::task::Context;
use std::task::Poll;
use std::task::Waker;
use std::time::Duration;

use bytes::Buf;
use bytes::BytesMut;
use mysocket_api::internal::RelayOpen;
use prost::Message;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::ReadBuf;
use tonic::Code;
use tonic::Status;

use crate::net::peers::Peers;
use crate::net::Io;

/// The first bytes of a relay on the internal port (a gRPC connection starts with
/// `peers::CONTROL_MAGIC` instead).
pub const MAGIC: &[u8; 8] = b"MSRELAY1";

/// Largest data frame: a full SSH packet.
pub(crate) const FRAME: usize = crate::net::SSH_PACKET;

/// A frame's head: its kind and payload length.
pub(crate) const HEAD: usize = 5;

const DATA: u8 = 0;

const LOG: u8 = 1;

/// The caller's end of the data (a write shutdown): the holder ends the service's side and goes
/// on reading log lines until the relay closes.
const END: u8 = 2;

/// Longest log line a frame may carry.
const MAX_LOG: usize = 1024;

/// The hello's parts are small; anything longer is not a relay.
const MAX_HELLO_PART: usize = 4096;

pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The holder's answer when the tunnel's client refused the channel because it could not reach
/// its service (an SSH channel-open failure): definite, unlike a tunnel the holder cannot use.
pub const SERVICE_DOWN: Code = Code::Aborted;

/// Log frames waiting on one relay at most; more are dropped (the log is best effort).
const LOG_BACKLOG: usize = 64 * 1024;

/// How long a relay whose caller is done stays open for the log lines still on their way (the
/// line of the last request is written after its answer, often after the connection to the
/// service, and with it the relay, was dropped).
const LINGER: Duration = Duration::from_secs(5);

/// Keepalive probes on a relay's TCP connection once it has been silent a while, so an idle
/// relay to a peer that died or was cut off ends (in about 11 s) instead of waiting for a
/// request that would never be answered — what the HTTP/2 pings do for the gRPC connections.
/// (No `TCP_USER_TIMEOUT`: a relay that waits on a slow public client must not be cut.)
pub fn keep_alive(tcp: &tokio::net::TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&probes) {
        tracing::debug!(error = %e, "cannot set keepalive on a relay connection");
    }
}

fn io_status(what: &str) -> impl Fn(std::io::Error) -> Status + '_ {
    move |e| Status::unavailable(format!("{what}: {e}"))
}

/// Caller side: opens a relay to the node at `addr` (its internal address) and returns a byte
/// stream to the service, and a handle for sending log lines along it (once the stream is
/// dropped, the relay stays open while a handle lives, up to [`LINGER`], so the last lines
/// arrive; with `log_connection`, the stream is the bare connection and the handle drops every
/// line). The holder's refusal comes back as a `Status` with its code.
pub async fn connect(peers: &Peers, addr: &str, open: RelayOpen) -> Result<(Box<dyn Io>, RelayLog), Status> {
    let unframed = open.log_connection;
    let opened = async {
        let mut io = peers.dial(addr).await.map_err(io_status("cannot reach the holder"))?;
        let mut hello = Vec::with_capacity(64);
        hello.extend_from_slice(MAGIC);
        for part in [peers.secret(), &open.encode_to_vec()[..]] {
            put_part(&mut hello, part);
        }
        io.write_all(&hello).await.map_err(io_status("relay hello"))?;
        io.flush().await.map_err(io_status("relay hello"))?;
        let mut head = [0u8; 3];
        io.read_exact(&mut head).await.map_err(io_status("relay answer"))?;
        let mut message = vec![0u8; usize::from(u16::from_be_bytes([head[1], head[2]]))];
        io.read_exact(&mut message).await.map_err(io_status("relay answer"))?;
        match Code::from_i32(i32::from(head[0])) {
            Code::Ok => Ok(io),
            code => Err(Status::new(code, String::from_utf8_lossy(&message))),
        }
    };
    let io = tokio::time::timeout(OPEN_TIMEOUT, opened)
        .await
        .map_err(|_| Status::deadline_exceeded("relay open timed out"))??;
    if unframed {
        return Ok((io, RelayLog(None)));
    }
    let out = Arc::new(Mutex::new(Outbox::default()));
    Ok((Box::new(RelayIo { io, out: out.clone(), lingering: false, ended: false }), RelayLog(Some(out))))
}

/// Frames on their way to the holder that the socket did not take yet, and the task to wake
/// when a log line is added.
#[derive(Default)]
struct Outbox {
    buf: BytesMut,
    waker: Option<Waker>,
}

fn frame_head(kind: u8, len: usize) -> [u8; HEAD] {
    let [a, b, c, d] = (len as u32).to_be_bytes();
    [kind, a, b, c, d]
}

fn put_head(buf: &mut BytesMut, kind: u8, len: usize) {
    buf.extend_from_slice(&frame_head(kind, len));
}

/// The caller's end of a relay as a byte stream: reads are the service's bytes, each write goes
/// out as one data frame. Log lines join the same stream between frames.
pub struct RelayIo {
    io: Box<dyn Io>,
    out: Arc<Mutex<Outbox>>,
    /// This is the relay's last stage, after its caller dropped it (see [`linger`]).
    lingering: bool,
    /// The end of the data was queued (a shutdown): no more data may follow.
    ended: bool,
}

/// Sends log lines to the holder along a relay.
#[derive(Clone)]
pub struct RelayLog(Option<Arc<Mutex<Outbox>>>);

impl RelayLog {
    /// Queues a line (dropped if the relay is gone or too far behind) and wakes the relay's
    /// task to send it.
    pub fn line(&self, line: String) {
        let Some(out) = &self.0 else { return };
        let mut o = out.lock().expect("relay outbox");
        if o.buf.len() > LOG_BACKLOG + FRAME + HEAD {
            return;
        }
        let mut end = line.len().min(MAX_LOG);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        put_head(&mut o.buf, LOG, end);
        o.buf.extend_from_slice(&line.as_bytes()[..end]);
        if let Some(w) = &o.waker {
            w.wake_by_ref();
        }
    }
}

impl Drop for RelayLog {
    /// The last handle going lets a lingering relay close: it is woken once this one is gone.
    fn drop(&mut self) {
        let Some(out) = self.0.take() else { return };
        let waker = out.lock().expect("relay outbox").waker.clone();
        drop(out);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for RelayIo {
    /// A relay dropped while log lines wait, or while a handle may still write one (the last
    /// request's line comes after its answer), is handed to [`linger`] instead of closing.
    fn drop(&mut self) {
        if self.lingering {
            return;
        }
        let waiting = !self.out.lock().expect("relay outbox").buf.is_empty();
        if !waiting && Arc::strong_count(&self.out) == 1 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let io = std::mem::replace(&mut self.io, Box::new(tokio::io::duplex(1).0));
        runtime.spawn(linger(RelayIo { io, out: self.out.clone(), lingering: true, ended: true }));
    }
}

/// A dropped relay's last stage: sends the log lines queued and those still written through
/// the handles, until no handle is left (or [`LINGER`] is up), then ends the caller's side.
async fn linger(mut relay: RelayIo) {
    let done = std::future::poll_fn(|cx| {
        ready!(relay.poll_drain(cx))?;
        if Arc::strong_count(&relay.out) == 1 {
            Poll::Ready(Ok::<(), std::io::Error>(()))
        } else {
            Poll::Pending
        }
    });
    if let Ok(Ok(())) = tokio::time::timeout(LINGER, done).await {
        let _ = tokio::time::timeout(LINGER, relay.io.shutdown()).await;
    }
}

impl RelayIo {
    /// Writes out what waits in the outbox; Ready once it is empty. Remembers the task, which
    /// log lines wake.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut o = self.out.lock().expect("relay outbox");
        if !o.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            o.waker = Some(cx.waker().clone());
        }
        while !o.buf.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &o.buf)) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => o.buf.advance(n),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for RelayIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        // An idle connection is only read: log lines queued meanwhile go out from here.
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for RelayIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.ended {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        // At most one frame waits: past that, the holder's pace sets ours. Less than that (log
        // lines, most often the last request's) goes out with this frame, in one write.
        if self.out.lock().expect("relay outbox").buf.len() >= FRAME
            && self.poll_drain(cx)?.is_pending()
            && self.out.lock().expect("relay outbox").buf.len() >= FRAME
        {
            return Poll::Pending;
        }
        let this = &mut *self;
        let n = buf.len().min(FRAME);
        let head = frame_head(DATA, n);
        let mut o = this.out.lock().expect("relay outbox");
        if this.io.is_write_vectored() {
            // The common case: what waits, the head and the payload straight to the socket,
            // the payload without a copy.
            let waiting = o.buf.len();
            let parts = [std::io::IoSlice::new(&o.buf), std::io::IoSlice::new(&head), std::io::IoSlice::new(&buf[..n])];
            let sent = match Pin::new(&mut this.io).poll_write_vectored(cx, &parts) {
                Poll::Ready(Ok(sent)) => sent,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => 0,
            };
            // What the socket did not take stays in the outbox, in order.
            o.buf.advance(sent.min(waiting));
            let framed = sent.saturating_sub(waiting);
            if framed < HEAD {
                o.buf.extend_from_slice(&head[framed..]);
                o.buf.extend_from_slice(&buf[..n]);
            } else {
                o.buf.extend_from_slice(&buf[framed - HEAD..n]);
            }
        } else {
            o.buf.extend_from_slice(&head);
            o.buf.extend_from_slice(&buf[..n]);
            drop(o);
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Ends the data with an end frame, not a TCP shutdown: log lines written after it (an
    /// answer's line comes once it is complete) still have a way to the holder. The connection
    /// closes when the stream is dropped, after the last line.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.ended {
            self.ended = true;
            put_head(&mut self.out.lock().expect("relay outbox").buf, END, 0);
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// Reads the caller's frames until it ends its side: data goes to `w` (then shut down), log
/// lines to `log`. Returns the data bytes; an error (a broken connection, a malformed frame)
/// ends the stream like its end would.
pub(crate) async fn frames_in<R, W>(mut r: R, mut w: W, mut log: impl FnMut(String)) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    // A whole frame is read before it is written on: one SSH packet per frame, however the
    // frames arrived in pieces. (A read past the reader's buffer goes straight in here.)
    let mut payload = vec![0u8; FRAME];
    let mut data_ended = false;
    let ended: std::io::Result<()> = async {
        let mut head = [0u8; HEAD];
        loop {
            match r.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            match head[0] {
                DATA if len <= FRAME && !data_ended => {
                    r.read_exact(&mut payload[..len]).await?;
                    w.write_all(&payload[..len]).await?;
                    total += len as u64;
                }
                LOG if len <= MAX_LOG => {
                    let mut raw = vec![0u8; len];
                    r.read_exact(&mut raw).await?;
                    // One line, printable: a peer cannot garble or flood the session log.
                    let mut line: String = String::from_utf8_lossy(&raw).chars().filter(|c| !c.is_control()).collect();
                    line.push_str("\r\n");
                    log(line);
                }
                END if len == 0 && !data_ended => {
                    data_ended = true;
                    w.shutdown().await?;
                }
                kind => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("bad relay frame: kind {kind}, {len} bytes"),
                    ))
                }
            }
        }
    }
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "relay input ended");
    }
    if !data_ended {
        let _ = w.shutdown().await;
    }
    total
}

/// Appends one part of a hello: its length as a big-endian `u16`, then its bytes.
pub(crate) fn put_part(hello: &mut Vec<u8>, part: &[u8]) {
    hello.extend_from_slice(&(part.len() as u16).to_be_bytes());
    hello.extend_from_slice(part);
}

/// Reads one part of a hello.
pub(crate) async fn read_part<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, Status> {
    let bad = |e: std::io::Error| Status::invalid_argument(format!("unreadable relay hello: {e}"));
    let len = usize::from(r.read_u16().await.map_err(bad)?);
    if len > MAX_HELLO_PART {
        return Err(Status::invalid_argument("relay hello too long"));
    }
    let mut part = vec![0u8; len];
    r.read_exact(&mut part).await.map_err(bad)?;
    Ok(part)
}

pub(crate) async fn answer<W: AsyncWrite + Unpin>(w: &mut W, code: Code, message: &str) -> std::io::Result<()> {
    let message = &message.as_bytes()[..message.len().min(1024)];
    let mut a = Vec::with_capacity(3 + message.len());
    a.push(code as u8);
    a.extend_from_slice(&(message.len() as u16).to_be_bytes());
    a.extend_from_slice(message);
    w.write_all(&a).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller's end of a relay over a small in-memory pipe, its log handle, and the pipe's
    /// holder end.
    fn relay_pair() -> (RelayIo, RelayLog, tokio::io::DuplexStream) {
        let (caller, holder) = tokio::io::duplex(4096);
        let out = Arc::new(Mutex::new(Outbox::default()));
        (
            RelayIo { io: Box::new(caller), out: out.clone(), lingering: false, ended: false },
            RelayLog(Some(out)),
            holder,
        )
    }

    /// What a caller writes (data in pieces of every size, log lines in between) reaches the
    /// holder's side intact and in order, through a pipe far smaller than the data.
    #[tokio::test]
    async fn frames_carry_data_and_log_lines_intact() {
        let (relay, log, holder) = relay_pair();
        data_and_lines_arrive_intact(relay, log, holder).await;
    }

    /// The same over TCP with small socket buffers: the caller writes waiting lines, frame head
    /// and payload in one vectored write, which the socket often takes only in part.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_written_with_waiting_lines_in_one_write_arrive_intact() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (caller, holder) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (caller, holder) = (caller.unwrap(), holder.unwrap().0);
        // As the nodes' relay connections are: no Nagle delay.
        caller.set_nodelay(true).unwrap();
        socket2::SockRef::from(&caller).set_send_buffer_size(16 * 1024).unwrap();
        socket2::SockRef::from(&holder).set_recv_buffer_size(16 * 1024).unwrap();
        assert!(caller.is_write_vectored());
        let out = Arc::new(Mutex::new(Outbox::default()));
        let relay = RelayIo { io: Box::new(caller), out: out.clone(), lingering: false, ended: false };
        data_and_lines_arrive_intact(relay, RelayLog(Some(out)), holder).await;
    }

    async fn data_and_lines_arrive_intact<H>(mut relay: RelayIo, log: RelayLog, holder: H)
    where
        H: AsyncRead + Unpin + Send + 'static,
    {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (service_end, mut service) = tokio::io::duplex(1 << 16);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let reader = tokio::spawn(async move {
            frames_in(tokio::io::BufReader::new(holder), service_end, move |l| seen.lock().unwrap().push(l)).await
        });
        let sink = tokio::spawn(async move {
            let mut got = Vec::new();
            service.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut sent = 0;
        let mut logged = 0;
        for (i, size) in [1usize, 5, 100, 70_000, 65_536, 3, 200_000].iter().cycle().enumerate() {
            if sent == data.len() {
                break;
            }
            let end = (sent + size).min(data.len());
            relay.write_all(&data[sent..end]).await.unwrap();
            sent = end;
            if i % 3 == 0 {
                log.line(format!("line {i}\r\n"));
                logged += 1;
            }
        }
        relay.shutdown().await.unwrap();
        // The service's side ends with the data, while the relay is still open for lines.
        assert!(sink.await.unwrap() == data, "the data arrived changed");
        assert!(relay.write_all(b"more").await.is_err(), "data after the end");
        drop((relay, log));
        assert_eq!(reader.await.unwrap(), data.len() as u64);
        let lines = lines.lock().unwrap();
        assert!(lines.iter().all(|l| l.starts_with("line ") && l.ends_with("\r\n")), "{lines:?}");
        let numbers: Vec<usize> = lines.iter().map(|l| l[5..l.len() - 2].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "lines out of order: {numbers:?}");
        assert_eq!(lines.len(), logged, "lines lost");
    }

    /// Relay connections probe a silent peer after 5 s.
    #[tokio::test]
    async fn relay_connections_probe_a_silent_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        keep_alive(&tcp);
        let s = socket2::SockRef::from(&tcp);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(5));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
    }

    /// The last request's line is written after its answer, when the caller may already have
    /// shut the relay down and dropped it (the service closed its connection, and hyper with
    /// it): the line still reaches the holder, the service's side ends at the shutdown, and the
    /// relay ends once the last handle is gone.
    #[tokio::test]
    async fn a_line_written_after_the_relay_was_shut_down_and_dropped_still_arrives() {
        let (mut relay, log, holder) = relay_pair();
        relay.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        relay.shutdown().await.unwrap();
        log.line("queued before the drop\r\n".into());
        drop(relay);
        tokio::task::yield_now().await;
        log.line("written after the drop\r\n".into());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (service_end, mut service) = tokio::io::duplex(1 << 16);
        let reader = tokio::spawn(frames_in(tokio::io::BufReader::new(holder), service_end, move |l| {
            let _ = tx.send(l);
        }));
        for want in ["queued before the drop\r\n", "written after the drop\r\n"] {
            let line = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.expect("a line never left");
            assert_eq!(line.as_deref(), Some(want));
        }
        // The relay stays open while the handle lives, and ends (well before LINGER) once it goes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!reader.is_finished(), "the relay ended while a line could still come");
        drop(log);
        let n = tokio::time::timeout(Duration::from_secs(2), reader).await.expect("the relay did not end").unwrap();
        assert_eq!(n, 18, "the data before the drop");
        let mut got = Vec::new();
        service.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
    }

    /// A log line queued while the relay is idle goes out without any write of data.
    #[tokio::test]
    async fn a_log_line_on_an_idle_relay_goes_out() {
        let (mut relay, log, holder) = relay_pair();
        // The relay's task only reads, as an idle upstream connection does.
        let idle = tokio::spawn(async move {
            let mut b = [0u8; 16];
            let _ = relay.read(&mut b).await;
        });
        tokio::task::yield_now().await;
        log.line("a line".into());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(frames_in(tokio::io::BufReader::new(holder), tokio::io::sink(), move |l| {
            let _ = tx.send(l);
        }));
        let line = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("the line never left");
        assert_eq!(line.as_deref(), Some("a line\r\n"));
        idle.abort();
    }

    /// Malformed frames end the stream; nothing past them reaches the service.
    #[tokio::test]
    async fn a_malformed_frame_ends_the_relay() {
        let mut bytes = vec![DATA, 0, 0, 0, 3, b'a', b'b', b'c'];
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, b'x']); // unknown kind
        bytes.extend_from_slice(&[DATA, 0, 0, 0, 1, b'z']);
        let mut got = Vec::new();
        let n = frames_in(&bytes[..], &mut got, |_| panic!("no log line was sent")).await;
        assert_eq!((n, &got[..]), (3, &b"abc"[..]));
        let huge = [DATA, 0xff, 0xff, 0xff, 0xff];
        let mut got = Vec::new();
        assert_eq!(frames_in(&huge[..], &mut got, |_| {}).await, 0);
    }
}
