//! Custom domains: the leader looks, every few seconds, for the proof that the owner of a
//! socket's custom domain controls it — a TXT record `_mysocket-challenge.<domain>` holding the
//! socket's token, or a CNAME from the domain to the socket's name — through the operator's
//! resolver (`--dns-resolver`) or the system's, and marks the domain verified in Raft. Only
//! then does it route (by Host and SNI, on every node) and get a certificate. Also the
//! answers to ACME HTTP-01 challenges, which any node gives from the registry.

use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::config::NameServerConfig;
use hickory_resolver::config::ResolverConfig;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::Resolver;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::header;
use hyper::header::HeaderValue;
use hyper::Response;
use mysocket_raft_store::Command;
use tokio_util::sync::CancellationToken;

use crate::control::NodeRef;
use crate::edge::http::Body;

/// Where ACME's HTTP-01 validator asks (RFC 8555 §8.3).
pub const ACME_PATH: &str = "/.well-known/acme-challenge/";
/// Between two looks at the unverified domains.
const LOOK_EVERY: Duration = Duration::from_secs(3);
/// Domains looked at per pass, so a great many unverified claims cost a bounded rate of
/// queries.
const PER_PASS: usize = 50;

/// The key authorisation for an HTTP-01 `path`, if the cluster is answering that challenge.
pub fn http01(node: &NodeRef, path: &str) -> Option<String> {
    let token = path.strip_prefix(ACME_PATH)?;
    node.read(|r| r.acme().http_challenges.get(token).cloned())
}

/// [`http01`]'s answer as a response.
pub fn http01_response(key_authorization: String) -> Response<Body> {
    crate::metrics::get().acme("served");
    let mut r = Response::new(Full::new(Bytes::from(key_authorization)).map_err(|never| match never {}).boxed());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r
}

/// The resolver custom domains are checked with: the operator's, or the system's.
fn resolver(node: &NodeRef) -> Result<Resolver<TokioRuntimeProvider>, String> {
    let mut builder = match node.config.dns_resolver {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            let config = ResolverConfig::from_name_servers(vec![ns]);
            Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        }
        None => Resolver::builder_tokio().map_err(|e| format!("the system's resolver: {e}"))?,
    };
    // A proof just set must be seen at once: nothing cached.
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    builder.build().map_err(|e| e.to_string())
}

/// Whether `name` carries the proof: `token` in its TXT record, or a CNAME to `target`.
async fn proven(resolver: &Resolver<TokioRuntimeProvider>, name: &str, token: &str, target: &str) -> bool {
    let txt_label = mysocket_raft_store::CustomDomain::TXT_LABEL;
    if let Ok(txt) = resolver.lookup(format!("{txt_label}.{name}."), RecordType::TXT).await {
        let found = txt.answers().iter().any(|r| match &r.data {
            RData::TXT(t) => t.txt_data.iter().any(|d| d.as_ref() == token.as_bytes()),
            _ => false,
        });
        if found {
            return true;
        }
    }
    if let Ok(cname) = resolver.lookup(format!("{name}."), RecordType::CNAME).await {
        return cname.answers().iter().any(|r| match &r.data {
            RData::CNAME(c) => c.0.to_ascii().trim_end_matches('.').eq_ignore_ascii_case(target),
            _ => false,
        });
    }
    false
}

/// While this node leads: looks for the proof of each unverified custom domain.
pub async fn verify(node: NodeRef, stop: CancellationToken) {
    let resolver = match resolver(&node) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "no resolver: custom domains cannot be verified on this node");
            return;
        }
    };
    let mut from = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        if node.leader().map(|(id, _)| id) != Some(node.id) {
            continue;
        }
        let pending: Vec<(uuid::Uuid, String, String, String)> = node.read(|r| {
            let all: Vec<_> = r.unverified_domains().collect();
            from = if from >= all.len() { 0 } else { from };
            all.iter()
                .skip(from)
                .take(PER_PASS)
                .filter_map(|s| {
                    s.custom_domain.as_ref().map(|d| (s.socket_id, d.name.clone(), d.token.clone(), s.dnsname.clone()))
                })
                .collect()
        });
        from += pending.len();
        for (socket_id, name, token, target) in pending {
            if !proven(&resolver, &name, &token, &target).await {
                continue;
            }
            let req = mysocket_raft_store::Request {
                request_id: Some(uuid::Uuid::new_v4().to_string()),
                at_ms: crate::control::now_ms(),
                cmd: Command::VerifyDomain { socket_id, name: name.clone() },
            };
            match node.write_local(req).await {
                Ok(_) => tracing::info!(domain = %name, %socket_id, "custom domain verified"),
                Err(e) => tracing::info!(domain = %name, error = %e, "custom domain not marked verified"),
            }
        }
    }
}
