//! Cloud authentication under faults: the OpenID Connect provider the nodes sign visitors in
//! with, the guarded socket (cloud authentication allowing alice@example.com only) and its
//! service, the visitors' sessions made at setup, and the clients of the run that use them.
//!
//! - The provider (`oidc-provider-mock`, which `scripts/test.sh` installs) runs in the harness
//!   on the bridge's host address, which every node reaches whatever the faults (they cut
//!   node-to-node traffic only).
//! - The keeper holds the guarded socket's tunnel over SSH like a mover, claiming it again
//!   through another node when its session ends. Its service echoes the `X-Mysocket-Email` and
//!   `X-Probe` fields it received, so the checker (`checks::check_cloud`) can tell which probe
//!   reached the service and under which identity.
//! - Cloud probers request the guarded socket through random nodes as each [`Visitor`] in turn.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use mysocket_api::ApiClient;
use mysocket_api::SocketCreate;
use rand::Rng;
use serde::Deserialize;
use serde::Serialize;

use crate::net;
use crate::workload::claim;
use crate::workload::patiently;
use crate::workload::Ctx;
use crate::workload::Fixture;
use crate::workload::OpKind;
use crate::workload::OpValue;
use crate::workload::Outcome;
use crate::workload::Service;
use crate::workload::TunnelFixture;

/// Where `scripts/test.sh` installs the provider; `MYSOCKET_OIDC_PROVIDER` names another.
const PROVIDER_DEFAULT: &str = "/var/tmp/mysocket-browser-venv/bin/oidc-provider-mock";
/// The provider's port on the harness's address.
const PROVIDER_PORT: u16 = 9400;
/// How long the provider may take to start.
const PROVIDER_START: Duration = Duration::from_secs(30);
/// The nodes' client id at the provider (which takes any client).
pub const CLIENT_ID: &str = "mysocket-edge";
/// The one email the guarded socket allows.
pub const ALICE: &str = "alice@example.com";
/// Verified by the provider too, but not allowed.
const BOB: &str = "bob@other.org";
/// What a visitor claims to be in an `X-Mysocket-Email` field of its own.
const MALLORY: &str = "mallory@evil.test";
/// A sign-in at setup: how many tries, and how long each may take.
const SIGN_IN_TRIES: usize = 40;
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(10);
/// A cloud probe gets no answer after this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// SSH connect + auth + claim, for the keeper.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(8);

/// The provider's issuer URL: the address it listens on, which it names itself by.
pub fn issuer() -> String {
    format!("http://{}:{PROVIDER_PORT}", net::HOST_IP)
}

/// The provider's program: `MYSOCKET_OIDC_PROVIDER`, or where `scripts/test.sh` installs it.
pub fn provider_binary() -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("MYSOCKET_OIDC_PROVIDER").map(PathBuf::from).unwrap_or_else(|| PROVIDER_DEFAULT.into());
    anyhow::ensure!(
        bin.exists(),
        "no OpenID provider at {}, which the cloud-authentication check needs: run scripts/test.sh, which \
         installs oidc-provider-mock at {PROVIDER_DEFAULT} (or set MYSOCKET_OIDC_PROVIDER to one)",
        bin.display()
    );
    Ok(bin)
}

/// The running provider; stopped when dropped, at the end of the run or when it fails.
pub struct Provider {
    child: Child,
}

impl Provider {
    /// Starts the provider on the harness's address (the bridge must exist) with alice and bob
    /// as its users, logging to `oidc-provider.log` in `dir`, and waits until it answers.
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<Provider> {
        let log = std::fs::File::create(dir.join("oidc-provider.log"))?;
        let user = |email: &str| serde_json::json!({"sub": email, "email": email, "email_verified": true}).to_string();
        let child = Command::new(binary)
            .args(["--host", net::HOST_IP, "--port", &PROVIDER_PORT.to_string(), "--require-nonce"])
            .args(["--user-claims", &user(ALICE), "--user-claims", &user(BOB)])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the OpenID provider {}", binary.display()))?;
        let mut provider = Provider { child };
        provider.wait_ready().await?;
        Ok(provider)
    }

