//! Clients to other nodes' internal port: cached gRPC channels per peer address, the cluster
//! credential on every call, optional TLS, and raised message-size limits.
//!
//! Raft and the other control calls have a connection of their own; relayed public connections
//! use a few others. On one HTTP/2 connection a relay moving gigabits would queue heartbeats
//! behind its data, the peer would look dead, and the leader would release its tunnels.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use mysocket_api::internal::internal_client::InternalClient;
use mysocket_api::CLUSTER_CREDENTIAL_HEADER;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Certificate;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;
use tonic::transport::Identity;

use crate::config::InternalTls;

/// Largest internal message: append batches and snapshot chunks stay well below it.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Connections per peer for relayed public connections, used in turn.
const RELAY_CONNECTIONS: usize = 4;
/// HTTP/2 flow-control windows of relay connections: wide enough to keep a fast stream moving
/// across a round trip, bounded so a slow reader holds at most this much.
pub const RELAY_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub const RELAY_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

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

/// The pool of peer channels, keyed by address. tonic channels reconnect by themselves, so an
/// entry lives as long as the address is used.
pub struct Peers {
    /// Keyed by `addr` (control) or `relay<i>@addr`.
    channels: Mutex<HashMap<String, Channel>>,
    credential: Credential,
    tls: Option<ClientTlsConfig>,
    /// Which relay connection the next relay uses.
    next_relay: std::sync::atomic::AtomicUsize,
}

impl Peers {
    pub fn new(secret: &str, tls: Option<&InternalTls>) -> Result<Arc<Peers>, String> {
        let value =
            MetadataValue::try_from(secret).map_err(|_| "the cluster secret must be printable ASCII".to_string())?;
        let tls = tls.map(|t| {
            let mut c = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&t.ca_pem))
                .identity(Identity::from_pem(&t.cert_pem, &t.key_pem));
            if let Some(d) = &t.domain {
                c = c.domain_name(d.clone());
            }
            c
        });
        Ok(Arc::new(Peers {
            channels: Mutex::new(HashMap::new()),
            credential: Credential(value),
            tls,
            next_relay: Default::default(),
        }))
    }

    fn channel(&self, addr: &str, relay: Option<usize>) -> Result<Channel, tonic::Status> {
        let key = match relay {
            None => addr.to_string(),
            Some(i) => format!("relay{i}@{addr}"),
        };
        let mut map = self.channels.lock().expect("peer map lock");
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| tonic::Status::invalid_argument(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if relay.is_some() {
            ep = ep
                .initial_stream_window_size(RELAY_STREAM_WINDOW)
                .initial_connection_window_size(RELAY_CONNECTION_WINDOW);
        }
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone()).map_err(|e| tonic::Status::internal(format!("internal TLS: {e}")))?;
        }
        let ch = ep.connect_lazy();
        map.insert(key, ch.clone());
        Ok(ch)
    }

    fn wrap(&self, ch: Channel) -> PeerClient {
        InternalClient::with_interceptor(ch, self.credential.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// A client for the node at `addr` (its raft address), for Raft and other control calls.
    pub fn client(&self, addr: &str) -> Result<PeerClient, tonic::Status> {
        Ok(self.wrap(self.channel(addr, None)?))
    }

    /// A client for relaying a public connection to the node at `addr`, on a connection that
    /// carries no Raft traffic.
    pub fn relay_client(&self, addr: &str) -> Result<PeerClient, tonic::Status> {
        let i = self.next_relay.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % RELAY_CONNECTIONS;
        Ok(self.wrap(self.channel(addr, Some(i))?))
    }

    /// Forgets a peer's channels, e.g. after it was removed from the cluster.
    pub fn forget(&self, addr: &str) {
        let relay_suffix = format!("@{addr}");
        self.channels.lock().expect("peer map lock").retain(|k, _| k != addr && !k.ends_with(&relay_suffix));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;

    use mysocket_api::internal::Empty;
    use mysocket_api::internal::RelayFrame;

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
                held.push(s); // no HTTP/2 here: the calls fail, the connections stay counted
            }
        });
        let peers = Peers::new("secret", None).unwrap();
        let quick = Duration::from_millis(300);
        for _ in 0..3 {
            let _ = tokio::time::timeout(quick, peers.client(&addr).unwrap().node_status(Empty {})).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "control calls share one connection");
        for _ in 0..RELAY_CONNECTIONS * 2 {
            let frames = futures::stream::iter(Vec::<RelayFrame>::new());
            let _ = tokio::time::timeout(quick, peers.relay_client(&addr).unwrap().relay(frames)).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1 + RELAY_CONNECTIONS,
            "relays take turns on connections of their own, none of them Raft's"
        );
    }
}
