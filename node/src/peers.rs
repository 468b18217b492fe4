//! Clients to other nodes' internal port: one cached gRPC channel per peer address, the cluster
//! credential on every call, optional TLS, and raised message-size limits.

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
    channels: Mutex<HashMap<String, Channel>>,
    credential: Credential,
    tls: Option<ClientTlsConfig>,
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
        Ok(Arc::new(Peers { channels: Mutex::new(HashMap::new()), credential: Credential(value), tls }))
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        let mut map = self.channels.lock().expect("peer map lock");
        if let Some(c) = map.get(addr) {
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
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone()).map_err(|e| tonic::Status::internal(format!("internal TLS: {e}")))?;
        }
        let ch = ep.connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A client for the node at `addr` (its raft address).
    pub fn client(&self, addr: &str) -> Result<PeerClient, tonic::Status> {
        let ch = self.channel(addr)?;
        Ok(InternalClient::with_interceptor(ch, self.credential.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// Forgets a peer's channel, e.g. after it was removed from the cluster.
    pub fn forget(&self, addr: &str) {
        self.channels.lock().expect("peer map lock").remove(addr);
    }
}
