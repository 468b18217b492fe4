//! # mysocket-testkit
//!
//! The harness the workspace's integration tests share (a dev-dependency only).
//! `TestCluster`: real `mysocketd` processes on their own loopback addresses. Each test process
//! gets its own 127.A.B.0/24 block (from its pid; A is 1 to 254, and 255 for a process's 32nd
//! cluster on) and each cluster in it a slot of eight addresses, so tests run in parallel without port clashes. Also origins (services behind a
//! tunnel), SSH keys, test PKI, and `http_answer`: the one reader of HTTP/1.x answers for
//! tests that speak HTTP by hand.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use mysocket_api::ApiClient;
use mysocket_api::UserCreate;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

mod http_answer;
pub use http_answer::read_http_answer;
pub use http_answer::read_last_http_answer;
pub use http_answer::HttpAnswer;

pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEKB/+HUsFGo5IjxjdpUNkfai/lOgRCdHyy1c7BmPvcN test@mysocket";

static SLOT: AtomicU8 = AtomicU8::new(0);

/// Polls `f` until it returns `Some`, or panics after `timeout` saying what was awaited.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `mysocketd` under test: the release binary beside the test executable
/// (`target/release/deps/..` -> `target/release`), which `cargo test` builds for the node
/// package's tests and `cargo build --workspace` for everyone's.
pub fn mysocketd() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let p = exe.parent().and_then(|d| d.parent()).expect("target dir").join("mysocketd");
    assert!(p.exists(), "{} not built; run cargo build --release --workspace first", p.display());
    p
}

pub struct TestNode {
    pub id: u64,
    pub ip: String,
    /// `https` when the API serves TLS (`--api-tls`).
    pub scheme: &'static str,
    pub child: Option<Child>,
    pub args: Vec<String>,
}

impl TestNode {
    pub fn api_url(&self) -> String {
        format!("{}://{}:7070", self.scheme, self.ip)
    }
    pub fn raft_addr(&self) -> String {
        format!("{}:7071", self.ip)
    }
}

pub struct Builder {
    nodes: u64,
    log: &'static str,
    snapshot_threshold: u64,
    extra: Vec<String>,
    internal_tls: bool,
}

impl Builder {
    pub fn nodes(mut self, n: u64) -> Self {
        self.nodes = n;
        self
    }
    /// The nodes' log filter (default `info`).
    pub fn log(mut self, filter: &'static str) -> Self {
        self.log = filter;
        self
    }
    pub fn snapshot_threshold(mut self, n: u64) -> Self {
        self.snapshot_threshold = n;
        self
    }
    /// Mutual TLS on the internal port, with a CA and a certificate made for the test.
    pub fn internal_tls(mut self) -> Self {
        self.internal_tls = true;
        self
    }

    /// A flag every node gets; `{ip}` in it is replaced by the node's address.
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_string());
        self
    }

    /// Starts the nodes and waits until the cluster is ready (leader, bootstrap done).
    pub async fn start(self) -> TestCluster {
        let n = SLOT.fetch_add(1, Ordering::SeqCst);
        assert!(n < 62, "too many clusters in one test process");
        let pid = std::process::id();
        // 31 slots in the process's 127.A.B.0/24; a process with more clusters goes on in
        // 127.255.B.0/24 (no process's first block is there).
        let (a, slot) = if n < 31 { (1 + (pid >> 8) % 254, n) } else { (255, n - 31) };
        let base = format!("127.{a}.{}", pid & 0xff);
        let dir = tempfile::Builder::new().prefix("mysocket-test-").tempdir().expect("temp dir");
        let secret = format!("test-secret-{pid}-{slot}-0123456789");
        std::fs::write(dir.path().join("secret"), &secret).unwrap();
        let operator_token = format!("test-operator-{pid}-{slot}-9876543210");
        std::fs::write(dir.path().join("operator-token"), &operator_token).unwrap();
        let mut c = TestCluster {
            dir,
            base,
            slot,
            secret,
            operator_token,
            log: self.log,
            snapshot_threshold: self.snapshot_threshold,
            extra: self.extra,
            nodes: BTreeMap::new(),
        };
        if self.internal_tls {
            let ips: Vec<String> = (1..=7).map(|id| c.node_ip(id)).collect();
            let (ca, cert, key) = test_pki(&ips);
            for (name, pem) in [("ca.pem", ca), ("node.pem", cert), ("node.key", key)] {
                std::fs::write(c.dir.path().join(name), pem).unwrap();
            }
            for (flag, name) in [
                ("--internal-tls-ca", "ca.pem"),
                ("--internal-tls-cert", "node.pem"),
                ("--internal-tls-key", "node.key"),
            ] {
                c.extra.push(flag.to_string());
                c.extra.push(c.dir.path().join(name).to_str().unwrap().to_string());
            }
        }
        let initial: Vec<String> = (1..=self.nodes).map(|id| format!("{id}={}", c.node_raft_addr(id))).collect();
        let initial = initial.join(",");
        for id in 1..=self.nodes {
            c.spawn(id, vec!["--initial-cluster".into(), initial.clone()]);
        }
        c.wait_ready().await;
        c
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    base: String,
    slot: u8,
    pub secret: String,
    /// The operator credential every node was given (`--operator-token-file`).
    pub operator_token: String,
    log: &'static str,
    snapshot_threshold: u64,
    extra: Vec<String>,
    pub nodes: BTreeMap<u64, TestNode>,
}

