//! Cross-node relay: a public connection taken by one node is carried to the node holding the
//! tunnel over the internal port (cluster credential, optional TLS), tagged with the socket,
//! tunnel and epoch. The holder refuses an epoch it does not hold (fencing). Both directions
//! go through bounded buffers, so a slow side slows the other instead of filling memory.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::ready;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use mysocket_api::internal::relay_frame::Payload;
use mysocket_api::internal::RelayFrame;
use mysocket_api::internal::RelayOpen;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::ReadBuf;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;
use tonic::Status;
use uuid::Uuid;

use crate::peers::Peers;
use crate::tunnels::Holding;
use crate::tunnels::Holdings;

/// Largest data frame: a full SSH packet.
const FRAME: usize = crate::ssh::SSH_PACKET;
/// Frames in flight per direction, on top of the transport's own flow control.
const WINDOW: usize = 8;
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

fn data(bytes: Bytes) -> RelayFrame {
    RelayFrame { payload: Some(Payload::Data(bytes)) }
}

/// A line for the holder to write to the tunnel's session log.
pub fn log_frame(line: String) -> RelayFrame {
    RelayFrame { payload: Some(Payload::Log(line)) }
}

/// Caller side: opens a relay to the node at `addr` and returns a byte stream to it, and a
/// handle for sending log lines along it (weak: it does not keep the relay open).
pub async fn connect(
    peers: &Peers,
    addr: &str,
    open: RelayOpen,
) -> Result<(RelayIo, tokio::sync::mpsc::WeakSender<RelayFrame>), Status> {
    let mut client = peers.relay_client(addr)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<RelayFrame>(WINDOW);
    tx.send(RelayFrame { payload: Some(Payload::Open(open)) })
        .await
        .map_err(|_| Status::internal("relay channel closed"))?;
    let resp = tokio::time::timeout(OPEN_TIMEOUT, client.relay(ReceiverStream::new(rx)))
        .await
        .map_err(|_| Status::deadline_exceeded("relay open timed out"))??;
    let log = tx.downgrade();
    Ok((RelayIo { tx: PollSender::new(tx), rx: resp.into_inner(), pending: Bytes::new(), eof: false }, log))
}

/// The caller's end of a relay as a byte stream: each write goes out as a data frame, data
/// frames from the holder are read back. The stream ends (EOF) when the holder's does, or
/// breaks off; shutting down the write side ends the holder's input.
pub struct RelayIo {
    tx: PollSender<RelayFrame>,
    rx: tonic::Streaming<RelayFrame>,
    /// What the last data frame still holds.
    pending: Bytes,
    eof: bool,
}

fn relay_closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the relay is closed")
}

impl AsyncRead for RelayIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.rx.poll_next_unpin(cx)) {
                Some(Ok(RelayFrame { payload: Some(Payload::Data(d)) })) => this.pending = d,
                // Nothing else is meant for the caller.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => this.eof = true,
            }
        }
    }
}

impl AsyncWrite for RelayIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        ready!(self.tx.poll_reserve(cx)).map_err(|_| relay_closed())?;
        let n = buf.len().min(FRAME);
        self.tx.send_item(data(Bytes::copy_from_slice(&buf[..n]))).map_err(|_| relay_closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

/// The holder's line for a whole relayed connection, written when both directions are done.
struct ConnectionLog {
    holding: Holding,
    client: SocketAddr,
    started: Instant,
    /// Bytes from the public client to the service, and back.
    to_service: AtomicU64,
    to_client: AtomicU64,
}

impl Drop for ConnectionLog {
    fn drop(&mut self) {
        crate::proxy::log_line(
            &self.holding,
            crate::proxy::connection_line(
                self.client,
                self.to_service.load(Ordering::Relaxed),
                self.to_client.load(Ordering::Relaxed),
                self.started.elapsed(),
            ),
        );
    }
}

/// Writes the data frames of `inbound` to `w`, then shuts `w` down. Log frames go to the
/// session log of `log_to`.
fn pump_in<W>(mut inbound: tonic::Streaming<RelayFrame>, mut w: W, log_to: Holding, counted: Option<Arc<ConnectionLog>>)
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(Ok(frame)) = inbound.next().await {
            match frame.payload {
                Some(Payload::Data(d)) => {
                    if let Some(c) = &counted {
                        c.to_service.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                    if w.write_all(&d).await.is_err() {
                        break;
                    }
                }
                Some(Payload::Log(line)) => {
                    // One line, bounded: a peer cannot flood the session log.
                    let mut line: String = line.chars().take(512).filter(|c| !c.is_control()).collect();
                    line.push_str("\r\n");
                    crate::proxy::log_line(&log_to, line);
                }
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    });
}

pub type RelayStream = Pin<Box<dyn Stream<Item = Result<RelayFrame, Status>> + Send>>;

/// Holder side: checks the epoch, opens a channel on the holding SSH session, pipes frames.
pub async fn accept(
    holdings: Arc<Holdings>,
    mut inbound: tonic::Streaming<RelayFrame>,
    #[allow(unused_variables)] planted_stale_holder: bool,
) -> Result<RelayStream, Status> {
    let first = inbound.next().await.ok_or_else(|| Status::invalid_argument("empty relay stream"))??;
    let Some(Payload::Open(open)) = first.payload else {
        return Err(Status::invalid_argument("a relay starts with its open frame"));
    };
    let tunnel_id: Uuid = open.tunnel_id.parse().map_err(|_| Status::invalid_argument("bad tunnel id"))?;
    let socket_id: Uuid = open.socket_id.parse().map_err(|_| Status::invalid_argument("bad socket id"))?;
    let holding = holdings.get(&tunnel_id).filter(|h| h.socket_id == socket_id);
    let holding = match holding {
        Some(h) if h.epoch == open.epoch || planted_stale_holder => h,
        Some(h) => {
            return Err(Status::failed_precondition(format!(
                "stale epoch {}: this node holds the tunnel under epoch {}",
                open.epoch, h.epoch
            )))
        }
        None => return Err(Status::failed_precondition("this node does not hold that tunnel")),
    };
    let client: SocketAddr = open.client_addr.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let stream = crate::proxy::open_channel(&holding, client)
        .await
        .map_err(|e| Status::unavailable(format!("the tunnel did not accept the connection: {e}")))?;
    let (r, w) = tokio::io::split(stream);
    let counted = open.log_connection.then(|| {
        Arc::new(ConnectionLog {
            holding: holding.clone(),
            client,
            started: Instant::now(),
            to_service: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        })
    });
    pump_in(inbound, w, holding, counted.clone());
    // What the service sends goes out as it is read, read as gRPC asks for the next frame.
    let out = tokio_util::io::ReaderStream::with_capacity(r, FRAME).map(move |chunk| {
        let chunk = chunk.map_err(|e| Status::unavailable(format!("the tunnel broke off: {e}")))?;
        if let Some(c) = &counted {
            c.to_client.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Ok(data(chunk))
    });
    Ok(Box::pin(out))
}
