//! The clients of a run and the history they record.
//!
//! - movers: real SSH tunnel clients (russh) that claim a tunnel through a random node and
//!   hold it until their next move; two per tunnel, so each is regularly superseded by the
//!   other. Their forwarded channels answer HTTP with who they are.
//! - readers: read a tunnel's holder `(node, epoch)` through a random node's API.
//! - creators: create sockets (unique names, tcp ones get a port) and, now and then, the same
//!   account through two nodes at once.
//! - probers: public HTTP requests for the tunnels' sockets through a random node.
//! - cloud probers and the keeper of the guarded socket's tunnel: see [`crate::cloud`].
//!
//! Every operation is one line of `history.jsonl`: `ok` (it happened), `fail` (it certainly did
//! not) or `info` (unknown: a timeout or a lost connection; it may have happened).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use mysocket_api::ApiClient;
use mysocket_api::ClientError;
use mysocket_api::SocketCreate;
use mysocket_api::UserCreate;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use russh::client;
use russh::keys::PrivateKey;
use russh::keys::PrivateKeyWithHashAlg;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::cloud;
use crate::cloud::CloudFixture;
use crate::cloud::Echo;
use crate::cloud::Visitor;
use crate::net;

/// How long an operation may take before it counts as indeterminate.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// SSH connect + auth + claim.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    Info,
}

/// What the clients do. Declared in alphabetical order, which is the order of the counts in
/// `results.json` and `summary.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A mover claims its tunnel over SSH (`tcpip-forward`).
    Claim,
    /// A public request for the guarded (cloud-auth) socket, as one of [`Visitor`].
    CloudProbe,
    /// An `A` query for a socket's name to a node's DNS.
    DnsProbe,
    /// The same new account through two nodes at once.
    CreateAccount,
    CreateSocket,
    /// A public HTTP request for a tunnel's socket.
    Probe,
    /// A read of a tunnel's holder.
    Read,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Claim => "claim",
            OpKind::CloudProbe => "cloud_probe",
            OpKind::DnsProbe => "dns_probe",
            OpKind::CreateAccount => "create_account",
            OpKind::CreateSocket => "create_socket",
            OpKind::Probe => "probe",
            OpKind::Read => "read",
        }
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation saw, written without a tag: the operation's kind tells them apart. The
/// variants that need fewer fields come later, so that reading `history.jsonl` back picks the
/// right one (an object with none of `Holder`'s fields would read as `Holder { holder: None }`).
/// Fields are in alphabetical order, the order `history.jsonl` has always had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OpValue {
    /// A claim: the mover's claim number and the Raft id of the node it went through.
    Claim {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        node_id: u64,
        seq: u64,
    },
    /// A cloud probe: who it came as, the tag it sent (`X-Probe`), the answer's status (none
    /// without an answer) and, when the answer was the service's, what the service echoed.
    /// `visitor` is what no other variant has.
    Cloud {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        echo: Option<Echo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        probe: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        visitor: Visitor,
    },
    /// A probe answered 200: the body names the socket, mover and claim that served it.
    Served {
        body: String,
        mover: Option<u64>,
        seq: Option<u64>,
        socket_id: Option<String>,
        status: u16,
    },
    /// A DNS probe: the answer's code (`NOERROR`, `SERVFAIL`, …; `timeout` without one) and
    /// the slots of the nodes it listed.
    Dns {
        answer: String,
        listed: Vec<usize>,
    },
    /// A created socket; `port` only for tcp sockets.
    Socket {
        dnsname: String,
        port: Option<u16>,
        socket_id: String,
    },
    Account {
        user_id: String,
    },
    /// A probe answered with another status.
    Status {
        status: u16,
    },
    Error {
        error: String,
    },
    /// A read: the tunnel's holder `(node, epoch)`, or nobody.
    Holder {
        holder: Option<(u64, u64)>,
    },
}

impl OpValue {
    fn error(e: impl ToString) -> OpValue {
        OpValue::Error { error: e.to_string() }
    }

