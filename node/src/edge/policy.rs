//! Who may use a socket: decided here, once, for every path a public connection can take (the
//! hand-written HTTP/1 path, hyper's HTTP/1 and HTTP/2, WebSocket upgrades, tcp and tls
//! sockets), on the node where it arrives, before any relay. The rules are the socket's
//! [`Access`], applied in this order: the visitor's address against the allow and deny lists,
//! the rate limit per visitor address, Basic auth, cloud authentication (a session from the
//! cluster's OpenID Connect provider, [`crate::edge::cloud`], whose email must be allowed).
//! The registry's replica is read for each request, so a change of the rules applies on every
//! node as soon as it has applied the entry, with no tunnel reconnected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::RwLock;

use base64::Engine;
use governor::clock::Clock;
use governor::clock::DefaultClock;
use governor::DefaultKeyedRateLimiter;
use governor::Quota;
use governor::RateLimiter;
use mysocket_raft_store::Access;
use mysocket_raft_store::Socket;
use uuid::Uuid;

use crate::edge::Edge;

/// What the edge knows of a visitor's request or connection.
pub struct Visitor<'a> {
    pub ip: IpAddr,
    /// The request's Authorization field (HTTP only).
    pub authorization: Option<&'a [u8]>,
    /// The request's Cookie fields (HTTP only).
    pub cookies: &'a [&'a [u8]],
}

/// Why a visitor does not get through, and so what the edge answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The address is denied or not allowed: 403, or a closed connection.
    Address,
    /// Past the socket's rate for this address: 429 with `Retry-After`, or a closed connection.
    RateLimited { retry_after: u64 },
    /// Basic credentials missing or wrong: 401.
    Basic,
    /// No valid session: off to the identity provider.
    SignIn,
    /// Signed in with an email the socket does not allow: 403 naming it.
    NotAllowed { email: String },
    /// Cloud authentication on a node without a provider configured: 503.
    NoProvider,
}

impl Refusal {
    /// The `reason` label of `mysocket_visitors_refused`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Address => "address",
            Refusal::RateLimited { .. } => "rate_limit",
            Refusal::Basic => "basic_auth",
            Refusal::SignIn | Refusal::NotAllowed { .. } => "cloud_auth",
            Refusal::NoProvider => "no_provider",
        }
    }
}

/// A visitor that gets through, with the verified email cloud authentication found (the
/// service gets it as `X-Mysocket-Email`).
pub type Passed = Option<String>;

/// Every rule, in order; the rate limit counts the request.
pub fn decide(edge: &Edge, key: &str, s: &Socket, v: &Visitor) -> Result<Passed, Refusal> {
    address(&s.access, v.ip)?;
    edge.visits.count(s, v.ip)?;
    basic(key, s, v.authorization)?;
    cloud(edge, key, s, v)
}

/// [`decide`] for the hand-written HTTP/1 path, which forwards only what passes and leaves
/// every refusal to hyper's path (which decides again and answers): the rate limit comes last,
/// so a request refused for another reason is counted once, by hyper's path.
pub fn passes(edge: &Edge, key: &str, s: &Socket, v: &Visitor) -> Option<Passed> {
    address(&s.access, v.ip).ok()?;
    basic(key, s, v.authorization).ok()?;
    let email = cloud(edge, key, s, v).ok()?;
    edge.visits.count(s, v.ip).ok()?;
    Some(email)
}

/// A new connection to a tcp or tls socket: the address lists and the rate limit.
pub fn admit_connection(edge: &Edge, s: &Socket, ip: IpAddr) -> Result<(), Refusal> {
    address(&s.access, ip)?;
    edge.visits.count(s, ip)
}

