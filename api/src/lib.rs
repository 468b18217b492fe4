//! # mysocket-api
//!
//! The wire contract of mysocket: the REST request and response types (compatible with the
//! original mysocket.io API), the JSON error body, a typed async client used by `mysocketctl`
//! and the test suites, and the protobuf service nodes use to talk to each other.
//!
//! This crate holds no server logic: a type here is something that crosses a socket.

pub mod client;
pub mod coalesce;
pub mod reconnect;
pub mod types;

/// Generated node-to-node gRPC service (see `proto/internal.proto`).
pub mod internal {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mysocket.internal.v1");
}

/// Metadata header that carries the cluster credential on internal RPCs.
pub const CLUSTER_CREDENTIAL_HEADER: &str = "x-mysocket-cluster";

pub use client::ApiClient;
pub use client::ClientError;
pub use types::*;

/// The `user_id` claim of a token, read without verifying it (as the original client does):
/// only the server can verify; the client just needs to know who it is.
pub fn token_user_id(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("user_id")?.as_str().map(str::to_string)
}
