//! What the tests share: users with SSH keys, `ssh -R` tunnels, requests, metrics.

use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_api::UserCreate;
use mysocket_testkit::*;

/// A user with a fresh SSH key, logged in through node `via`: (key path, user, authorised client).
pub async fn ssh_user(
    c: &TestCluster,
    dir: &std::path::Path,
    via: u64,
    name: &str,
) -> (std::path::PathBuf, mysocket_api::User, mysocket_api::ApiClient) {
    let (key, public) = ssh_keygen(dir, name);
    let (email, password) = (format!("{name}@example.com"), format!("{name}-pass"));
    let api = c.api(via);
    let u = api
        .create_user(&UserCreate {
            name: name.into(),
            email: email.clone(),
            password: password.clone(),
            sshkey: public,
        })
        .await
        .unwrap();
    let token = api.login(&email, &password).await.unwrap().token;
    (key, u, api.with_token(token))
}

pub struct Ssh(pub Child);

impl Drop for Ssh {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn ssh_forward(key: &std::path::Path, user: &str, host: &str, relay_port: u16, origin: u16) -> Ssh {
    ssh_tunnel(key, user, (host, 2222), relay_port, origin, Out::None)
}

/// `ssh -R` with a session channel (no `-N`), its output (banner, log lines) to `out`.
pub fn ssh_logged(
    key: &std::path::Path,
    user: &str,
    host: &str,
    relay_port: u16,
    origin: u16,
    out: &std::path::Path,
) -> Ssh {
    ssh_tunnel(key, user, (host, 2222), relay_port, origin, Out::File(out))
}

/// Where `ssh`'s output goes: nowhere and no session channel (`-N`), a file, or a pipe the
/// test reads when it chooses.
pub enum Out<'a> {
    None,
    File(&'a std::path::Path),
    Pipe,
}

pub fn ssh_tunnel(
    key: &std::path::Path,
    user: &str,
    (host, port): (&str, u16),
    relay_port: u16,
    origin: u16,
    out: Out,
) -> Ssh {
    let (stdout, no_session) = match out {
        Out::None => (Stdio::null(), true),
        Out::File(p) => (Stdio::from(std::fs::File::create(p).unwrap()), false),
        Out::Pipe => (Stdio::piped(), false),
    };
    let child = Command::new("ssh")
        .args(if no_session { &["-N"][..] } else { &[][..] })
        .args([
            "-T",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
        ])
        .args(["-o", "BatchMode=yes", "-o", "ServerAliveInterval=5", "-o", "LogLevel=ERROR", "-i"])
        .arg(key)
        .args(["-p", &port.to_string(), "-l", user, "-R", &format!("{relay_port}:127.0.0.1:{origin}"), host])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ssh");
    Ssh(child)
}

pub async fn get(node_ip: &str, host: &str, auth: Option<(&str, &str)>) -> (u16, String) {
    let mut r = reqwest::Client::new().get(format!("http://{node_ip}:8080/some/path")).header("host", host);
    if let Some((u, p)) = auth {
        r = r.basic_auth(u, Some(p));
    }
    match r.send().await {
        Ok(resp) => (resp.status().as_u16(), resp.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The body of the first 200 that `host` answers through the node at `node_ip`.
pub async fn answered(node_ip: &str, host: &str, what: &str) -> String {
    eventually(Duration::from_secs(20), what, || async move {
        let (status, body) = get(node_ip, host, None).await;
        (status == 200).then_some(body)
    })
    .await
}

pub fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// A request over TLS (verified with the cluster CA) or plain TCP; returns what came back.
pub async fn request(ip: &str, port: u16, tls: Option<(&tokio_rustls::TlsConnector, &str)>, host: &str) -> String {
    let Ok(tcp) = tokio::net::TcpStream::connect((ip, port)).await else { return String::new() };
    let req = format!("GET /via-{port} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let answer = match tls {
        Some((conn, name)) => {
            let Ok(s) = conn.connect(rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(), tcp).await
            else {
                return String::from("tls handshake failed");
            };
            exchange(s, &req).await
        }
        None => exchange(tcp, &req).await,
    };
    answer.map_or_else(|e| format!("no whole answer: {e}"), |a| a.text())
}

/// The first answer to a [`request`] through `ip:port` for `name` (over TLS when `tls` is given)
/// that `ok` accepts, within 20 s.
pub async fn served(
    what: &str,
    (ip, port): (&str, u16),
    tls: Option<&tokio_rustls::TlsConnector>,
    name: &str,
    ok: fn(&str) -> bool,
) -> String {
    eventually(Duration::from_secs(20), what, || async move {
        let r = request(ip, port, tls.map(|c| (c, name)), name).await;
        ok(&r).then_some(r)
    })
    .await
}

/// Writes `req` to `s` and reads the answer to it.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
) -> std::io::Result<HttpAnswer> {
    use tokio::io::AsyncWriteExt;
    s.write_all(req.as_bytes()).await?;
    read_http_answer(&mut s, "GET").await
}

/// Sends `head` on a new connection to `addr` and reads the answer, after which the node must
/// close the connection (the request asked it to, is HTTP/1.0, or was refused).
pub async fn last_answer(addr: &str, head: &[u8]) -> HttpAnswer {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let answer = read_last_http_answer(&mut s, "GET").await;
    answer.unwrap_or_else(|e| panic!("{:?} to {addr}: {e}", String::from_utf8_lossy(head)))
}

/// A tcp socket of a new user whose tunnel `ssh -R` (with a session log, written to the
/// returned path) holds on node 1, to the origin at `origin_port`.
pub async fn logged_tcp_tunnel(
    c: &TestCluster,
    dir: &std::path::Path,
    user: &str,
    origin_port: u16,
) -> (mysocket_api::Socket, Ssh, std::path::PathBuf) {
    let (key, u, api) = ssh_user(c, dir, 1, user).await;
    let tcp = api
        .connect(&SocketCreate { name: "t".into(), socket_type: Some("tcp".into()), ..Default::default() })
        .await
        .unwrap();
    let out = dir.join("session.out");
    let ssh = ssh_logged(&key, &u.user_name, &c.nodes[&1].ip, tcp.tunnels[0].local_port, origin_port, &out);
    (tcp, ssh, out)
}

/// A node's metrics (an operator's call): each sample line `name{labels} value`, by
/// `name{labels}`.
pub async fn scrape(ip: String, operator_token: &str) -> std::collections::HashMap<String, f64> {
    let http = reqwest::Client::new();
    let resp = http.get(format!("http://{ip}:7070/metrics")).bearer_auth(operator_token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let text = resp.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {l}"));
            (k.to_string(), v.parse::<f64>().unwrap_or_else(|_| panic!("a number: {l}")))
        })
        .collect()
}

pub fn sample(m: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key}"))
}

/// A TCP origin that sends back whatever it receives.
pub async fn echo_origin() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}