/// The visitor's address against the socket's lists: denied if any deny network holds it, or
/// if there are allow networks and none holds it. An IPv4 address mapped into IPv6 is taken as
/// the IPv4 address.
pub fn address(a: &Access, ip: IpAddr) -> Result<(), Refusal> {
    if a.ip_allow.is_empty() && a.ip_deny.is_empty() {
        return Ok(());
    }
    let ip = ip.to_canonical();
    let within = |list: &[String]| list.iter().any(|n| n.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&ip)));
    if within(&a.ip_deny) || (!a.ip_allow.is_empty() && !within(&a.ip_allow)) {
        return Err(Refusal::Address);
    }
    Ok(())
}

fn basic(key: &str, s: &Socket, authorization: Option<&[u8]>) -> Result<(), Refusal> {
    if authorized_by(key, s, authorization) {
        Ok(())
    } else {
        Err(Refusal::Basic)
    }
}

fn cloud(edge: &Edge, key: &str, s: &Socket, v: &Visitor) -> Result<Passed, Refusal> {
    if !s.access.cloud_auth_enabled {
        return Ok(None);
    }
    if edge.cloud.is_none() {
        return Err(Refusal::NoProvider);
    }
    let email = crate::edge::cloud::session_email(key, v.cookies, &s.socket_id).ok_or(Refusal::SignIn)?;
    if email_allowed(&s.access, &email) {
        Ok(Some(email))
    } else {
        Err(Refusal::NotAllowed { email })
    }
}

/// Whether `email` is one of the socket's allowed addresses or in one of its allowed domains:
/// case-insensitive, the domain compared whole (`a@evil-example.com` and
/// `a@example.com.evil.net` are not in `example.com`).
pub fn email_allowed(a: &Access, email: &str) -> bool {
    let email = email.to_ascii_lowercase();
    let Some((local, domain)) = email.rsplit_once('@') else { return false };
    !local.is_empty() && (a.allowed_emails.contains(&email) || a.allowed_domains.iter().any(|d| d == domain))
}

/// Whether a request with this Authorization value (if any) may use the socket. The password
/// is checked against the socket's keyed hash, in constant time whatever its length.
pub fn authorized_by(key: &str, s: &Socket, authorization: Option<&[u8]>) -> bool {
    if !s.access.protected {
        return true;
    }
    let Some(v) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else { return false };
    let Some(b64) = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")) else { return false };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
    let Ok(pair) = String::from_utf8(raw) else { return false };
    let Some((u, p)) = pair.split_once(':') else { return false };
    use subtle::ConstantTimeEq;
    let want_u = s.access.protected_username.as_deref().unwrap_or("");
    let stored = s.access.protected_password_hash.as_deref().unwrap_or("");
    bool::from(u.as_bytes().ct_eq(want_u.as_bytes())) & crate::control::auth::basic_password_matches(key, stored, p)
}

/// The bucket a visitor counts against: its IPv4 address, or its IPv6 /64 (one host's or one
/// customer's network, where every address of the /64 is the visitor's to pick).
pub(crate) fn visitor_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// One socket's token buckets, one per visitor address.
type PerVisitor = DefaultKeyedRateLimiter<IpAddr>;

/// The rate limits per socket and visitor address: a token bucket (governor's GCRA) per
/// address, in one keyed limiter per socket with a limit, made when the socket's first
/// visitor comes and made again when its rate changes.
#[derive(Default)]
pub struct Visits {
    by_socket: RwLock<HashMap<Uuid, (u32, Arc<PerVisitor>)>>,
}

