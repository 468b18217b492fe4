//! The attacks, each run by its own process (`mysocket-hostile attack NAME`): it hits the
//! cluster for the given time, then prints what it saw as one JSON line.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use rand::Rng;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;

/// What an attacker is told about its target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Node 1's addresses: the one every attack aims at.
    pub api: String,
    pub internal: String,
    pub ssh: String,
    pub http: String,
    pub https: String,
    /// The honest tenant's socket (its dnsname), and a socket whose service never answers.
    pub honest_host: String,
    pub silent_host: String,
    /// An account whose password the login flood guesses.
    pub victim_email: String,
    /// A valid SSH public key, so sign-ups pass validation and reach the password hash.
    pub sshkey: String,
    /// The cluster CA (PEM), for TLS to the HTTPS port.
    pub ca_pem: String,
}

/// What an attacker saw.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Seen {
    /// Requests sent or connections opened.
    pub attempts: u64,
    /// Answers by HTTP status, or outcome (`closed`, `refused`, `held`, `error`).
    pub outcomes: BTreeMap<String, u64>,
    /// Most connections held open at once.
    pub most_held: u64,
    /// Median time the node took to close a connection the attacker kept (ms), if any closed.
    pub median_close_ms: Option<u64>,
}

#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    outcomes: Mutex<BTreeMap<String, u64>>,
    held: AtomicU64,
    most_held: AtomicU64,
    closes_ms: Mutex<Vec<u64>>,
}

impl Tally {
    fn count(&self, what: impl Into<String>) {
        *self.outcomes.lock().unwrap().entry(what.into()).or_default() += 1;
    }
    fn hold(&self) {
        let now = self.held.fetch_add(1, Ordering::Relaxed) + 1;
        self.most_held.fetch_max(now, Ordering::Relaxed);
    }
    fn release(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
    fn seen(&self) -> Seen {
        let mut closes = self.closes_ms.lock().unwrap().clone();
        closes.sort_unstable();
        Seen {
            attempts: self.attempts.load(Ordering::Relaxed),
            outcomes: self.outcomes.lock().unwrap().clone(),
            most_held: self.most_held.load(Ordering::Relaxed),
            median_close_ms: closes.get(closes.len() / 2).copied(),
        }
    }
}

pub const NAMES: &[&str] = &[
    "signup-flood",
    "login-flood",
    "idle-http2",
    "slow-body",
    "silent-service",
    "ssh-flood",
    "internal-strangers",
    "one-address",
    "huge-json",
    "garbage",
];

/// What each attack does, for the report.
pub fn describe(name: &str) -> &'static str {
    match name {
        "signup-flood" => "POST /user with a taken email and a valid key (each costs an argon2 hash) from 32 addresses, 64 at a time, 1,000 a second",
        "login-flood" => "POST /login with wrong passwords for one account and for unknown emails from 32 addresses, 64 at a time, 1,000 a second",
        "idle-http2" => "300 HTTP/2 connections to the HTTPS port from 2 addresses, preface and SETTINGS then silence, reopened a second after the node closes one",
        "slow-body" => "100 HTTP/1 requests to the honest socket announcing 1 MB bodies and sending a byte a second, from one address",
        "silent-service" => "100 requests at a time to a tenant's socket whose service accepts and never answers, from 4 addresses",
        "ssh-flood" => "512 SSH connections from 8 addresses that send a version line and never log in, reopened a second after the node closes one",
        "internal-strangers" => "512 connections to the internal port from 8 addresses with an HTTP/2 preface and no credential, reopened a second after the node closes one",
        "one-address" => "2,000 connections to the public HTTP port from one address, each a request head that never ends, reopened a second after the node closes one",
        "huge-json" => "8 MiB bodies and 1 MiB of nested arrays to POST /user, /login and /socket, 16 at a time from 4 addresses, 50 a second",
        "garbage" => "4 KiB of random bytes to the API, internal, SSH, HTTP and HTTPS ports, 16 connections at a time from 4 addresses, 200 a second",
        _ => "",
    }
}

fn addr(i: usize, base: u8) -> IpAddr {
    IpAddr::from([127, 0, 1, base.wrapping_add(i as u8)])
}

