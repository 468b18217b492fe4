//! The internal port: after TLS, when the cluster runs it, a connection's first bytes tell a
//! relay's hello (`relay::MAGIC`) from a control connection's (`peers::CONTROL_MAGIC`, then
//! gRPC). Both carry the cluster credential, checked before the connection is kept; anything
//! else is closed at once. Relays go to the handler the node gives; gRPC connections to the
//! gRPC server's incoming stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::transport::server::TcpConnectInfo;

use crate::net::credential::is_credential;
use crate::net::prefixed::Prefixed;
use crate::net::Io;

/// Most connections the internal port holds at once (relays and gRPC).
const MAX_CONNECTIONS: usize = 20_000;

/// Time a new connection gets for its TLS handshake and first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection for the gRPC server: the bytes read to tell it from a relay, then the rest.
pub type GrpcConn = Prefixed<Box<dyn Io>, GrpcInfo>;

/// What the gRPC server learns of a connection, and the handle that keeps it counted against
/// the port's cap: the accept loop's task waits until the server drops the connection.
pub struct GrpcInfo {
    tcp: TcpConnectInfo,
    _open: tokio::sync::oneshot::Sender<()>,
}

impl Connected for GrpcConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.tcp.clone()
    }
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the stream.
async fn read_up_to(io: &mut Box<dyn Io>, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match io.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Serves a relay once its first bytes (`relay::MAGIC`) were read: the node's holder side,
/// which checks the hello and carries the connection to a tunnel.
pub type RelayHandler = Arc<dyn Fn(Box<dyn Io>, SocketAddr) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Accepts on the internal port until `stop`: relays go to `relay`, gRPC connections to `grpc`
/// (the gRPC server's incoming stream).
pub async fn serve_port(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    grpc: tokio::sync::mpsc::Sender<std::io::Result<GrpcConn>>,
    relay: RelayHandler,
    secret: Arc<Vec<u8>>,
    stop: CancellationToken,
) {
    crate::net::accept::serve(
        listener,
        MAX_CONNECTIONS,
        // Peers are few, and each opens a connection per relayed public connection.
        MAX_CONNECTIONS,
        crate::metrics::Listener::Internal,
        stop,
        |tcp, peer: SocketAddr| {
            let (tls, grpc, relay, secret) = (tls.clone(), grpc.clone(), relay.clone(), secret.clone());
            async move {
                let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(peer) };
                crate::net::relay::keep_alive(&tcp);
                let start = async {
                    let mut io: Box<dyn Io> = match &tls {
                        Some(acceptor) => Box::new(acceptor.accept(tcp).await?),
                        None => Box::new(tcp),
                    };
                    let mut first = vec![0u8; crate::net::relay::MAGIC.len()];
                    let n = read_up_to(&mut io, &mut first).await?;
                    first.truncate(n);
                    Ok::<_, std::io::Error>((io, first))
                };
                let (io, first) = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, start).await {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "internal connection failed at its start");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "internal connection sent nothing in time");
                        return;
                    }
                };
                if first == crate::net::relay::MAGIC {
                    relay(io, peer).await;
                    return;
                }
                if first != crate::net::peers::CONTROL_MAGIC {
                    crate::metrics::get().refused(crate::metrics::Refusal::Unauthenticated);
                    tracing::info!(%peer, "closed an internal connection that is neither a relay nor a control connection");
                    return;
                }
                let mut io = io;
                let given = tokio::time::timeout(FIRST_BYTES_TIMEOUT, crate::net::relay::read_part(&mut io)).await;
                if !matches!(&given, Ok(Ok(g)) if is_credential(&secret, g)) {
                    crate::metrics::get().refused(crate::metrics::Refusal::Unauthenticated);
                    tracing::warn!(%peer, "refused an internal connection without the cluster credential");
                    return;
                }
                // gRPC's to serve. It holds its place in the port's count (and its address's)
                // for as long as the server keeps it.
                let (open, closed) = tokio::sync::oneshot::channel::<()>();
                let conn = GrpcConn::new(Vec::new(), io, GrpcInfo { tcp: info, _open: open });
                if grpc.send(Ok(conn)).await.is_ok() {
                    let _ = closed.await;
                }
            }
        },
    )
    .await
}