impl Visits {
    /// Counts a request or connection of `ip` to `s`, or refuses it with the seconds until the
    /// next would pass.
    pub fn count(&self, s: &Socket, ip: IpAddr) -> Result<(), Refusal> {
        let rate = s.access.rate_limit;
        let Some(n) = NonZeroU32::new(rate) else { return Ok(()) };
        let known = self.by_socket.read().expect("not poisoned").get(&s.socket_id).cloned();
        let limiter = match known {
            Some((r, l)) if r == rate => l,
            _ => {
                let quota = Quota::per_second(n).allow_burst(n);
                let l = Arc::new(RateLimiter::keyed(quota));
                self.by_socket.write().expect("not poisoned").insert(s.socket_id, (rate, l.clone()));
                l
            }
        };
        limiter.check_key(&visitor_key(ip)).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Refusal::RateLimited { retry_after: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1) }
        })
    }

    /// Forgets the addresses whose bucket is full again, and the sockets gone or without a
    /// limit (`rate_of` gives a socket's current one), so memory follows the last second's
    /// visitors.
    pub fn prune(&self, rate_of: impl Fn(&Uuid) -> u32) {
        let mut map = self.by_socket.write().expect("not poisoned");
        map.retain(|id, (rate, _)| rate_of(id) == *rate);
        for (_, l) in map.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(allow: &[&str], deny: &[&str]) -> Access {
        Access {
            ip_allow: allow.iter().map(|s| s.to_string()).collect(),
            ip_deny: deny.iter().map(|s| s.to_string()).collect(),
            ..Access::default()
        }
    }

    #[test]
    fn addresses_are_checked_against_both_lists_v4_and_v6() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(address(&access(&[], &[]), ip("203.0.113.9")).is_ok());
        let a = access(&["10.0.0.0/8", "2001:db8::/32"], &["10.9.0.0/16"]);
        assert!(address(&a, ip("10.1.2.3")).is_ok());
        assert!(address(&a, ip("::ffff:10.1.2.3")).is_ok(), "an IPv4-mapped address is its IPv4 address");
        assert_eq!(address(&a, ip("10.9.1.1")), Err(Refusal::Address), "deny wins over allow");
        assert_eq!(address(&a, ip("11.0.0.1")), Err(Refusal::Address));
        assert!(address(&a, ip("2001:db8:1::5")).is_ok());
        assert_eq!(address(&a, ip("2001:db9::5")), Err(Refusal::Address));
        let d = access(&[], &["127.0.0.7/32"]);
        assert_eq!(address(&d, ip("127.0.0.7")), Err(Refusal::Address));
        assert!(address(&d, ip("127.0.0.8")).is_ok());
    }

    #[test]
    fn a_rate_counts_per_ipv4_address_and_per_ipv6_64() {
        let s = Socket {
            socket_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            name: "t".into(),
            dnsname: "t.example".into(),
            socket_type: mysocket_raft_store::SocketType::Tcp,
            port: Some(20000),
            access: Access { rate_limit: 2, ..Access::default() },
            created_at_ms: 0,
            custom_domain: None,
        };
        let v = Visits::default();
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        for a in ["10.0.0.1", "10.0.0.1", "2001:db8::1", "2001:db8::2", "10.0.0.2"] {
            assert_eq!(v.count(&s, ip(a)), Ok(()), "{a}");
        }
        assert!(matches!(v.count(&s, ip("10.0.0.1")), Err(Refusal::RateLimited { retry_after: 1 })));
        assert!(v.count(&s, ip("2001:db8::ffff")).is_err(), "the same /64");
        assert_eq!(v.count(&s, ip("2001:db8:0:1::1")), Ok(()), "another /64");
        assert!(v.count(&s, ip("::ffff:10.0.0.1")).is_err(), "an IPv4-mapped address is its IPv4 address");
    }

    #[test]
    fn allowed_emails_match_whole_addresses_and_whole_domains() {
        let a = Access {
            allowed_emails: vec!["ada@example.org".into()],
            allowed_domains: vec!["example.com".into()],
            ..Access::default()
        };
        for ok in ["ada@example.org", "ADA@Example.ORG", "bob@example.com", "x@EXAMPLE.COM"] {
            assert!(email_allowed(&a, ok), "{ok}");
        }
        for refused in [
            "eve@example.org",
            "bob@sub.example.com",
            "bob@example.com.evil.net",
            "bob@evilexample.com",
            "example.com",
            "@example.com",
            "ada@example.org.evil.net",
        ] {
            assert!(!email_allowed(&a, refused), "{refused}");
        }
    }
}