    /// The socket a create made or a probe reached.
    pub fn socket_id(&self) -> Option<&str> {
        match self {
            OpValue::Socket { socket_id, .. } => Some(socket_id),
            OpValue::Served { socket_id, .. } => socket_id.as_deref(),
            _ => None,
        }
    }

    /// The claim number of a claim, or of the claim that served a probe.
    pub fn seq(&self) -> Option<u64> {
        match self {
            OpValue::Claim { seq, .. } => Some(*seq),
            OpValue::Served { seq, .. } => *seq,
            _ => None,
        }
    }
}

/// One operation of the history. Times are nanoseconds since the run started; `ret` is absent
/// for indeterminate operations.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    pub client: u64,
    pub kind: OpKind,
    pub key: String,
    pub node: usize,
    pub call: u64,
    pub ret: Option<u64>,
    pub outcome: Outcome,
    pub value: OpValue,
}

pub struct Ctx {
    pub start: Instant,
    pub nodes: usize,
    pub stop: AtomicBool,
    pub ops: Mutex<Vec<Op>>,
    /// Pause between two operations of one client.
    pub think: Duration,
    pub seed: u64,
    /// Which node (Raft id) runs in which slot: the membership nemesis changes it.
    pub slots: Arc<Mutex<crate::nodes::Nodes>>,
}

impl Ctx {
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        client: u64,
        kind: OpKind,
        key: &str,
        node: usize,
        call: u64,
        outcome: Outcome,
        value: OpValue,
    ) {
        let ret = (outcome != Outcome::Info).then(|| self.now());
        let op = Op { client, kind, key: key.into(), node, call, ret, outcome, value };
        self.ops.lock().expect("history").push(op);
    }

    pub fn rng(&self, client: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed.wrapping_mul(1_000_003).wrapping_add(client))
    }

    pub async fn think(&self, rng: &mut StdRng) {
        let ms = self.think.as_millis() as u64;
        let jitter = rng.gen_range(ms / 2..=ms + ms / 2);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
}

/// The cluster's operator credential, set once when the suite starts the cluster.
pub static OPERATOR_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A client of slot `node` with the operator credential: membership changes, digests and the
/// cluster's detail need it.
pub fn operator(node: usize) -> ApiClient {
    api(node, OPERATOR_TOKEN.get().map(String::as_str))
}

pub fn api(node: usize, token: Option<&str>) -> ApiClient {
    let c = ApiClient::new([format!("http://{}:7070", net::ip(node))]);
    match token {
        Some(t) => c.with_token(t),
        None => c,
    }
}

/// A definite refusal (4xx) did not happen; anything else may have.
fn outcome_of(e: &ClientError) -> Outcome {
    match e.status() {
        Some(s) if s.is_client_error() => Outcome::Fail,
        _ => Outcome::Info,
    }
}

/// The outcome and recorded value of an API call made under [`OP_TIMEOUT`].
fn judged<T>(
    r: Result<Result<T, ClientError>, tokio::time::error::Elapsed>,
    ok: impl FnOnce(T) -> OpValue,
) -> (Outcome, OpValue) {
    match r {
        Ok(Ok(v)) => (Outcome::Ok, ok(v)),
        Ok(Err(e)) => (outcome_of(&e), OpValue::error(e)),
        Err(_) => (Outcome::Info, OpValue::error("timeout")),
    }
}

#[derive(Clone, Debug)]
pub struct TunnelFixture {
    pub socket_id: String,
    pub tunnel_id: String,
    pub dnsname: String,
    pub relay_port: u16,
}

/// The accounts and objects the clients work on, made before the clock starts.
pub struct Fixture {
    pub key: Arc<PrivateKey>,
    pub public_key: String,
    pub user_name: String,
    pub token: String,
    pub tunnels: Vec<TunnelFixture>,
    pub creator_token: String,
    /// The guarded socket and the visitors' sessions.
    pub cloud: CloudFixture,
    /// The fleet tunnels (none unless the fleet nemesis runs).
    pub fleet: crate::fleet::Fleet,
}

