//! Which socket a public request is for: one Host (or authority), looked up by name in the
//! local replica.

use hyper::body::Incoming;
use hyper::header;
use hyper::Request;
use mysocket_raft_store::Socket;
use mysocket_raft_store::SocketType;

use crate::control::NodeRef;

/// The socket a request is for: the target's authority (HTTP/2's :authority, or an HTTP/1
/// absolute-form target, which RFC 9112 §3.2.2 puts before Host), else Host; case-insensitive,
/// port stripped.
pub fn socket_for(node: &NodeRef, req: &Request<Incoming>) -> Option<Socket> {
    let host = req.uri().host().or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))?;
    socket_named(node, host)
}

/// RFC 9112 §3.2: a request with more than one Host field, or an HTTP/1.1 request with none
/// and no authority in its target, is refused (400) — the edge and the service could each
/// take a different one for the name.
pub fn one_host(req: &Request<Incoming>) -> Result<(), &'static str> {
    match req.headers().get_all(header::HOST).iter().count() {
        0 if req.version() == hyper::Version::HTTP_11 && req.uri().authority().is_none() => {
            Err("The request has no Host field naming the socket.")
        }
        0 | 1 => Ok(()),
        _ => Err("The request has more than one Host field."),
    }
}

/// The http/https socket named by a Host value: case-insensitive, port stripped.
pub fn socket_named(node: &NodeRef, host: &str) -> Option<Socket> {
    with_socket_named(node, host, |s, _| s.clone())
}

/// `f` of the http/https socket named by a Host value, looked at in the local replica.
/// `f` also gets the cluster's token key, which keys the hashes of Basic-auth passwords.
pub fn with_socket_named<T>(node: &NodeRef, host: &str, f: impl FnOnce(&Socket, &str) -> T) -> Option<T> {
    // The registry compares names case-insensitively.
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).trim_end_matches('.');
    node.read(|r| {
        let key = r.config().map(|c| c.token_key.as_str()).unwrap_or("");
        r.socket_by_host(name)
            .filter(|s| matches!(s.socket_type, SocketType::Http | SocketType::Https))
            .map(|s| f(s, key))
    })
}
