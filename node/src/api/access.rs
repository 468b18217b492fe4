//! A socket's access rules as the API takes them (`POST /socket`, `POST /connect`, `PATCH
//! /socket/{id}`): validated, normalised, and refused with 422 when the edge could not apply
//! them (invariant I9: a socket never looks more restricted than it is).

use axum::http::StatusCode;
use mysocket_api::types::SocketCreate;
use mysocket_api::types::SocketUpdate;
use mysocket_raft_store::Access;
use mysocket_raft_store::ProxyProtocol;
use mysocket_raft_store::SocketType;
use mysocket_raft_store::UpstreamProtocol;

use crate::api::validate;
use crate::api::ApiError;
use crate::api::ApiResult;
use crate::control::NodeRef;

/// Most entries in each list (addresses, domains, networks).
pub const MAX_LIST: usize = 100;
/// Highest rate limit, per second per visitor.
pub const MAX_RATE: u32 = 100_000;

/// The rules asked for, whole: a create's fields, or an update's on top of the socket's.
struct Wanted {
    protected: bool,
    username: Option<String>,
    /// A new password, in clear (hashed below).
    password: Option<String>,
    /// The stored hash, kept when an update gives no new password.
    kept_hash: Option<String>,
    cloud: bool,
    emails: Vec<String>,
    domains: Vec<String>,
    ip_allow: Vec<String>,
    ip_deny: Vec<String>,
    rate_limit: u32,
    /// As given: `v1`, `v2`, or none.
    proxy_protocol: Option<String>,
    /// As given: `http1` or `h2c`.
    upstream: Option<String>,
}

fn unenforceable(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msg.into())
}

/// The rules of a new socket.
pub fn for_create(node: &NodeRef, socket_type: SocketType, req: &SocketCreate) -> ApiResult<Access> {
    let wanted = Wanted {
        protected: req.protected_socket,
        username: req.protected_username.clone(),
        password: req.protected_password.clone(),
        kept_hash: None,
        cloud: req.cloud_authentication_enabled,
        emails: req.cloud_authentication_email_allowed_addressses.clone(),
        domains: req.cloud_authentication_email_allowed_domains.clone(),
        ip_allow: req.ip_allow.clone(),
        ip_deny: req.ip_deny.clone(),
        rate_limit: req.rate_limit,
        proxy_protocol: req.proxy_protocol.clone(),
        upstream: req.upstream_protocol.clone(),
    };
    check(node, socket_type, wanted, "nothing was created")
}

/// A socket's rules after `req`: each field given replaces the socket's, the rest stay.
pub fn for_update(node: &NodeRef, socket_type: SocketType, now: &Access, req: &SocketUpdate) -> ApiResult<Access> {
    let protected = req.protected_socket.unwrap_or(now.protected);
    let wanted = Wanted {
        protected,
        username: req
            .protected_username
            .clone()
            .or_else(|| protected.then(|| now.protected_username.clone()).flatten()),
        password: req.protected_password.clone(),
        kept_hash: if protected { now.protected_password_hash.clone() } else { None },
        cloud: req.cloud_authentication_enabled.unwrap_or(now.cloud_auth_enabled),
        emails: req.cloud_authentication_email_allowed_addressses.clone().unwrap_or_else(|| now.allowed_emails.clone()),
        domains: req.cloud_authentication_email_allowed_domains.clone().unwrap_or_else(|| now.allowed_domains.clone()),
        ip_allow: req.ip_allow.clone().unwrap_or_else(|| now.ip_allow.clone()),
        ip_deny: req.ip_deny.clone().unwrap_or_else(|| now.ip_deny.clone()),
        rate_limit: req.rate_limit.unwrap_or(now.rate_limit),
        proxy_protocol: match &req.proxy_protocol {
            Some(p) => Some(p.clone()),
            None => now.proxy_protocol.map(|p| p.as_str().to_string()),
        },
        upstream: match &req.upstream_protocol {
            Some(u) => Some(u.clone()),
            None => Some(now.upstream.as_str().to_string()),
        },
    };
    check(node, socket_type, wanted, "nothing was changed")
}

