//! Node-to-node transport: the accept loop every port uses, connections to peers (gRPC and
//! relays), the Raft network, the internal port's protocol detection and credential, the
//! relay's wire format and the internal port's TLS. It knows nothing of the registry, the
//! tunnels or HTTP: the node hands it the gRPC service and the relay holder to dispatch to.

pub mod accept;
pub mod credential;
pub mod oidc;
pub mod peers;
pub mod port;
pub mod prefixed;
pub mod raft;
pub mod relay;
pub mod tls;

/// A byte stream to the service behind a tunnel, or between nodes: a channel on a local SSH
/// session, a relay, a TCP or TLS connection.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Largest SSH packet either side sends: public bytes move in pieces of this size (one channel
/// message, one packet each) on every path into a tunnel, a relay's data frames included.
pub const SSH_PACKET: usize = 64 * 1024;
