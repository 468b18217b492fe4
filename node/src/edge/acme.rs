//! Publicly trusted certificates over ACME (RFC 8555, with instant-acme), obtained by one node
//! at a time for the whole cluster. The leader takes a short lease in Raft (it lapses at its
//! time, or as soon as its holder is marked dead), then orders a certificate for `*.<domain>`
//! and `<domain>`, answering the DNS-01 challenges from the cluster's own DNS: each value is
//! written to the registry and served by every node's DNS once replicated. The account, the
//! certificates and their keys are replicated too, so every node serves them by SNI
//! ([`crate::edge::certs`]) and any node can take over a renewal. A certificate is renewed
//! once a third of its lifetime is left; failures are retried with a doubling wait (2 s to
//! 10 min), recorded in the registry (the dashboard shows them), counted in
//! `mysocket_acme_orders_total{result="failed"}` and logged with what to check. Until a name
//! has a certificate the cluster CA's serves it.

use std::collections::HashMap;
use std::time::Duration;
use std::time::Instant;

use instant_acme::Account;
use instant_acme::AccountCredentials;
use instant_acme::AuthorizationStatus;
use instant_acme::ChallengeType;
use instant_acme::Identifier;
use instant_acme::NewAccount;
use instant_acme::NewOrder;
use instant_acme::OrderStatus;
use instant_acme::RetryPolicy;
use mysocket_raft_store::AcmeChange;
use mysocket_raft_store::AcmeState;
use mysocket_raft_store::Certificate;
use mysocket_raft_store::Command;
use mysocket_raft_store::Registry;
use mysocket_raft_store::Response;
use tokio_util::sync::CancellationToken;

use crate::config::Acme;
use crate::control::now_ms;
use crate::control::NodeRef;

/// How long the ordering node's lease lasts; it is renewed at each step of an order.
const LEASE: Duration = Duration::from_secs(20);
/// Waits between failed orders: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_LAST: Duration = Duration::from_secs(600);

/// The certificate's name in the registry for the cluster's domain: the wildcard (it covers
/// the apex too).
pub fn wildcard(domain: &str) -> String {
    AcmeState::wildcard(domain)
}

/// Why an order did not end with a certificate.
#[derive(Debug)]
enum Failure {
    /// Another node holds the lease, or this one stopped leading: not a failure of the order.
    NotOurs,
    /// What went wrong, and what the operator should check.
    Failed(String),
}

impl From<instant_acme::Error> for Failure {
    /// The error with its causes (a refused connection, a certificate not trusted, …).
    fn from(e: instant_acme::Error) -> Failure {
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let c_text = c.to_string();
            if !why.contains(&c_text) {
                why = format!("{why}: {c_text}");
            }
            cause = c.source();
        }
        Failure::Failed(why)
    }
}

/// When the certificate `name` needs ordering: now (`Duration::ZERO`) if there is none or a
/// third of its lifetime is left, else in how long.
fn due(reg: &Registry, name: &str, now: u64) -> Duration {
    let Some(c) = reg.acme().certificates.get(name) else { return Duration::ZERO };
    let lifetime = c.not_after_ms.saturating_sub(c.not_before_ms);
    let renew_at = c.not_after_ms.saturating_sub(lifetime / 3);
    Duration::from_millis(renew_at.saturating_sub(now))
}

/// A certificate to order: its name in the registry, the names it is for, and the challenge
/// that proves them.
struct Want {
    cert: String,
    names: Vec<String>,
    challenge: ChallengeType,
}