async fn connect_from(from: IpAddr, to: &str) -> std::io::Result<TcpStream> {
    let to: SocketAddr = to.parse().map_err(std::io::Error::other)?;
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(Duration::from_secs(3), s.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

fn client_from(from: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

fn status_name(r: &Result<reqwest::Response, reqwest::Error>) -> String {
    match r {
        Ok(r) => r.status().as_u16().to_string(),
        Err(e) if e.is_timeout() => "timeout".into(),
        Err(_) => "error".into(),
    }
}

/// Runs `workers` loops of `one` until `until`, each starting its next round at most once per
/// `every`: attacks run at a stated rate, so what the suite measures is the node's defence,
/// not the CPU the attacker takes from the machine both run on.
async fn swarm<F, Fut>(workers: usize, until: Instant, every: Duration, one: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let round = Instant::now();
                one(w).await;
                tokio::time::sleep_until((round + every).into()).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn random_string(n: usize) -> String {
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(n).map(char::from).collect()
}

/// Holds `conns` connections opened by `open`, reopening each a second after the node closes it, and
/// records how long the node kept each one.
async fn hold_many<F, Fut>(tally: Arc<Tally>, conns: usize, until: Instant, open: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<Box<dyn Held>>> + Send,
{
    let open = Arc::new(open);
    swarm(conns, until, Duration::ZERO, move |w| {
        let (open, tally) = (open.clone(), tally.clone());
        async move {
            tally.attempts.fetch_add(1, Ordering::Relaxed);
            let mut io = match open(w).await {
                Ok(io) => io,
                Err(_) => {
                    tally.count("refused");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return;
                }
            };
            tally.hold();
            let start = Instant::now();
            let left = until.saturating_duration_since(Instant::now());
            let mut buf = [0u8; 4096];
            let closed = tokio::time::timeout(left, async {
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            tally.release();
            if closed.is_ok() {
                tally.count("closed");
                tally.closes_ms.lock().unwrap().push(start.elapsed().as_millis() as u64);
                // Reopened a second later: the machine running the suite is also the target's.
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                tally.count("held");
            }
        }
    })
    .await;
}

pub trait Held: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Held for T {}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()).flatten() {
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

pub async fn run(name: &str, plan: Plan, seconds: u64) -> Seen {
    let until = Instant::now() + Duration::from_secs(seconds);
    let tally = Arc::new(Tally::default());
    let t = tally.clone();
    match name {
        "signup-flood" => credential_flood(t, plan, until, Guess::SignUp).await,
        "login-flood" => credential_flood(t, plan, until, Guess::LogIn).await,
        "idle-http2" => idle_http2(t, plan, until).await,
        "slow-body" => slow_body(t, plan, until).await,
        "silent-service" => silent_service(t, plan, until).await,
        "ssh-flood" => ssh_flood(t, plan, until).await,
        "internal-strangers" => internal_strangers(t, plan, until).await,
        "one-address" => one_address(t, plan, until).await,
        "huge-json" => huge_json(t, plan, until).await,
        "garbage" => garbage(t, plan, until).await,
        other => panic!("unknown attack {other}"),
    }
    tally.seen()
}

/// What a credential flood's requests try.
#[derive(Clone, Copy)]
enum Guess {
    /// `POST /user` with a taken email.
    SignUp,
    /// `POST /login` with a wrong password.
    LogIn,
}

/// `signup-flood` and `login-flood`: API requests that each cost the node a password hash.
async fn credential_flood(t: Arc<Tally>, plan: Plan, until: Instant, guess: Guess) {
    let clients: Arc<Vec<reqwest::Client>> = Arc::new((0..32).map(|i| client_from(addr(i, 10))).collect());
    swarm(64, until, Duration::from_millis(64), move |w| {
        let (clients, t, plan) = (clients.clone(), t.clone(), plan.clone());
        async move {
            let http = &clients[w % clients.len()];
            t.attempts.fetch_add(1, Ordering::Relaxed);
            let r = match guess {
                Guess::SignUp => {
                    let body = serde_json::json!({"name": "flood", "email": plan.victim_email,
                        "password": random_string(16), "sshkey": plan.sshkey});
                    http.post(format!("http://{}/user", plan.api)).json(&body).send().await
                }
                Guess::LogIn => {
                    let email = if w % 2 == 0 {
                        plan.victim_email.clone()
                    } else {
                        format!("{}@example.org", random_string(10))
                    };
                    let body = serde_json::json!({"email": email, "password": random_string(12)});
                    http.post(format!("http://{}/login", plan.api)).json(&body).send().await
                }
            };
            t.count(status_name(&r));
            // A refused caller that honours Retry-After would wait; an attacker does not.
        }
    })
    .await;
}

/// `idle-http2`: TLS connections that send HTTP/2's preface and SETTINGS, then nothing.
async fn idle_http2(t: Arc<Tally>, plan: Plan, until: Instant) {
    let tls = tls_connector(&plan.ca_pem);
    let (https, host) = (plan.https.clone(), plan.honest_host.clone());
    hold_many(t, 300, until, move |w| {
        let (tls, https, host) = (tls.clone(), https.clone(), host.clone());
        async move {
            let tcp = connect_from(addr(w % 2, 50), &https).await?;
            let name = rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
            let mut s = tokio::time::timeout(Duration::from_secs(5), tls.connect(name, tcp))
                .await
                .map_err(std::io::Error::other)??;
            s.write_all(H2_PREFACE).await?;
            s.write_all(H2_SETTINGS).await?;
            s.flush().await?;
            Ok(Box::new(s) as Box<dyn Held>)
        }
    })
    .await;
}

/// `slow-body`: requests to the honest socket whose bodies come a byte a second.
async fn slow_body(t: Arc<Tally>, plan: Plan, until: Instant) {
    let (http, host) = (plan.http.clone(), plan.honest_host.clone());
    swarm(100, until, Duration::from_secs(1), move |_| {
        let (t, http, host) = (t.clone(), http.clone(), host.clone());
        async move { slow_request(&t, &http, &host, until).await }
    })
    .await;
}

/// One of `slow-body`'s requests, kept trickling until the node closes it or the attack ends.
async fn slow_request(t: &Tally, http: &str, host: &str, until: Instant) {
    t.attempts.fetch_add(1, Ordering::Relaxed);
    let Ok(mut s) = connect_from(addr(0, 60), http).await else {
        t.count("refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
        return;
    };
    let head = format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n\r\n");
    if s.write_all(head.as_bytes()).await.is_err() {
        t.count("error");
        return;
    }
    t.hold();
    let start = Instant::now();
    let outcome = loop {
        if Instant::now() >= until {
            break "held";
        }
        if s.write_all(b"x").await.is_err() {
            break "closed";
        }
        // A closed connection shows on the read side first.
        let mut b = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break "closed",
            _ => {}
        }
    };
    t.release();
    if outcome == "closed" {
        t.closes_ms.lock().unwrap().push(start.elapsed().as_millis() as u64);
    }
    t.count(outcome);
}

/// `silent-service`: requests to a tenant's socket whose service never answers.
async fn silent_service(t: Arc<Tally>, plan: Plan, until: Instant) {
    let clients: Arc<Vec<reqwest::Client>> = Arc::new(
        (0..4)
            .map(|i| {
                reqwest::Client::builder()
                    .local_address(addr(i, 70))
                    .timeout(Duration::from_secs(120))
                    .resolve(&plan.silent_host, plan.http.parse().expect("http address"))
                    .build()
                    .expect("http client")
            })
            .collect(),
    );
    let port = plan.http.rsplit(':').next().unwrap_or("80").to_string();
    let url = format!("http://{}:{port}/", plan.silent_host);
    swarm(100, until, Duration::from_secs(1), move |w| {
        let (clients, t, url) = (clients.clone(), t.clone(), url.clone());
        async move {
            t.attempts.fetch_add(1, Ordering::Relaxed);
            t.hold();
            let r = clients[w % clients.len()].get(&url).send().await;
            t.release();
            t.count(status_name(&r));
        }
    })
    .await;
}

/// `ssh-flood`: SSH connections that send a version line and never log in.
async fn ssh_flood(t: Arc<Tally>, plan: Plan, until: Instant) {
    hold_greeted(t, until, plan.ssh.clone(), 80, &[b"SSH-2.0-hostile\r\n"]).await;
}

/// `internal-strangers`: connections to the internal port with no credential.
async fn internal_strangers(t: Arc<Tally>, plan: Plan, until: Instant) {
    hold_greeted(t, until, plan.internal.clone(), 90, &[H2_PREFACE, H2_SETTINGS]).await;
}

/// Holds 512 connections to `to` from 8 addresses (from `base` on), each of which sent the
/// pieces of `greeting` and then nothing.
async fn hold_greeted(t: Arc<Tally>, until: Instant, to: String, base: u8, greeting: &'static [&'static [u8]]) {
    hold_many(t, 512, until, move |w| {
        let to = to.clone();
        async move {
            let mut s = connect_from(addr(w % 8, base), &to).await?;
            for piece in greeting {
                s.write_all(piece).await?;
            }
            Ok(Box::new(s) as Box<dyn Held>)
        }
    })
    .await;
}

/// `one-address`: many unfinished request heads from a single address.
async fn one_address(t: Arc<Tally>, plan: Plan, until: Instant) {
    let (http, host) = (plan.http.clone(), plan.honest_host.clone());
    hold_many(t, 2000, until, move |_| {
        let (http, host) = (http.clone(), host.clone());
        async move {
            let mut s = connect_from(addr(0, 100), &http).await?;
            s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n").as_bytes()).await?;
            Ok(Box::new(s) as Box<dyn Held>)
        }
    })
    .await;
}

/// `huge-json`: oversized and deeply nested bodies to the API.
async fn huge_json(t: Arc<Tally>, plan: Plan, until: Instant) {
    let clients: Arc<Vec<reqwest::Client>> = Arc::new((0..4).map(|i| client_from(addr(i, 110))).collect());
    let huge: Arc<Vec<u8>> = Arc::new({
        let mut b = br#"{"name":"x","email":"a@b.c","password":""#.to_vec();
        b.resize(8 * 1024 * 1024, b'a');
        b.extend_from_slice(br#"","sshkey":"k"}"#);
        b
    });
    let nested: Arc<Vec<u8>> = Arc::new({
        let mut b = br#"{"email":"#.to_vec();
        b.extend(std::iter::repeat_n(b'[', 1024 * 1024));
        b
    });
    let api = plan.api.clone();
    swarm(16, until, Duration::from_millis(320), move |w| {
        let (clients, t, huge, nested, api) = (clients.clone(), t.clone(), huge.clone(), nested.clone(), api.clone());
        async move {
            let http = &clients[w % clients.len()];
            t.attempts.fetch_add(1, Ordering::Relaxed);
            let (path, body) = match w % 3 {
                0 => ("user", huge.to_vec()),
                1 => ("login", nested.to_vec()),
                _ => ("socket", nested.to_vec()),
            };
            let r = http
                .post(format!("http://{api}/{path}"))
                .header("content-type", "application/json")
                .header("x-access-token", "not-a-token")
                .body(body)
                .send()
                .await;
            t.count(format!("{path} {}", status_name(&r)));
        }
    })
    .await;
}

/// `garbage`: random bytes to every port of node 1.
async fn garbage(t: Arc<Tally>, plan: Plan, until: Instant) {
    let ports = [plan.api.clone(), plan.internal.clone(), plan.ssh.clone(), plan.http.clone(), plan.https.clone()];
    let ports = Arc::new(ports);
    swarm(16, until, Duration::from_millis(80), move |w| {
        let (t, ports) = (t.clone(), ports.clone());
        async move {
            let to = &ports[(w + t.attempts.fetch_add(1, Ordering::Relaxed) as usize) % ports.len()];
            let Ok(mut s) = connect_from(addr(w % 4, 120), to).await else {
                t.count("refused");
                return;
            };
            let junk: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
            let _ = s.write_all(&junk).await;
            let mut b = vec![0u8; 8192];
            let answered = tokio::time::timeout(Duration::from_secs(3), async {
                loop {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            t.count(if answered.is_ok() { "closed" } else { "held" });
        }
    })
    .await;
}
