//! The one forwarding policy of public HTTP: which fields of a client's request the service
//! gets, and the fields the edge sets. Both paths ask it — `h1`'s hand-written one and
//! the hyper path's — so they cannot drift apart; a test sends the same requests through
//! both (and through a relay) and compares what the service receives.

/// Fields that concern one connection only (a public one, or one through a tunnel) and are
/// never passed across (with, in a response, the fields its `Connection` names).
pub const HOP_BY_HOP: [&str; 3] = ["connection", "keep-alive", "proxy-connection"];
/// Fields that stay even when a `Connection` field names them: the target and the framing of
/// a message are not one side's to take away (a body framed by a length the other side never
/// sees would be read as the next request).
pub const NEVER_DROPPED: [&str; 3] = ["host", "content-length", "transfer-encoding"];
/// Request fields the edge sets itself; a client's own are dropped (its `X-Forwarded-For` is
/// kept in front of the edge's instead). `X-Mysocket-Email` carries the email cloud
/// authentication verified, so a visitor's own never reaches a service, whatever the socket.
const SET_BY_THE_EDGE: [&str; 3] = ["x-forwarded-proto", "x-forwarded-host", "x-mysocket-email"];
/// The field that gives the service the visitor's verified email.
pub const EMAIL: &str = "x-mysocket-email";

/// The comma-separated tokens of a field value (`Connection`, `Transfer-Encoding`), trimmed.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(|t| t.trim_ascii())
}

/// Whether `name` is hop-by-hop in a message whose `Connection` fields hold `options`.
pub fn is_hop_by_hop(name: &str, options: &[&[u8]]) -> bool {
    HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n))
        || (options.iter().any(|o| o.eq_ignore_ascii_case(name.as_bytes()))
            && !NEVER_DROPPED.iter().any(|n| name.eq_ignore_ascii_case(n)))
}

/// What becomes of one field of a client's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Passed to the service as it came.
    Forward,
    /// Not passed: hop-by-hop (the connection through the tunnel stays open for the next
    /// request whatever the client said of its own), named by the client's `Connection` (which
    /// may name any field, `X-Forwarded-*` among them: they go before the edge sets its own),
    /// set by the edge, or the credentials of a protected socket (checked at the edge).
    Drop,
    /// `X-Forwarded-For`: what proxies before us said, kept in front of the edge's entry.
    ForwardedFor,
}

/// The policy for one request.
pub struct Request<'a> {
    options: Vec<&'a [u8]>,
    protected: bool,
}

impl<'a> Request<'a> {
    /// `connection`: the values of the request's `Connection` fields; `protected`: the socket
    /// checks Basic credentials at the edge.
    pub fn new(connection: impl IntoIterator<Item = &'a [u8]>, protected: bool) -> Request<'a> {
        Request { options: connection.into_iter().flat_map(tokens).collect(), protected }
    }

    pub fn fate(&self, name: &str) -> Fate {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is_hop_by_hop(name, &self.options)
            || SET_BY_THE_EDGE.iter().any(|n| is(n))
            || (self.protected && is("authorization"))
        {
            Fate::Drop
        } else if is("x-forwarded-for") {
            Fate::ForwardedFor
        } else {
            Fate::Forward
        }
    }
}

/// The fields the edge adds, in order, each handed to `put` as its name and the parts of its
/// value (written one after the other, so the request path builds nothing): `X-Forwarded-For`
/// (the values of the client's own `X-Forwarded-For` fields, in order, then the client as the
/// edge saw it, `peer`), `X-Forwarded-Proto` (the public scheme) and, when the client gave one,
/// `X-Forwarded-Host` (its `Host`).
pub fn edge_fields(
    forwarded_for: &[&[u8]],
    peer: &str,
    scheme: &str,
    host: Option<&[u8]>,
    mut put: impl FnMut(&'static str, &[&[u8]]),
) {
    if forwarded_for.is_empty() {
        put("x-forwarded-for", &[peer.as_bytes()]);
    } else {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(forwarded_for.len() * 2 + 1);
        for v in forwarded_for {
            parts.push(v);
            parts.push(b", ");
        }
        parts.push(peer.as_bytes());
        put("x-forwarded-for", &parts);
    }
    put("x-forwarded-proto", &[scheme.as_bytes()]);
    if let Some(h) = host {
        put("x-forwarded-host", &[h]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_field_is_forwarded_dropped_or_joined() {
        let p = Request::new([&b"close, X-Custom, Host"[..]], false);
        assert_eq!(p.fate("X-Plain"), Fate::Forward);
        assert_eq!(p.fate("x-custom"), Fate::Drop, "named in Connection");
        assert_eq!(p.fate("Host"), Fate::Forward, "the target is never dropped");
        assert_eq!(p.fate("Keep-Alive"), Fate::Drop);
        assert_eq!(p.fate("X-Forwarded-Proto"), Fate::Drop, "set by the edge");
        assert_eq!(p.fate("X-Forwarded-For"), Fate::ForwardedFor);
        assert_eq!(p.fate("Authorization"), Fate::Forward, "an unprotected socket's service checks its own");
        let named = Request::new([&b"X-Forwarded-For"[..]], true);
        assert_eq!(named.fate("x-forwarded-for"), Fate::Drop, "what Connection names goes first");
        assert_eq!(named.fate("authorization"), Fate::Drop, "checked at the edge");
    }

    #[test]
    fn the_edge_adds_the_client_after_earlier_proxies() {
        let collect = |xff: &[&[u8]], host: Option<&[u8]>| {
            let mut f = Vec::new();
            edge_fields(xff, "192.0.2.7", "https", host, |n, parts| f.push((n, parts.concat())));
            f
        };
        assert_eq!(
            collect(&[b"203.0.113.9", b"198.51.100.1"], Some(b"a.b")),
            vec![
                ("x-forwarded-for", b"203.0.113.9, 198.51.100.1, 192.0.2.7".to_vec()),
                ("x-forwarded-proto", b"https".to_vec()),
                ("x-forwarded-host", b"a.b".to_vec()),
            ]
        );
        assert_eq!(
            collect(&[], None),
            vec![("x-forwarded-for", b"192.0.2.7".to_vec()), ("x-forwarded-proto", b"https".to_vec())]
        );
    }
}