/// Orders and renews the cluster's certificates while this node leads: the wildcard first,
/// then each verified custom domain's; a name that failed waits its turn (doubling) while the
/// others go on.
pub async fn run(node: NodeRef, stop: CancellationToken) {
    let Some(cfg) = node.config.acme.clone() else { return };
    let mut failing: HashMap<String, (u32, Instant)> = HashMap::new();
    loop {
        let wait = match next(&node, &failing) {
            None => Duration::from_secs(1),
            Some(want) => match order(&node, &cfg, &want).await {
                Ok(()) => {
                    failing.remove(&want.cert);
                    crate::metrics::get().acme("issued");
                    Duration::from_millis(100)
                }
                Err(Failure::NotOurs) => Duration::from_secs(1),
                Err(Failure::Failed(why)) => {
                    crate::metrics::get().acme("failed");
                    let hint = hint(&why, &cfg, want.challenge);
                    tracing::warn!(name = %want.cert, error = %why, "ACME: no certificate; {hint}");
                    let message = format!("{why} ({hint})");
                    let _ = write(&node, Command::Acme(AcmeChange::Failed { name: want.cert.clone(), message })).await;
                    let n = failing.get(&want.cert).map_or(1, |(n, _)| n + 1);
                    let wait = (RETRY_FIRST * 2u32.saturating_pow((n - 1).min(16))).min(RETRY_LAST);
                    failing.insert(want.cert.clone(), (n, Instant::now() + wait));
                    Duration::from_millis(100)
                }
            },
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The first certificate due that is not waiting after a failure; `None` while this node does
/// not lead, the cluster has no domain, or nothing is due.
fn next(node: &NodeRef, failing: &HashMap<String, (u32, Instant)>) -> Option<Want> {
    if node.leader().map(|(id, _)| id) != Some(node.id) {
        return None;
    }
    let waiting = |name: &str| failing.get(name).is_some_and(|(_, at)| *at > Instant::now());
    node.read(|reg| {
        let domain = reg.config()?.domain.clone();
        let now = now_ms();
        let wildcard = wildcard(&domain);
        if due(reg, &wildcard, now).is_zero() && !waiting(&wildcard) {
            return Some(Want {
                cert: wildcard.clone(),
                names: vec![wildcard, domain],
                challenge: ChallengeType::Dns01,
            });
        }
        reg.verified_domains().filter_map(|s| s.custom_domain.as_ref()).find_map(|d| {
            (due(reg, &d.name, now).is_zero() && !waiting(&d.name)).then(|| Want {
                cert: d.name.clone(),
                names: vec![d.name.clone()],
                challenge: ChallengeType::Http01,
            })
        })
    })
}

/// What an operator should check for an error.
fn hint(why: &str, cfg: &Acme, challenge: ChallengeType) -> String {
    let w = why.to_ascii_lowercase();
    if challenge == ChallengeType::Http01
        && (w.contains("connection") || w.contains("unauthorized") || w.contains("404"))
    {
        "check that the custom domain resolves to the nodes' public addresses and their public HTTP port is reachable as port 80".into()
    } else if w.contains("dns") || w.contains("txt") || w.contains("nxdomain") || w.contains("servfail") {
        "check that the domain is delegated to the cluster (NS records for ns<id>.<domain> at the parent, with their addresses) and that port 53 of the nodes answers".into()
    } else if w.contains("connect") || w.contains("request failure") || w.contains("certificate") || w.contains("tls") {
        format!("check that this node reaches {} (and --acme-ca-root for a private CA)", cfg.directory)
    } else if w.contains("ratelimit") || w.contains("rate limit") {
        "the CA's rate limit: it is retried later".into()
    } else {
        format!("check --acme-directory {} and --acme-email", cfg.directory)
    }
}

/// Proposes `cmd` on this node, which must lead: its answer and the log index it took.
async fn write(node: &NodeRef, cmd: Command) -> Result<(Response, u64), Failure> {
    let req = mysocket_raft_store::Request { request_id: Some(uuid::Uuid::new_v4().to_string()), at_ms: now_ms(), cmd };
    match node.write_local(req).await {
        Ok((Response::Rejected(r), _)) => Err(Failure::Failed(r.to_string())),
        Ok(answer) => Ok(answer),
        Err(_) => Err(Failure::NotOurs),
    }
}

/// Takes (or renews) the ordering lease.
async fn lease(node: &NodeRef) -> Result<(), Failure> {
    let until_ms = now_ms() + LEASE.as_millis() as u64;
    let cmd = Command::Acme(AcmeChange::Lease { node_id: node.id, until_ms });
    match write(node, cmd).await {
        Ok(_) => Ok(()),
        Err(Failure::Failed(_)) => Err(Failure::NotOurs),
        Err(e) => Err(e),
    }
}

/// Waits until every voter has the log up to `index` (a second at most), then a little more
/// for them to apply it: a CA asks any of the zone's name servers.
async fn replicated(node: &NodeRef, index: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        let m = node.metrics();
        let all = m.replication.as_ref().is_some_and(|r| r.values().all(|l| l.is_some_and(|l| l.index >= index)));
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The cluster's ACME account: the replicated one, or a new one (then replicated).
async fn account(node: &NodeRef, cfg: &Acme) -> Result<Account, Failure> {
    let builder = || match &cfg.ca_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let known = node.read(|r| {
        let a = r.acme();
        (a.directory.as_deref() == Some(cfg.directory.as_str())).then(|| a.account.clone()).flatten()
    });
    if let Some(json) = known {
        let creds: AccountCredentials =
            serde_json::from_str(&json).map_err(|e| Failure::Failed(format!("stored ACME account: {e}")))?;
        return Ok(builder()?.from_credentials(creds).await?);
    }
    let contact = format!("mailto:{}", cfg.email);
    let new = NewAccount { contact: &[&contact], terms_of_service_agreed: true, only_return_existing: false };
    let (account, creds) = builder()?.create(&new, cfg.directory.clone(), None).await?;
    let credentials = serde_json::to_string(&creds).map_err(|e| Failure::Failed(e.to_string()))?;
    write(node, Command::Acme(AcmeChange::Account { directory: cfg.directory.clone(), credentials })).await?;
    tracing::info!(directory = %cfg.directory, "ACME: account created");
    Ok(account)
}

/// What an order put up for the CA's validator, withdrawn whatever happens.
enum Served {
    Dns { owner: String, value: String },
    Http { token: String },
}

/// Orders the certificate `want`, answering its challenges, and stores it.
async fn order(node: &NodeRef, cfg: &Acme, want: &Want) -> Result<(), Failure> {
    lease(node).await?;
    let started = std::time::Instant::now();
    tracing::info!(name = %want.cert, "ACME: ordering a certificate");
    let account = account(node, cfg).await?;
    let mut served = Vec::new();
    let result = order_with(node, &account, want, &mut served).await;
    for s in served {
        let change = match s {
            Served::Dns { owner, value } => AcmeChange::DnsChallenge { name: owner, value, serve: false },
            Served::Http { token } => AcmeChange::HttpChallenge { token, key_authorization: None },
        };
        let _ = write(node, Command::Acme(change)).await;
    }
    if result.is_ok() {
        tracing::info!(name = %want.cert, took_ms = started.elapsed().as_millis() as u64, "ACME: certificate issued");
    }
    result
}

async fn order_with(node: &NodeRef, account: &Account, want: &Want, served: &mut Vec<Served>) -> Result<(), Failure> {
    let identifiers: Vec<Identifier> = want.names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(Failure::Failed(format!("authorization is {other:?}"))),
        }
        let mut challenge = authz
            .challenge(want.challenge.clone())
            .ok_or_else(|| Failure::Failed(format!("the CA offers no {:?} challenge", want.challenge)))?;
        let owner = match challenge.identifier().identifier {
            Identifier::Dns(d) => d.clone(),
            other => return Err(Failure::Failed(format!("unexpected identifier {other:?}"))),
        };
        let key_authorization = challenge.key_authorization();
        let (change, put) = match want.challenge {
            ChallengeType::Http01 => {
                let token = challenge.token.clone();
                let key_authorization = Some(key_authorization.as_str().to_string());
                (AcmeChange::HttpChallenge { token: token.clone(), key_authorization }, Served::Http { token })
            }
            _ => {
                let value = key_authorization.dns_value();
                let served = Served::Dns { owner: owner.clone(), value: value.clone() };
                (AcmeChange::DnsChallenge { name: owner.clone(), value, serve: true }, served)
            }
        };
        lease(node).await?;
        let (_, index) = write(node, Command::Acme(change)).await?;
        served.push(put);
        replicated(node, index).await;
        tracing::info!(name = %owner, challenge = ?want.challenge, "ACME: answering the challenge");
        challenge.set_ready().await?;
    }
    let status = order.poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(90))).await?;
    if status != OrderStatus::Ready {
        let detail = order.state().error.as_ref().map(|p| p.to_string()).unwrap_or_default();
        return Err(Failure::Failed(format!("the order is {status:?}: {detail}")));
    }
    lease(node).await?;
    let key = rcgen::KeyPair::generate().map_err(|e| Failure::Failed(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(want.names.clone()).map_err(|e| Failure::Failed(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| Failure::Failed(e.to_string()))?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60))).await?;
    let (not_before_ms, not_after_ms) = validity(&chain_pem)?;
    let certificate = Certificate { chain_pem, key_pem: key.serialize_pem(), not_before_ms, not_after_ms };
    write(node, Command::Acme(AcmeChange::Issued { name: want.cert.clone(), certificate })).await?;
    Ok(())
}

/// The leaf's validity, in ms since the epoch.
fn validity(chain_pem: &str) -> Result<(u64, u64), Failure> {
    let bad = |e: String| Failure::Failed(format!("the issued certificate: {e}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let v = cert.validity();
    let ms = |t: &x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    Ok((ms(&v.not_before), ms(&v.not_after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_due_once_a_third_of_its_lifetime_is_left() {
        let mut reg = Registry::default();
        assert_eq!(due(&reg, "*.x.test", 5), Duration::ZERO, "none yet: due now");
        let cert =
            Certificate { chain_pem: String::new(), key_pem: String::new(), not_before_ms: 0, not_after_ms: 90_000 };
        let req = mysocket_raft_store::Request {
            request_id: None,
            at_ms: 0,
            cmd: Command::Acme(AcmeChange::Issued { name: "*.x.test".into(), certificate: cert }),
        };
        reg.apply(&req, &mut Default::default());
        assert_eq!(due(&reg, "*.x.test", 10_000), Duration::from_secs(50), "renewed at 60 s of 90");
        assert_eq!(due(&reg, "*.x.test", 61_000), Duration::ZERO);
    }
}