    /// Until the provider serves its discovery document; an error if it exits or is too slow.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/.well-known/openid-configuration", issuer());
        let http = plain()?;
        let deadline = Instant::now() + PROVIDER_START;
        loop {
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), http.get(&url).send()).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the OpenID provider exited ({status}); see oidc-provider.log in the report folder");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the OpenID provider did not answer {url} within {PROVIDER_START:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the provider (a no-op once it is gone).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Who a cloud probe comes as. Declared in alphabetical order, the order of the counts in
/// `results.json` and `summary.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visitor {
    /// Alice's own session: the service must get her requests, with her email.
    Alice,
    /// No cookie at all.
    Anonymous,
    /// Bob's session: his email is verified by the provider, but the socket does not allow it.
    Bob,
    /// Alice's session with its payload changed (a later expiry) and her MAC kept.
    Forged,
    /// Alice's session plus an `X-Mysocket-Email: mallory@evil.test` of the visitor's own: it
    /// may reach the service, but with alice's email only.
    Mallory,
}

impl Visitor {
    pub const ALL: [Visitor; 5] = [Visitor::Alice, Visitor::Anonymous, Visitor::Bob, Visitor::Forged, Visitor::Mallory];

    pub fn as_str(self) -> &'static str {
        match self {
            Visitor::Alice => "alice",
            Visitor::Anonymous => "anonymous",
            Visitor::Bob => "bob",
            Visitor::Forged => "forged",
            Visitor::Mallory => "mallory",
        }
    }

    /// Whether the visitor carries alice's valid session, the one way to the service.
    pub fn signed_in(self) -> bool {
        matches!(self, Visitor::Alice | Visitor::Mallory)
    }

    /// The visitor of a probe's tag, `<visitor>-<client>-<n>`.
    pub fn of_tag(tag: &str) -> Option<Visitor> {
        let name = tag.split('-').next()?;
        Visitor::ALL.into_iter().find(|v| v.as_str() == name)
    }
}

impl std::fmt::Display for Visitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request fields the guarded socket's service reports back.
const ECHOED: [&str; 2] = ["x-mysocket-email", "x-probe"];

/// The guarded socket's service's answer to a request whose head (as far as it was read) is
/// `head`: the `ident` line, then every field of [`ECHOED`] as `name: value` on a line of its
/// own, names lowercase, in the order received.
pub fn answer(ident: &str, head: &[u8]) -> String {
    let head = String::from_utf8_lossy(head);
    let mut body = ident.to_string();
    for line in head.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else { continue };
        let name = name.trim().to_ascii_lowercase();
        if ECHOED.contains(&name.as_str()) {
            body.push('\n');
            body.push_str(&format!("{name}: {}", value.trim()));
        }
    }
    body
}

/// What the guarded socket's service received, as its answer reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    /// The values of the `X-Mysocket-Email` fields, comma-separated; none without any.
    pub email: Option<String>,
    /// The first `X-Probe` field: the probe that sent the request.
    pub probe: Option<String>,
}

impl Echo {
    /// What `body` says the service received, if it is the guarded socket's service's answer
    /// (its first word is the socket's id); the edge's own pages (the redirect to the
    /// provider, a refusal) never start so.
    pub fn of(body: &str, socket_id: &str) -> Option<Echo> {
        let mut lines = body.lines();
        if lines.next()?.split_whitespace().next()? != socket_id {
            return None;
        }
        let (mut emails, mut probe) = (Vec::new(), None);
        for line in lines {
            if let Some(v) = line.strip_prefix("x-mysocket-email:") {
                emails.push(v.trim());
            } else if let Some(v) = line.strip_prefix("x-probe:") {
                probe.get_or_insert_with(|| v.trim().to_string());
            }
        }
        Some(Echo { email: (!emails.is_empty()).then(|| emails.join(", ")), probe })
    }
}

/// The guarded socket and the visitors' session cookies (`mysocket_session=…`), made at setup.
pub struct CloudFixture {
    pub tunnel: TunnelFixture,
    alice: String,
    bob: String,
    forged: String,
}