/// Retries a setup step: right after a write, a node may not have applied it yet (and the
/// planted-bug builds answer from stale replicas on purpose).
pub async fn patiently<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut last = String::new();
    for _ in 0..50 {
        match tokio::time::timeout(OP_TIMEOUT, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("{what}: {last}")
}

impl Fixture {
    pub async fn create(key: PrivateKey, public_key: String, tunnels: usize, fleet: usize) -> anyhow::Result<Fixture> {
        let a = api(1, None);
        let user = |name: &str| UserCreate {
            name: name.into(),
            email: format!("{}@jepsen.test", name.to_lowercase()),
            password: format!("{}-password", name.to_lowercase()),
            sshkey: public_key.clone(),
        };
        let (mover, creator) = (user("Mover"), user("Creator"));
        let u = patiently("create the movers' account", || a.create_user(&mover)).await?;
        let token = patiently("log in", || a.login("mover@jepsen.test", "mover-password")).await?.token;
        let owner = api(1, Some(&token));
        let mut fx = Vec::new();
        for t in 0..tunnels {
            let req =
                SocketCreate { name: format!("owned-{t}"), socket_type: Some("http".into()), ..Default::default() };
            let s = patiently("create a socket", || owner.create_socket(&req)).await?;
            let tn = patiently("create a tunnel", || owner.create_tunnel(&s.socket_id)).await?;
            fx.push(TunnelFixture {
                socket_id: s.socket_id,
                tunnel_id: tn.tunnel_id,
                dnsname: s.dnsname,
                relay_port: tn.local_port,
            });
        }
        let cloud = CloudFixture::create(&owner).await?;
        patiently("create the creators' account", || a.create_user(&creator)).await?;
        let creator_token = patiently("log in", || a.login("creator@jepsen.test", "creator-password")).await?.token;
        let fleet = if fleet > 0 {
            crate::fleet::Fleet::create(fleet, &public_key).await?
        } else {
            crate::fleet::Fleet::empty()
        };
        Ok(Fixture {
            key: Arc::new(key),
            public_key,
            user_name: u.user_name,
            token,
            tunnels: fx,
            creator_token,
            cloud,
            fleet,
        })
    }
}

// ----- movers -----

/// The stand-in for a service behind a tunnel: every forwarded channel gets an HTTP answer
/// naming the socket, the client and the claim (session) it arrived through. The guarded
/// socket's service also echoes the identity and probe fields it received
/// ([`cloud::answer`]).
pub struct Service {
    ident: String,
    echo: bool,
}

impl Service {
    /// A mover's service.
    pub fn new(ident: String) -> Service {
        Service { ident, echo: false }
    }

    /// The guarded socket's service.
    pub fn echoing(ident: String) -> Service {
        Service { ident, echo: true }
    }
}

impl client::Handler for Service {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let (ident, echo) = (self.ident.clone(), self.echo);
        tokio::spawn(async move {
            let mut s = channel.into_stream();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            // Read the request head, then answer and close.
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16_384 {
                match tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            let body = if echo { cloud::answer(&ident, &buf) } else { ident };
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
        Ok(())
    }
}

/// A claim that failed before the forward request was sent certainly did not happen.
pub enum ClaimError {
    NotSent(anyhow::Error),
    Unknown(anyhow::Error),
}

/// Connects to `node` over SSH as `user` and claims the tunnel whose relay port is
/// `relay_port`; its forwarded channels go to `service`.
pub async fn claim(
    node: usize,
    user: &str,
    key: Arc<PrivateKey>,
    relay_port: u16,
    service: Service,
) -> Result<client::Handle<Service>, ClaimError> {
    let h = connect(node, user, key, service).await.map_err(ClaimError::NotSent)?;
    h.tcpip_forward("127.0.0.1", u32::from(relay_port)).await.map_err(|e| ClaimError::Unknown(e.into()))?;
    Ok(h)
}

async fn connect(
    node: usize,
    user: &str,
    key: Arc<PrivateKey>,
    service: Service,
) -> anyhow::Result<client::Handle<Service>> {
    let config = Arc::new(client::Config {
        keepalive_interval: Some(Duration::from_secs(2)),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let mut h = client::connect(config, (net::ip(node).as_str(), 2222), service).await?;
    let hash = h.best_supported_rsa_hash().await?.flatten();
    match h.authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash)).await? {
        client::AuthResult::Success => {}
        _ => anyhow::bail!("key refused"),
    }
    Ok(h)
}

/// Claims the tunnel through random nodes until the run stops; keeps the newest session open
/// and closes the previous one once the new claim succeeded.
pub async fn mover(ctx: Arc<Ctx>, fx: Arc<Fixture>, tunnel: usize, client: u64) {
    let t = fx.tunnels[tunnel].clone();
    let mut rng = ctx.rng(client);
    let mut current: Option<client::Handle<Service>> = None;
    let mut seq = 0u64;
    while !ctx.done() {
        let node = rng.gen_range(1..=ctx.nodes);
        seq += 1;
        let ident = format!("{} {client} {seq}", t.socket_id);
        let node_id = ctx.slots.lock().expect("nodes").id(node);
        let call = ctx.now();
        let attempt = tokio::time::timeout(
            CLAIM_TIMEOUT,
            claim(node, &fx.user_name, fx.key.clone(), t.relay_port, Service::new(ident)),
        )
        .await;
        let (outcome, error) = match attempt {
            Ok(Ok(h)) => {
                if let Some(old) = current.replace(h) {
                    tokio::spawn(async move {
                        let _ = old.disconnect(russh::Disconnect::ByApplication, "moving", "").await;
                    });
                }
                (Outcome::Ok, None)
            }
            Ok(Err(ClaimError::NotSent(e))) => (Outcome::Fail, Some(e.to_string())),
            Ok(Err(ClaimError::Unknown(e))) => (Outcome::Info, Some(e.to_string())),
            Err(_) => (Outcome::Info, Some("timeout".into())),
        };
        let value = OpValue::Claim { seq, node_id, error };
        ctx.record(client, OpKind::Claim, &t.tunnel_id, node, call, outcome, value);
        // Hold the tunnel for a while: long enough that the other mover supersedes it.
        let hold = rng.gen_range(800..3000);
        tokio::time::sleep(Duration::from_millis(hold)).await;
    }
    if let Some(h) = current {
        let _ = h.disconnect(russh::Disconnect::ByApplication, "done", "").await;
    }
}

// ----- readers -----

pub async fn reader(ctx: Arc<Ctx>, fx: Arc<Fixture>, client: u64) {
    let mut rng = ctx.rng(client);
    let clients: Vec<ApiClient> = (1..=ctx.nodes).map(|i| api(i, Some(&fx.token))).collect();
    while !ctx.done() {
        let t = &fx.tunnels[rng.gen_range(0..fx.tunnels.len())];
        let node = rng.gen_range(1..=ctx.nodes);
        let call = ctx.now();
        let r = tokio::time::timeout(OP_TIMEOUT, clients[node - 1].tunnel(&t.socket_id, &t.tunnel_id)).await;
        let (outcome, value) = judged(r, |tn| OpValue::Holder { holder: tn.session.map(|s| (s.node_id, s.epoch)) });
        ctx.record(client, OpKind::Read, &t.tunnel_id, node, call, outcome, value);
        ctx.think(&mut rng).await;
    }
}

// ----- creators -----

pub async fn creator(ctx: Arc<Ctx>, fx: Arc<Fixture>, client: u64) {
    let mut rng = ctx.rng(client);
    let clients: Vec<ApiClient> = (1..=ctx.nodes).map(|i| api(i, Some(&fx.creator_token))).collect();
    let mut n = 0u64;
    while !ctx.done() {
        n += 1;
        if n.is_multiple_of(12) {
            twin_accounts(&ctx, &fx, client, n, &mut rng).await;
            continue;
        }
        let node = rng.gen_range(1..=ctx.nodes);
        let kind = if n.is_multiple_of(3) { "tcp" } else { "http" };
        let name = format!("c{client}-{n}");
        let req = SocketCreate { name: name.clone(), socket_type: Some(kind.into()), ..Default::default() };
        let call = ctx.now();
        let r = tokio::time::timeout(OP_TIMEOUT, clients[node - 1].create_socket(&req)).await;
        let (outcome, value) = judged(r, |s| {
            let port = (kind == "tcp").then(|| s.socket_tcp_ports.first().copied()).flatten();
            OpValue::Socket { socket_id: s.socket_id, dnsname: s.dnsname, port }
        });
        ctx.record(client, OpKind::CreateSocket, &name, node, call, outcome, value);
        ctx.think(&mut rng).await;
    }
}

/// The same new account through two different nodes at once: at most one may succeed.
async fn twin_accounts(ctx: &Arc<Ctx>, fx: &Fixture, client: u64, n: u64, rng: &mut StdRng) {
    let email = format!("twin-{client}-{n}@jepsen.test");
    let a = rng.gen_range(1..=ctx.nodes);
    let b = if ctx.nodes > 1 { (a % ctx.nodes) + 1 } else { a };
    let one = |node: usize| {
        let (ctx, email, key) = (ctx.clone(), email.clone(), fx.public_key.clone());
        async move {
            let req =
                UserCreate { name: "Twin".into(), email: email.clone(), password: "twin-password".into(), sshkey: key };
            let call = ctx.now();
            // As the operator: a stranger whose email is taken is answered like a new account
            // (no enumeration), and the checker needs the truth, 409.
            let r = tokio::time::timeout(OP_TIMEOUT, operator(node).create_user(&req)).await;
            let (outcome, value) = judged(r, |u| OpValue::Account { user_id: u.user_id });
            ctx.record(client, OpKind::CreateAccount, &email, node, call, outcome, value);
        }
    };
    tokio::join!(one(a), one(b));
}

// ----- probers -----

/// `GET /` for `host` on a node's public HTTP port: (status, body).
pub async fn http_get(node: usize, host: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect((net::ip(node).as_str(), 8080)).await?;
    s.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A 200 answer's body: `<socket> <mover> <claim number>` from the mover that served it.
fn served(body: String) -> OpValue {
    let mut parts = body.split_whitespace();
    let (socket, mover, seq) = (parts.next(), parts.next(), parts.next());
    OpValue::Served {
        status: 200,
        socket_id: socket.map(str::to_string),
        mover: mover.and_then(|m| m.parse().ok()),
        seq: seq.and_then(|s| s.parse().ok()),
        body,
    }
}

pub async fn prober(ctx: Arc<Ctx>, fx: Arc<Fixture>, client: u64) {
    let mut rng = ctx.rng(client);
    while !ctx.done() {
        let t = &fx.tunnels[rng.gen_range(0..fx.tunnels.len())];
        let node = rng.gen_range(1..=ctx.nodes);
        let call = ctx.now();
        let (outcome, value) = match tokio::time::timeout(Duration::from_secs(3), http_get(node, &t.dnsname)).await {
            Ok(Ok((200, body))) => (Outcome::Ok, served(body)),
            Ok(Ok((status, _))) => (Outcome::Fail, OpValue::Status { status }),
            Ok(Err(e)) => (Outcome::Fail, OpValue::error(e)),
            // A probe changes nothing, so a timeout is simply a failed probe.
            Err(_) => (Outcome::Fail, OpValue::error("timeout")),
        };
        ctx.record(client, OpKind::Probe, &t.socket_id, node, call, outcome, value);
        ctx.think(&mut rng).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `testdata/history.jsonl` is what the suite wrote before its operations were typed: one
    /// line of each kind and outcome; then cloud probes (served, turned away, unanswered), as
    /// the suite writes them since they were added.
    #[test]
    fn history_lines_read_and_write_back_unchanged() {
        let history = include_str!("../testdata/history.jsonl");
        for line in history.lines() {
            let op: Op = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&op).unwrap(), line);
        }
    }

    #[test]
    fn a_probe_answer_names_the_socket_mover_and_claim() {
        let v = served("s-1 7 12".into());
        assert_eq!(v.socket_id(), Some("s-1"));
        assert_eq!(v.seq(), Some(12));
        assert!(matches!(served(String::new()), OpValue::Served { socket_id: None, mover: None, seq: None, .. }));
    }
}