fn check(node: &NodeRef, socket_type: SocketType, w: Wanted, nothing: &str) -> ApiResult<Access> {
    let raw = socket_type.needs_port();
    if w.protected && raw {
        return Err(unenforceable(format!(
            "protected_socket (a user name and password) works on http and https sockets only: a tcp or tls \
             socket carries raw bytes, where the edge cannot ask for a password; {nothing}"
        )));
    }
    let (protected_username, protected_password_hash) = basic(node, &w, nothing)?;
    let has_lists = !w.emails.is_empty() || !w.domains.is_empty();
    if w.cloud && raw {
        return Err(unenforceable(format!(
            "cloud authentication (a login with the cluster's identity provider) works on http and https sockets \
             only: a tcp or tls socket carries raw bytes, where the edge cannot send a visitor to log in; {nothing}"
        )));
    }
    if has_lists && !w.cloud {
        return Err(unenforceable(format!(
            "cloud_authentication_email_allowed_addressses and _domains are applied only with \
             cloud_authentication_enabled: true; {nothing}"
        )));
    }
    if w.cloud && node.config.oidc.is_none() {
        return Err(unenforceable(format!(
            "this cluster has no identity provider for cloud authentication (its operator sets --oidc-issuer, \
             --oidc-client-id and --oidc-client-secret-file): the socket would be open to everyone; {nothing}"
        )));
    }
    if w.cloud && !has_lists {
        return Err(unenforceable(format!(
            "cloud authentication needs at least one allowed email address or domain \
             (cloud_authentication_email_allowed_addressses, cloud_authentication_email_allowed_domains); {nothing}"
        )));
    }
    let allowed_emails = list(&w.emails, "allowed email address", |e| {
        validate::email(e).map(|e| e.to_ascii_lowercase()).map_err(|e| e.message)
    })?;
    let allowed_domains = list(&w.domains, "allowed email domain", email_domain)?;
    let ip_allow = list(&w.ip_allow, "ip_allow entry", network)?;
    let ip_deny = list(&w.ip_deny, "ip_deny entry", network)?;
    if w.rate_limit > MAX_RATE {
        return Err(ApiError::bad(format!("rate_limit is at most {MAX_RATE} per second (0: no limit)")));
    }
    let proxy_protocol = match w.proxy_protocol.as_deref().map(|p| p.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("off") => None,
        Some("v1") => Some(ProxyProtocol::V1),
        Some("v2") => Some(ProxyProtocol::V2),
        Some(other) => return Err(ApiError::bad(format!("proxy_protocol {other:?}: v1, v2 or off"))),
    };
    if proxy_protocol.is_some() && !raw {
        return Err(unenforceable(format!(
            "proxy_protocol works on tcp and tls sockets only: an http or https service gets the visitor's \
             address in X-Forwarded-For; {nothing}"
        )));
    }
    let upstream = match w.upstream.as_deref().map(|u| u.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("http1") => UpstreamProtocol::Http1,
        Some("h2c") => UpstreamProtocol::H2c,
        Some(other) => return Err(ApiError::bad(format!("upstream_protocol {other:?}: http1 or h2c"))),
    };
    if !upstream.is_http1() && raw {
        return Err(unenforceable(format!(
            "upstream_protocol h2c works on http and https sockets only: a tcp or tls socket passes the \
             visitor's bytes as they are, HTTP/2 included; {nothing}"
        )));
    }
    Ok(Access {
        protected: w.protected,
        protected_username,
        protected_password_hash,
        cloud_auth_enabled: w.cloud,
        allowed_emails,
        allowed_domains,
        ip_allow,
        ip_deny,
        rate_limit: w.rate_limit,
        proxy_protocol,
        upstream,
    })
}

/// The Basic-auth user name and password hash.
fn basic(node: &NodeRef, w: &Wanted, nothing: &str) -> ApiResult<(Option<String>, Option<String>)> {
    if !w.protected {
        if w.username.as_deref().is_some_and(|u| !u.is_empty()) || w.password.as_deref().is_some_and(|p| !p.is_empty())
        {
            return Err(unenforceable(format!(
                "protected_username and protected_password are applied only with protected_socket: true; {nothing}"
            )));
        }
        return Ok((None, None));
    }
    let u = w.username.as_deref().map(str::trim).unwrap_or("");
    let p = w.password.as_deref().unwrap_or("");
    if u.is_empty() || (p.is_empty() && w.kept_hash.is_none()) {
        return Err(ApiError::bad("a protected socket needs protected_username and protected_password"));
    }
    if u.len() > 100 || p.len() > 100 || u.contains(':') || u.chars().chain(p.chars()).any(char::is_control) {
        return Err(ApiError::bad(
            "protected_username and protected_password: at most 100 printable characters, no ':' in the username",
        ));
    }
    if p.is_empty() {
        return Ok((Some(u.to_string()), w.kept_hash.clone()));
    }
    let key = node
        .read(|r| r.config().map(|c| c.token_key.clone()))
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cluster not bootstrapped yet".into()))?;
    Ok((Some(u.to_string()), Some(crate::control::auth::basic_password_hash(&key, p))))
}

/// Each entry of `items` through `one`, without duplicates, at most [`MAX_LIST`].
fn list(items: &[String], what: &str, one: impl Fn(&str) -> Result<String, String>) -> ApiResult<Vec<String>> {
    if items.len() > MAX_LIST {
        return Err(ApiError::bad(format!("at most {MAX_LIST} of each {what}")));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for i in items {
        let v = one(i.trim()).map_err(|why| ApiError::bad(format!("{what} {i:?}: {why}")))?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

/// An email domain: `example.com` (an `@` before it is dropped), lowercase, exact.
fn email_domain(d: &str) -> Result<String, String> {
    let d = d.strip_prefix('@').unwrap_or(d).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if d.len() > 253 || !d.contains('.') || !d.split('.').all(label_ok) {
        return Err("not a domain name like example.com".into());
    }
    Ok(d)
}

/// A network in CIDR form (`10.0.0.0/8`, `2001:db8::/32`) or one address, canonical: host
/// bits cleared, a single address as /32 or /128.
pub fn network(s: &str) -> Result<String, String> {
    let net = match s.parse::<ipnet::IpNet>() {
        Ok(n) => n.trunc(),
        Err(_) => match s.parse::<std::net::IpAddr>() {
            Ok(a) => ipnet::IpNet::from(a),
            Err(_) => return Err("not an address or a network in CIDR form (10.0.0.0/8, 2001:db8::/32)".into()),
        },
    };
    Ok(net.to_string())
}