impl CloudFixture {
    /// Creates the guarded socket and its tunnel as `owner`, signs alice and bob in, and
    /// forges alice's session.
    pub async fn create(owner: &ApiClient) -> anyhow::Result<CloudFixture> {
        let req = SocketCreate {
            name: "guarded".into(),
            socket_type: Some("http".into()),
            cloud_authentication_enabled: true,
            cloud_authentication_email_allowed_addressses: vec![ALICE.into()],
            ..Default::default()
        };
        let s = patiently("create the guarded socket", || owner.create_socket(&req)).await?;
        let tn = patiently("create the guarded socket's tunnel", || owner.create_tunnel(&s.socket_id)).await?;
        let tunnel = TunnelFixture {
            socket_id: s.socket_id,
            tunnel_id: tn.tunnel_id,
            dnsname: s.dnsname,
            relay_port: tn.local_port,
        };
        let alice = signed_in(&tunnel.dnsname, ALICE).await?;
        let bob = signed_in(&tunnel.dnsname, BOB).await?;
        let forged = forge(&alice)?;
        Ok(CloudFixture { tunnel, alice, bob, forged })
    }

    /// The Cookie field `visitor` sends, if any.
    fn cookie(&self, visitor: Visitor) -> Option<&str> {
        match visitor {
            Visitor::Alice | Visitor::Mallory => Some(&self.alice),
            Visitor::Anonymous => None,
            Visitor::Bob => Some(&self.bob),
            Visitor::Forged => Some(&self.forged),
        }
    }
}

/// An HTTP client that follows no redirect and keeps no cookie or connection: each step of a
/// sign-in is seen, and each request is a connection of its own, as the probers' are.
fn plain() -> anyhow::Result<reqwest::Client> {
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()?;
    Ok(c)
}

/// The `name=value` part of the answer's Set-Cookie for `name` (or, for a name ending in `_`,
/// the first whose name starts so).
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    let named = |v: &&str| match name.ends_with('_') {
        true => v.starts_with(name),
        false => v.starts_with(&format!("{name}=")),
    };
    let found = r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find(named)?;
    found.split(';').next().map(str::to_string)
}

fn location(r: &reqwest::Response) -> anyhow::Result<String> {
    let to = r.headers().get("location").context("a redirect without a Location")?;
    Ok(to.to_str()?.to_string())
}

