//! Clients to other nodes' internal port: cached gRPC channels per peer address, the cluster
//! credential on every connection and every call, optional TLS, and raised message-size
//! limits; and plain connections (TLS when the cluster runs it) for relayed public connections.
//!
//! Every connection presents the credential before anything else: a gRPC connection opens
//! with `CONTROL_MAGIC` and the credential (then HTTP/2), a relay with its own hello. The
//! internal port keeps no connection that does not.
//!
//! Raft and the other control calls share one connection per peer; each relayed public
//! connection has a connection of its own. On one HTTP/2 connection a relay moving gigabits
//! would queue heartbeats behind its data, the peer would look dead, and the leader would
//! release its tunnels.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use mysocket_api::internal::internal_client::InternalClient;
use mysocket_api::CLUSTER_CREDENTIAL_HEADER;
use tokio::io::AsyncWriteExt;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::config::InternalTls;
use crate::net::Io;

/// Largest internal message: append batches and snapshot chunks stay well below it.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const _: () = assert!(crate::config::MAX_SNAPSHOT_CHUNK <= MAX_MESSAGE / 2, "a snapshot chunk fits a message");
/// HTTP/2 flow-control windows the internal server grants: wide enough to keep a snapshot
/// stream moving across a round trip, bounded so a slow reader holds at most this much.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Time for TLS and the hello once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first bytes of a gRPC connection on the internal port, followed by the cluster
/// credential behind a big-endian `u16` length (a relay starts with `relay::MAGIC`).
pub const CONTROL_MAGIC: &[u8; 8] = b"MSCTRL01";

/// Adds the cluster credential to every outgoing internal call.
#[derive(Clone)]
pub struct Credential(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Credential {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(CLUSTER_CREDENTIAL_HEADER, self.0.clone());
        Ok(req)
    }
}

pub type PeerClient = InternalClient<InterceptedService<Channel, Credential>>;

/// Opens connections to other nodes' internal port: TCP, then TLS when the cluster runs it.
#[derive(Clone)]
struct Dialer {
    secret: Arc<Vec<u8>>,
    /// The cluster's TLS, and the name to expect (else the address's host).
    tls: Option<(tokio_rustls::TlsConnector, Option<String>)>,
}

impl Dialer {
    async fn dial(&self, addr: &str) -> std::io::Result<Box<dyn Io>> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        tcp.set_nodelay(true)?;
        crate::net::relay::keep_alive(&tcp);
        let Some((connector, domain)) = &self.tls else { return Ok(Box::new(tcp)) };
        let host = match domain {
            Some(d) => d.clone(),
            None => addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr).trim_matches(['[', ']']).to_string(),
        };
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(Box::new(tls))
    }

    /// A connection for gRPC: dialled, then the control hello.
    async fn control(&self, addr: String) -> std::io::Result<hyper_util::rt::TokioIo<Box<dyn Io>>> {
        let mut io = self.dial(&addr).await?;
        let mut hello = Vec::with_capacity(CONTROL_MAGIC.len() + 2 + self.secret.len());
        hello.extend_from_slice(CONTROL_MAGIC);
        crate::net::relay::put_part(&mut hello, &self.secret);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            io.write_all(&hello).await?;
            io.flush().await
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "control hello timed out"))??;
        Ok(hyper_util::rt::TokioIo::new(io))
    }
}

/// The pool of peer channels, keyed by address. tonic channels reconnect by themselves, so an
/// entry lives as long as the address is used.
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    credential: Credential,
    dialer: Dialer,
}

impl Peers {
    pub fn new(secret: &str, tls: Option<&InternalTls>) -> Result<Arc<Peers>, String> {
        let value =
            MetadataValue::try_from(secret).map_err(|_| "the cluster secret must be printable ASCII".to_string())?;
        let tls = match tls {
            Some(t) => Some((crate::net::tls::internal_connector(t)?, t.domain.clone())),
            None => None,
        };
        Ok(Arc::new(Peers {
            channels: Mutex::new(HashMap::new()),
            credential: Credential(value),
            dialer: Dialer { secret: Arc::new(secret.as_bytes().to_vec()), tls },
        }))
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        let mut map = self.channels.lock().expect("peer map lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        // TLS, when the cluster runs it, is the dialer's: the hello travels inside it.
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::invalid_argument(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let (dialer, target) = (self.dialer.clone(), addr.to_string());
        let ch = ep.connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let (dialer, target) = (dialer.clone(), target.clone());
            async move { dialer.control(target).await }
        }));
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A client for the node at `addr` (its raft address), for Raft and other control calls.
    pub fn client(&self, addr: &str) -> Result<PeerClient, tonic::Status> {
        Ok(InternalClient::with_interceptor(self.channel(addr)?, self.credential.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// The cluster credential, which relays present in their hello.
    pub fn secret(&self) -> &[u8] {
        &self.dialer.secret
    }

    /// A new connection to the internal port at `addr` for one relay, through TLS when the
    /// cluster runs it.
    pub async fn dial(&self, addr: &str) -> std::io::Result<Box<dyn Io>> {
        self.dialer.dial(addr).await
    }

    /// Forgets a peer's channel, e.g. after it was removed from the cluster.
    pub fn forget(&self, addr: &str) {
        self.channels.lock().expect("peer map lock").remove(addr);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;

    use mysocket_api::internal::Empty;
    use mysocket_api::internal::RelayOpen;

    use super::*;

    /// Raft's calls and relayed public connections must not share a connection: a relay moving
    /// gigabits would queue heartbeats behind its data. Counts the TCP connections a peer sees.
    #[tokio::test]
    async fn relays_and_raft_use_connections_of_their_own() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(s); // nobody answers here: the calls fail, the connections stay counted
            }
        });
        let peers = Peers::new("secret", None).unwrap();
        let quick = Duration::from_millis(300);
        let control = || async {
            let _ = tokio::time::timeout(quick, peers.client(&addr).unwrap().node_status(Empty {})).await;
        };
        for _ in 0..3 {
            control().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "control calls share one connection");
        for _ in 0..4 {
            let _ = tokio::time::timeout(quick, crate::net::relay::connect(&peers, &addr, RelayOpen::default())).await;
            control().await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1 + 4,
            "each relay has a connection of its own, none of them Raft's"
        );
    }
}
