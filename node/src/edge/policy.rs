//! Who may use a socket: decided here, once, for every path a public request can take (the
//! hand-written HTTP/1 path and hyper's). Today: Basic auth on protected sockets.

use base64::Engine;
use hyper::body::Incoming;
use hyper::header;
use hyper::Request;
use mysocket_raft_store::Socket;

use crate::control::NodeRef;

pub fn authorized(node: &NodeRef, s: &Socket, req: &Request<Incoming>) -> bool {
    if !s.protected {
        return true;
    }
    let key = node.read(|r| r.config().map(|c| c.token_key.clone())).unwrap_or_default();
    authorized_by(&key, s, req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()))
}

/// Whether a request with this Authorization value (if any) may use the socket. The password
/// is checked against the socket's keyed hash, in constant time whatever its length.
pub fn authorized_by(key: &str, s: &Socket, authorization: Option<&[u8]>) -> bool {
    if !s.protected {
        return true;
    }
    let Some(v) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else { return false };
    let Some(b64) = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")) else { return false };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
    let Ok(pair) = String::from_utf8(raw) else { return false };
    let Some((u, p)) = pair.split_once(':') else { return false };
    use subtle::ConstantTimeEq;
    let want_u = s.protected_username.as_deref().unwrap_or("");
    let stored = s.protected_password_hash.as_deref().unwrap_or("");
    bool::from(u.as_bytes().ct_eq(want_u.as_bytes())) & crate::control::auth::basic_password_matches(key, stored, p)
}