/// Signs `email` in to `host` through node 1, retrying patiently (a node may not have applied
/// the socket yet, or its token key): the session cookie.
async fn signed_in(host: &str, email: &str) -> anyhow::Result<String> {
    let mut last = anyhow::anyhow!("not tried");
    for _ in 0..SIGN_IN_TRIES {
        match tokio::time::timeout(SIGN_IN_TIMEOUT, sign_in(1, host, email)).await {
            Ok(Ok(cookie)) => return Ok(cookie),
            Ok(Err(e)) => last = e,
            Err(_) => last = anyhow::anyhow!("timed out"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last.context(format!("signing {email} in to the guarded socket")))
}

/// One sign-in through the edge of `node` and the provider, step by step: the edge sends a
/// visitor without a session to the provider, with a login cookie; the provider's form signs
/// `email` in and sends the visitor back to the callback; the callback, with the login
/// cookie, sets the session cookie, which it returns (`mysocket_session=…`).
async fn sign_in(node: usize, host: &str, email: &str) -> anyhow::Result<String> {
    let http = plain()?;
    let edge = format!("http://{}:8080", net::ip(node));
    let r = http.get(format!("{edge}/")).header("host", host).send().await?;
    anyhow::ensure!(r.status() == 302, "the edge answered {} instead of sending to the provider", r.status());
    let login = set_cookie(&r, "mysocket_login_").context("the edge set no login cookie")?;
    let to_provider = location(&r)?;
    let r = http.post(&to_provider).form(&[("sub", email)]).send().await?;
    anyhow::ensure!(r.status() == 302, "the provider answered {} to its sign-in form", r.status());
    let back = reqwest::Url::parse(&location(&r)?)?;
    anyhow::ensure!(back.path() == "/.mysocket/callback", "the provider sent the visitor to {back}");
    let callback = format!("{edge}{}?{}", back.path(), back.query().unwrap_or_default());
    let r = http.get(callback).header("host", host).header("cookie", login).send().await?;
    anyhow::ensure!(r.status() == 302, "the callback answered {}", r.status());
    set_cookie(&r, "mysocket_session").context("the callback set no session cookie")
}

/// Alice's session cookie with its payload changed (an expiry an hour later) and her MAC
/// kept: only an edge that failed to check the MAC would take it, as alice.
fn forge(session: &str) -> anyhow::Result<String> {
    let value = session.strip_prefix("mysocket_session=").context("not a session cookie")?;
    let (body, mac) = value.split_once('.').context("a session is `payload.mac`")?;
    let bytes = b64url_decode(body).context("the session's payload is not base64url")?;
    let mut payload: serde_json::Value = serde_json::from_slice(&bytes)?;
    let expiry = payload.get_mut("x").context("the session's payload has no expiry")?;
    *expiry = (expiry.as_u64().context("the session's expiry is not a number")? + 3600).into();
    Ok(format!("mysocket_session={}.{mac}", b64url_encode(&serde_json::to_vec(&payload)?)))
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding, as the edge's cookies are.
fn b64url_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        acc = (acc << 6) | B64URL.iter().position(|&b| b == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// ----- the run's clients -----

/// Holds the guarded socket's tunnel through the run: claims it through a random node, keeps
/// the session, and claims again through a random node when the session ends (its node was
/// killed, or went silent). Its claims are not in the history: nothing competes for this
/// tunnel, and the movers' claims are what the ownership checker judges.
pub async fn keeper(ctx: Arc<Ctx>, fx: Arc<Fixture>, client: u64) {
    let t = fx.cloud.tunnel.clone();
    let mut rng = ctx.rng(client);
    let mut seq = 0u64;
    while !ctx.done() {
        let node = rng.gen_range(1..=ctx.nodes);
        seq += 1;
        let service = Service::echoing(format!("{} {client} {seq}", t.socket_id));
        let attempt =
            tokio::time::timeout(CLAIM_TIMEOUT, claim(node, &fx.user_name, fx.key.clone(), t.relay_port, service))
                .await;
        let Ok(Ok(session)) = attempt else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        while !ctx.done() && !session.is_closed() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = session.disconnect(russh::Disconnect::ByApplication, "done", "").await;
    }
}

/// Requests the guarded socket through random nodes until the run stops, as each visitor in
/// turn; every request carries `X-Probe: <visitor>-<client>-<n>`, which the service echoes.
/// `ok` when the service answered, `fail` otherwise (the edge turned the visitor away, or
/// nothing answered).
pub async fn prober(ctx: Arc<Ctx>, fx: Arc<Fixture>, client: u64) {
    let mut rng = ctx.rng(client);
    let http = match plain() {
        Ok(h) => h,
        Err(e) => {
            crate::nemesis::tracing_line(&format!("cloud prober {client}: no HTTP client: {e}"));
            return;
        }
    };
    let cloud = &fx.cloud;
    let mut n = 0u64;
    while !ctx.done() {
        let visitor = Visitor::ALL[n as usize % Visitor::ALL.len()];
        n += 1;
        let node = rng.gen_range(1..=ctx.nodes);
        let probe = format!("{visitor}-{client}-{n}");
        let call = ctx.now();
        let answer = tokio::time::timeout(PROBE_TIMEOUT, visit(&http, node, cloud, visitor, &probe)).await;
        let (outcome, value) = match answer {
            Ok(Ok((status, body))) => {
                let echo = Echo::of(&body, &cloud.tunnel.socket_id);
                let outcome = if echo.is_some() { Outcome::Ok } else { Outcome::Fail };
                (outcome, OpValue::Cloud { echo, error: None, probe, status: Some(status), visitor })
            }
            Ok(Err(e)) => (
                Outcome::Fail,
                OpValue::Cloud { echo: None, error: Some(format!("{e:#}")), probe, status: None, visitor },
            ),
            // A probe changes nothing, so a timeout is simply a failed probe.
            Err(_) => (
                Outcome::Fail,
                OpValue::Cloud { echo: None, error: Some("timeout".into()), probe, status: None, visitor },
            ),
        };
        ctx.record(client, OpKind::CloudProbe, &cloud.tunnel.socket_id, node, call, outcome, value);
        ctx.think(&mut rng).await;
    }
}

/// One probe: `GET /page` for the guarded socket through `node` with the visitor's cookie,
/// and for mallory an identity field of the visitor's own: (status, body).
async fn visit(
    http: &reqwest::Client,
    node: usize,
    cloud: &CloudFixture,
    visitor: Visitor,
    probe: &str,
) -> anyhow::Result<(u16, String)> {
    let mut req = http
        .get(format!("http://{}:8080/page", net::ip(node)))
        .header("host", &cloud.tunnel.dnsname)
        .header("x-probe", probe);
    if let Some(cookie) = cloud.cookie(visitor) {
        req = req.header("cookie", cookie);
    }
    if visitor == Visitor::Mallory {
        req = req.header("x-mysocket-email", MALLORY);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips() {
        assert_eq!(b64url_encode(b"hello?>"), "aGVsbG8_Pg");
        assert_eq!(b64url_decode("aGVsbG8_Pg").as_deref(), Some(&b"hello?>"[..]));
        for n in 0..10 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 251) as u8).collect();
            assert_eq!(b64url_decode(&b64url_encode(&bytes)), Some(bytes));
        }
        assert_eq!(b64url_decode("a+b"), None, "standard base64's alphabet");
    }

    #[test]
    fn a_forged_session_keeps_the_mac_and_changes_the_payload() {
        let payload = br#"{"s":"6f1c0a52-0000-4000-8000-000000000001","e":"alice@example.com","x":1700000000}"#;
        let alice = format!("mysocket_session={}.TAG", b64url_encode(payload));
        let forged = forge(&alice).unwrap();
        let (body, mac) = forged.strip_prefix("mysocket_session=").unwrap().split_once('.').unwrap();
        assert_eq!(mac, "TAG");
        let v: serde_json::Value = serde_json::from_slice(&b64url_decode(body).unwrap()).unwrap();
        assert_eq!((v["e"].as_str(), v["x"].as_u64()), (Some(ALICE), Some(1_700_003_600)));
        assert!(forge("mysocket_session=nonsense").is_err());
    }

    #[test]
    fn the_service_echoes_the_identity_and_probe_fields() {
        let head = b"GET /page HTTP/1.1\r\nHost: g.example\r\nX-Mysocket-Email: alice@example.com\r\n\
                     x-mysocket-email: mallory@evil.test\r\nX-Probe: mallory-12-3\r\nCookie: a=b\r\n\r\nbody";
        let body = answer("s-1 7 2", head);
        assert_eq!(
            body,
            "s-1 7 2\nx-mysocket-email: alice@example.com\nx-mysocket-email: mallory@evil.test\nx-probe: mallory-12-3"
        );
        let echo = Echo::of(&body, "s-1").unwrap();
        assert_eq!(echo.email.as_deref(), Some("alice@example.com, mallory@evil.test"));
        assert_eq!(echo.probe.as_deref(), Some("mallory-12-3"));
        assert_eq!(Visitor::of_tag("mallory-12-3"), Some(Visitor::Mallory));
        assert_eq!(
            Echo::of(&answer("s-1 7 2", b"GET / HTTP/1.1\r\n\r\n"), "s-1"),
            Some(Echo { email: None, probe: None })
        );
        // The edge's own pages are not the service's.
        assert_eq!(Echo::of("<!doctype html><title>Found</title>", "s-1"), None);
        assert_eq!(Echo::of("s-2 7 2\nx-probe: alice-1-1", "s-1"), None, "another socket's service");
    }
}
