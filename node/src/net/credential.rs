//! The cluster credential: every connection to the internal port presents it in its hello,
//! and every gRPC call in its metadata; compared in constant time.

use mysocket_api::CLUSTER_CREDENTIAL_HEADER;
use subtle::ConstantTimeEq;
use tonic::Request;
use tonic::Status;

/// Whether `given` is the cluster credential `secret`, compared in constant time (gRPC calls
/// and relays alike).
pub fn is_credential(secret: &[u8], given: &[u8]) -> bool {
    given.len() == secret.len() && bool::from(given.ct_eq(secret))
}

/// Server-side check of the cluster credential on every gRPC call.
#[derive(Clone)]
pub struct CheckCredential {
    pub secret: std::sync::Arc<Vec<u8>>,
}

impl tonic::service::Interceptor for CheckCredential {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let given = req.metadata().get(CLUSTER_CREDENTIAL_HEADER).map(|v| v.as_bytes()).unwrap_or(&[]);
        if is_credential(&self.secret, given) {
            return Ok(req);
        }
        tracing::warn!(peer = ?req.remote_addr(), "refused internal call without the cluster credential");
        Err(Status::unauthenticated("missing or wrong cluster credential"))
    }
}