impl TestCluster {
    pub fn builder() -> Builder {
        Builder { nodes: 3, log: "info", snapshot_threshold: 1000, extra: Vec::new(), internal_tls: false }
    }

    pub fn node_ip(&self, id: u64) -> String {
        assert!((1..=7).contains(&id), "node ids 1..=7 fit in a slot");
        format!("{}.{}", self.base, self.slot as u64 * 8 + id)
    }

    pub fn node_raft_addr(&self, id: u64) -> String {
        format!("{}:7071", self.node_ip(id))
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Starts node `id` with the cluster's common flags plus `args`.
    pub fn spawn(&mut self, id: u64, args: Vec<String>) {
        let ip = self.node_ip(id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).unwrap();
        let mut cmd = Command::new(mysocketd());
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--host")
            .arg(&ip)
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--cluster-secret-file")
            .arg(self.dir.path().join("secret"))
            .arg("--operator-token-file")
            .arg(self.dir.path().join("operator-token"))
            .arg("--snapshot-threshold")
            .arg(self.snapshot_threshold.to_string())
            .arg("--log")
            .arg(self.log)
            // Tests make many accounts and changes from one address; a test of the limits
            // sets its own after these.
            .args(["--login-rate", "100000", "--signup-rate", "1000000", "--write-rate", "100000"])
            .args(["--max-connections-per-source", "100000"])
            .args(self.extra.iter().map(|a| a.replace("{ip}", &ip)))
            .args(&args)
            .env_remove("MYSOCKET_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("start mysocketd");
        let scheme = if self.extra.iter().any(|a| a == "--api-tls") { "https" } else { "http" };
        self.nodes.insert(id, TestNode { id, ip, scheme, child: Some(child), args });
    }

    /// Restarts a stopped node with the arguments it was first started with.
    pub fn restart(&mut self, id: u64) {
        let args = self.nodes[&id].args.clone();
        assert!(self.nodes[&id].child.is_none(), "node {id} is still running");
        self.spawn(id, args);
    }

    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes node `id` (SIGSTOP): its sockets stay open and nothing answers on them.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    fn signal(&self, id: u64, sig: &str) {
        let pid = self.nodes[&id].child.as_ref().expect("node running").id();
        assert!(Command::new("kill").arg(sig).arg(pid.to_string()).status().unwrap().success());
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn sigterm(&mut self, id: u64) -> std::process::ExitStatus {
        self.terminate(id);
        self.wait_exit(id)
    }

    /// Sends SIGTERM (with the `kill` command, not libc) without waiting.
    pub fn terminate(&self, id: u64) {
        self.signal(id, "-TERM");
    }

    /// Waits for node `id` to exit.
    pub fn wait_exit(&mut self, id: u64) -> std::process::ExitStatus {
        let mut c = self.nodes.get_mut(&id).and_then(|n| n.child.take()).expect("node running");
        c.wait().unwrap()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// A client of node `id` without a credential (trusting the cluster CA, which the node
    /// writes to its data folder, when the API serves HTTPS).
    pub fn api(&self, id: u64) -> ApiClient {
        let c = ApiClient::new([self.nodes[&id].api_url()]);
        match self.nodes[&id].scheme {
            "https" => {
                c.with_ca_pem(&std::fs::read(self.data_dir(id).join("ca.pem")).expect("the cluster CA")).unwrap()
            }
            _ => c,
        }
    }

    /// A client of node `id` with the operator credential.
    pub fn operator(&self, id: u64) -> ApiClient {
        self.api(id).with_token(self.operator_token.clone())
    }

    /// The operators' dashboard of node `id`, as a browser given the operator token gets it.
    pub async fn operator_page(&self, id: u64) -> String {
        let r = reqwest::Client::new()
            .get(format!("{}/operator", self.nodes[&id].api_url()))
            .basic_auth("ops", Some(&self.operator_token))
            .send()
            .await
            .expect("the dashboard");
        r.text().await.expect("the dashboard's page")
    }

    /// Waits until every running node answers `/readyz` with 200.
    pub async fn wait_ready(&self) {
        for id in self.running() {
            let url = format!("{}/readyz", self.nodes[&id].api_url());
            // Readiness only: the certificate is checked by the clients the tests use.
            let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
            eventually(Duration::from_secs(30), &format!("node {id} ready"), || {
                let (url, http) = (url.clone(), http.clone());
                async move {
                    let r = http.get(&url).send().await.ok()?;
                    r.status().is_success().then_some(())
                }
            })
            .await;
            // A ready node writes the cluster CA to its data folder (tests of TLS read it).
            let ca = self.data_dir(id).join("ca.pem");
            eventually(Duration::from_secs(10), &format!("node {id}'s ca.pem"), || {
                let ca = ca.clone();
                async move { ca.exists().then_some(()) }
            })
            .await;
        }
    }

    /// The leader every running node agrees on.
    pub async fn agreed_leader(&self, timeout: Duration) -> u64 {
        let ids = self.running();
        eventually(timeout, "running nodes to agree on a leader", || {
            let clients: Vec<ApiClient> = ids.iter().map(|id| self.api(*id)).collect();
            let ids = ids.clone();
            async move {
                let mut leader = None;
                for c in &clients {
                    let v = c.cluster().await.ok()?;
                    let l = v.leader?;
                    if !ids.contains(&l) || leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                leader
            }
        })
        .await
    }

    /// Waits until all running nodes have applied the same index with the same digest.
    pub async fn converged(&self) -> mysocket_api::DigestView {
        let ids = self.running();
        eventually(Duration::from_secs(30), "replicas to converge", || {
            let clients: Vec<ApiClient> = ids.iter().map(|id| self.operator(*id)).collect();
            async move {
                let mut first: Option<mysocket_api::DigestView> = None;
                for c in &clients {
                    let d = c.digest().await.ok()?;
                    match &first {
                        None => first = Some(d),
                        Some(f) if f.digest == d.digest && f.last_applied == d.last_applied => {}
                        Some(_) => return None,
                    }
                }
                first
            }
        })
        .await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill9(id);
        }
        if std::thread::panicking() {
            for id in self.nodes.keys() {
                eprintln!("----- node {id} log (last 60 lines) -----");
                let log = self.log(*id);
                let lines: Vec<&str> = log.lines().collect();
                for l in &lines[lines.len().saturating_sub(60)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// A tiny origin: answers every request with its request head as the body.
pub async fn origin() -> u16 {
    counting_origin().await.0
}

/// [`origin`], and how many connections it has accepted.
pub async fn counting_origin() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = next_head(&mut s, &mut buf).await {
                    let body = format!("origin saw:\n{}", String::from_utf8_lossy(&head));
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// The next request head on `s` (what came after it stays in `buf`), or None when the
/// connection ends first.
pub async fn next_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    Some(buf.drain(..end).collect())
}

/// A CA and one certificate (server and client) valid for the given IPs: (ca, cert, key) PEM.
pub fn test_pki(ips: &[String]) -> (String, String, String) {
    use rcgen::BasicConstraints;
    use rcgen::CertificateParams;
    use rcgen::ExtendedKeyUsagePurpose;
    use rcgen::IsCa;
    use rcgen::Issuer;
    use rcgen::KeyPair;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(ips.to_vec()).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// A fresh ed25519 key pair at `dir/name` (OpenSSH's `ssh-keygen`, comment `name`): the
/// private key's path and the public key's line.
pub fn ssh_keygen(dir: &std::path::Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("run ssh-keygen (install openssh-client)");
    assert!(st.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("the public key");
    (key, public.trim().to_string())
}

/// An http socket `name` protected with user `bob` and password `open sesame`.
pub fn protected_http(name: &str) -> mysocket_api::SocketCreate {
    mysocket_api::SocketCreate {
        name: name.into(),
        protected_socket: true,
        protected_username: Some("bob".into()),
        protected_password: Some("open sesame".into()),
        ..Default::default()
    }
}

pub fn user(n: usize) -> UserCreate {
    UserCreate {
        name: format!("User {n}"),
        email: format!("user{n}@example.com"),
        password: format!("password-{n}"),
        sshkey: SSH_KEY.to_string(),
    }
}

/// Requests through `ip` for `host` at `path`, one after another on one connection, each
/// answered `want` within 5 s.
pub async fn all_answered(ip: &str, host: &str, path: &str, count: usize, want: u16, what: &str) {
    let client = reqwest::Client::new();
    for i in 0..count {
        let send = client.get(format!("http://{ip}:8080{path}")).header("host", host).send();
        let status = match tokio::time::timeout(Duration::from_secs(5), send).await {
            Ok(Ok(r)) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                status
            }
            _ => 0,
        };
        assert_eq!(status, want, "request {i} of {count}, {what}");
    }
}

/// Reads `from` to its end on a thread of its own; what came so far is in the buffer.
pub fn read_in_background(mut from: impl std::io::Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    seen
}

/// The count in a "(N<note>" line among what `read_in_background` has seen so far.
pub fn dropped_count(seen: &std::sync::Mutex<Vec<u8>>, note: &str) -> Option<u64> {
    let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let at = text.find(note)?;
    text[..at].rsplit('(').next()?.parse().ok()
}

/// Runs a browser test script (Python with Selenium and Chromium: `MYSOCKET_TEST_PYTHON`, or the
/// venv `scripts/test.sh` makes) with `args`, and returns the last line it printed (its
/// findings, as JSON). Panics with everything it said when it fails.
pub async fn browser_script(script: &str, args: Vec<String>) -> String {
    let python =
        std::env::var("MYSOCKET_TEST_PYTHON").unwrap_or_else(|_| "/var/tmp/mysocket-browser-venv/bin/python".into());
    let script = script.to_string();
    let out = tokio::task::spawn_blocking(move || Command::new(python).arg(script).args(args).output().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the browser test failed: {said}\n{}", String::from_utf8_lossy(&out.stderr));
    said.trim().lines().last().unwrap_or_default().to_string()
}

/// The OpenID provider for the tests: `oidc-provider-mock` (PyPI), from
/// `MYSOCKET_OIDC_PROVIDER` or the venv `scripts/test.sh` makes, with users alice@example.com
/// and bob@other.org (verified) and carol@example.com (not verified). Stopped when dropped.
pub struct OidcProvider {
    child: std::process::Child,
    pub issuer: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    pub async fn start(port: u16) -> OidcProvider {
        let bin = std::env::var("MYSOCKET_OIDC_PROVIDER")
            .unwrap_or_else(|_| "/var/tmp/mysocket-browser-venv/bin/oidc-provider-mock".into());
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: scripts/test.sh installs oidc-provider-mock (or set MYSOCKET_OIDC_PROVIDER)"
        );
        let user = |email: &str, verified: bool| {
            format!(r#"{{"sub": "{email}", "email": "{email}", "email_verified": {verified}}}"#)
        };
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--require-nonce"])
            .args(["--user-claims", &user("alice@example.com", true)])
            .args(["--user-claims", &user("bob@other.org", true)])
            .args(["--user-claims", &user("carol@example.com", false)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let issuer = format!("http://127.0.0.1:{port}");
        let url = format!("{issuer}/.well-known/openid-configuration");
        eventually(Duration::from_secs(30), "the OpenID provider starts", || {
            let url = url.clone();
            async move { reqwest::get(&url).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        OidcProvider { child, issuer }
    }
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `builder` with the cluster's identity provider (client `mysocket-edge`, its secret in a
/// file in `dir`), started and ready.
pub async fn with_oidc_provider(builder: Builder, provider: &OidcProvider, dir: &std::path::Path) -> TestCluster {
    let secret = dir.join("oidc-secret");
    std::fs::write(&secret, "test-client-secret\n").unwrap();
    let c = builder
        .arg("--oidc-issuer")
        .arg(&provider.issuer)
        .arg("--oidc-client-id")
        .arg("mysocket-edge")
        .arg("--oidc-client-secret-file")
        .arg(secret.to_str().unwrap())
        .start()
        .await;
    c.wait_ready().await;
    c
}
