//! The data plane with real processes and the real OpenSSH client: `ssh -R` to a node's SSH
//! server, a public HTTP request routed by Host to the service behind the tunnel, protected
//! sockets, refused strangers and foreign ports, newest connection wins.

use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_api::UserCreate;
use mysocket_testkit::*;

/// A user with a fresh SSH key, logged in through node `via`: (key path, user, authorised client).
async fn ssh_user(
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

struct Ssh(Child);

impl Drop for Ssh {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ssh_forward(key: &std::path::Path, user: &str, host: &str, relay_port: u16, origin: u16) -> Ssh {
    ssh_tunnel(key, user, (host, 2222), relay_port, origin, Out::None)
}

/// `ssh -R` with a session channel (no `-N`), its output (banner, log lines) to `out`.
fn ssh_logged(
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
enum Out<'a> {
    None,
    File(&'a std::path::Path),
    Pipe,
}

fn ssh_tunnel(
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

async fn get(node_ip: &str, host: &str, auth: Option<(&str, &str)>) -> (u16, String) {
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
async fn answered(node_ip: &str, host: &str, what: &str) -> String {
    eventually(Duration::from_secs(20), what, || async move {
        let (status, body) = get(node_ip, host, None).await;
        (status == 200).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_reverse_forward_serves_public_http() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "alice").await;
    let (stranger_key, _) = ssh_keygen(dir.path(), "stranger");
    let sock = api
        .connect(&SocketCreate { name: "web".into(), socket_type: Some("http".into()), ..Default::default() })
        .await
        .unwrap();
    let relay = sock.tunnels[0].local_port;
    let origin_port = origin().await;
    let n1 = c.nodes[&1].ip.clone();

    // Before any tunnel: a clear 503; an unknown host: 404.
    assert_eq!(get(&n1, &sock.dnsname, None).await.0, 503);
    assert_eq!(get(&n1, "nope.localhost", None).await.0, 404);

    // A stranger's key and a port that is no tunnel of the account are refused.
    let mut bad = ssh_forward(&stranger_key, &u.user_name, &n1, relay, origin_port);
    assert!(!bad.0.wait().unwrap().success(), "a stranger's key was accepted");
    let mut bad = ssh_forward(&key, &u.user_name, &n1, 9, origin_port);
    assert!(!bad.0.wait().unwrap().success(), "a foreign relay port was accepted");

    let _tunnel = ssh_forward(&key, &u.user_name, &n1, relay, origin_port);
    let host = sock.dnsname.to_uppercase() + ":8080";
    let body = answered(&n1, &host, "the URL to answer through node 1").await;
    assert!(body.contains("GET /some/path"), "{body}");
    assert!(body.to_lowercase().contains("x-forwarded-for: "), "{body}");
    assert!(body.to_lowercase().contains("x-forwarded-proto: http"), "{body}");
    // The fields the client's Connection names concern its connection only, on both paths
    // (HTTP/1.1 here; HTTP/1.0 goes through hyper); the framing and Host stay.
    for version in ["1.1", "1.0"] {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(format!("{n1}:8080")).await.unwrap();
        let head = format!(
            "GET /named HTTP/{version}\r\nHost: {}\r\nConnection: close, X-Secret, host, Content-Length\r\nX-Secret: 1\r\nKeep-Alive: 300\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n",
            sock.dnsname
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        let seen = answer.to_lowercase();
        assert!(seen.starts_with(&format!("http/{version} 200")) && seen.contains("get /named"), "{answer}");
        assert!(seen.contains("x-kept: 2") && seen.contains(&format!("host: {}", sock.dnsname)), "{answer}");
        assert!(!seen.contains("x-secret") && !seen.contains("keep-alive: 300"), "{answer}");
    }
    // One Host per request (RFC 9112 §3.2): two, or none in HTTP/1.1, get 400 and never reach
    // the service; an absolute-form target names the socket itself (Host is ignored), and the
    // service gets an origin-form target with that name as its Host.
    let name = &sock.dnsname;
    for (what, head, want) in [
        ("two Host fields", format!("GET /two HTTP/1.1\r\nHost: {name}\r\nHost: elsewhere.example\r\n\r\n"), "400"),
        ("no Host", "GET /none HTTP/1.1\r\n\r\n".to_string(), "400"),
        (
            "an absolute-form target",
            format!(
                "GET http://user@{name}:8080/abs?q=1 HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n"
            ),
            "200",
        ),
    ] {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(format!("{n1}:8080")).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with(&format!("HTTP/1.1 {want} ")), "{what}: {answer}");
        let seen = answer.to_lowercase();
        if want == "400" {
            assert!(!seen.contains("origin saw"), "{what} reached the service: {answer}");
        } else {
            assert!(seen.contains("get /abs?q=1 http/1.1") && seen.contains(&format!("host: {name}:8080")), "{answer}");
            assert!(!seen.contains("elsewhere") && !seen.contains("user@"), "{what}: {answer}");
        }
    }
    let view = c.operator(2).cluster().await.unwrap();
    assert_eq!(view.nodes.iter().find(|n| n.id == 1).unwrap().tunnels, Some(1), "the claim is replicated");

    // Every node serves the socket: nodes 2 and 3 relay to node 1, which holds the tunnel.
    for n in [2u64, 3] {
        let body = answered(&c.nodes[&n].ip, &sock.dnsname, &format!("the URL through node {n}")).await;
        assert!(body.contains("GET /some/path"), "{body}");
    }

    // Fencing: the holder refuses a relay that carries an epoch it does not hold; a relay
    // without the cluster credential is refused before anything else is said.
    let open = |epoch| mysocket_api::internal::RelayOpen {
        socket_id: sock.socket_id.clone(),
        tunnel_id: sock.tunnels[0].tunnel_id.clone(),
        epoch,
        client_addr: "127.0.0.1:1".into(),
        log_connection: false,
    };
    let holder = c.node_raft_addr(1);
    let peers = mysocket_node::peers::Peers::new(&c.secret, None).unwrap();
    let stranger = mysocket_node::peers::Peers::new("not-the-cluster-secret", None).unwrap();
    let err = mysocket_node::relay::connect(&stranger, &holder, open(1)).await.err().expect("stranger refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    // A hello that is no hello gets a clear refusal, and the port goes on serving.
    {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let mut raw = tokio::net::TcpStream::connect(&holder).await.unwrap();
        raw.write_all(mysocket_node::relay::MAGIC).await.unwrap();
        raw.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
        let mut head = [0u8; 3];
        raw.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], tonic::Code::InvalidArgument as u8, "an oversized hello part");
    }
    let err = mysocket_node::relay::connect(&peers, &holder, open(0)).await.err().expect("stale epoch refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    // The current epoch is accepted, and the relay reaches the service.
    let (mut relay, _) = mysocket_node::relay::connect(&peers, &holder, open(1)).await.expect("current epoch accepted");
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    relay.write_all(format!("GET /fenced HTTP/1.1\r\nHost: {}\r\n\r\n", sock.dnsname).as_bytes()).await.unwrap();
    relay.shutdown().await.unwrap(); // the origin answers, sees the end of its input and closes
    let mut answer = String::new();
    relay.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("GET /fenced"), "{answer}");
}

/// A socket created through any node is served by that node as soon as the API answers: a
/// follower that forwarded the write applies it before it replies, so its public port knows
/// the socket at once (503: no tunnel yet — not 404), and forgets a deleted one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_served_by_the_node_that_created_it_at_once() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let leader = c.agreed_leader(Duration::from_secs(10)).await;
    let followers: Vec<u64> = [1u64, 2, 3].into_iter().filter(|n| *n != leader).collect();
    let (_, _, api) = ssh_user(&c, dir.path(), followers[0], "ryw").await;
    let token = api.token().unwrap().to_string();
    for i in 0..30 {
        let via = followers[i % 2];
        let api = c.api(via).with_token(token.clone());
        let create = SocketCreate { name: format!("ryw-{i}"), socket_type: Some("http".into()), ..Default::default() };
        let sock = api.connect(&create).await.unwrap();
        let (status, body) = get(&c.nodes[&via].ip, &sock.dnsname, None).await;
        assert_eq!(status, 503, "socket {i} through node {via} (leader {leader}): {body}");
        // And gone at once once deleted there (an account holds ten http sockets at most).
        api.delete_socket(&sock.socket_id).await.unwrap();
        let (status, body) = get(&c.nodes[&via].ip, &sock.dnsname, None).await;
        assert_eq!(status, 404, "deleted socket {i} through node {via} (leader {leader}): {body}");
    }
}

/// A node whose SSH server listens on all interfaces gives clients an address they can dial,
/// not `0.0.0.0`: the host other nodes reach it by, or the operator's `--advertise-host` — in
/// the node list (`GET /cluster`, which `mysocketctl` falls back on) and as a tunnel's server,
/// and an OpenSSH tunnel to exactly that address serves the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_all_interfaces_gives_clients_an_address_they_can_dial() {
    let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let all = format!("0.0.0.0:{port}");
    let mut c = TestCluster::builder().nodes(1).arg("--ssh-addr").arg(&all).start().await;
    let ip = c.nodes[&1].ip.clone();
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "anywhere").await;
    let origin = origin().await;
    let create = SocketCreate { name: "anywhere".into(), socket_type: Some("http".into()), ..Default::default() };
    let sock = api.connect(&create).await.unwrap();
    let tunnel = &sock.tunnels[0];
    let node = |v: mysocket_api::ClusterView| v.nodes.into_iter().find(|n| n.id == 1).unwrap();

    let server = format!("{ip}:{port}");
    assert_eq!(tunnel.tunnel_server, server, "the host of the raft address, with the SSH port");
    let n = node(api.cluster().await.unwrap());
    assert_eq!((n.ssh_addr.as_str(), n.api_addr), (server.as_str(), format!("{ip}:7070")));
    let (host, p) = tunnel.tunnel_server.rsplit_once(':').unwrap();
    let ssh = ssh_tunnel(&key, &u.user_name, (host, p.parse().unwrap()), tunnel.local_port, origin, Out::None);
    let body = answered(&ip, &sock.dnsname, "the socket through the advertised SSH address").await;
    assert!(body.contains("origin saw"), "{body}");
    drop(ssh);

    // The operator names the host; the node registers it again when it restarts.
    c.kill9(1);
    c.spawn(1, vec!["--advertise-host".into(), "localhost".into()]);
    let api = c.api(1).with_token(api.token().unwrap().to_string());
    let n = eventually(Duration::from_secs(20), "node 1 registered under its advertised host", || {
        let api = api.clone();
        async move { api.cluster().await.ok().map(node).filter(|n| n.ssh_addr.starts_with("localhost:")) }
    })
    .await;
    assert_eq!((n.ssh_addr, n.api_addr), (format!("localhost:{port}"), "localhost:7070".to_string()));
    let sock = api.socket(&sock.socket_id).await.unwrap();
    assert_eq!(sock.tunnels[0].tunnel_server, format!("localhost:{port}"));
    // `localhost` is 127.0.0.1, which a listener on all interfaces takes.
    let _ssh = ssh_tunnel(&key, &u.user_name, ("localhost", port), tunnel.local_port, origin, Out::None);
    let body = answered(&ip, &sock.dnsname, "the socket through localhost").await;
    assert!(body.contains("origin saw"), "{body}");
}

/// With TLS on the internal port, relays go through it too; a relay without TLS gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_cross_a_mutual_tls_internal_port() {
    let c = TestCluster::builder().internal_tls().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "tls-alice").await;
    let sock = api
        .connect(&SocketCreate { name: "web".into(), socket_type: Some("http".into()), ..Default::default() })
        .await
        .unwrap();
    let origin_port = origin().await;
    let _tunnel = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, sock.tunnels[0].local_port, origin_port);
    for n in [1u64, 2, 3] {
        let body = answered(&c.nodes[&n].ip, &sock.dnsname, &format!("the URL through node {n}")).await;
        assert!(body.contains("GET /some/path"), "{body}");
    }
    let plain = mysocket_node::peers::Peers::new(&c.secret, None).unwrap();
    let open = mysocket_api::internal::RelayOpen {
        socket_id: sock.socket_id.clone(),
        tunnel_id: sock.tunnels[0].tunnel_id.clone(),
        epoch: 1,
        client_addr: "127.0.0.1:1".into(),
        log_connection: false,
    };
    assert!(
        mysocket_node::relay::connect(&plain, &c.node_raft_addr(1), open).await.is_err(),
        "a relay without TLS was accepted by a TLS internal port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_sockets_and_newest_connection_wins() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 2, "bob").await;
    let sock = api.connect(&protected_http("private")).await.unwrap();
    let relay = sock.tunnels[0].local_port;
    let origin_port = origin().await;
    let n1 = c.nodes[&1].ip.clone();
    let n2 = c.nodes[&2].ip.clone();

    let first_out = dir.path().join("first.out");
    let mut first = ssh_logged(&key, &u.user_name, &n1, relay, origin_port, &first_out);
    let body = eventually(Duration::from_secs(20), "the protected URL to answer with credentials", || {
        let (n1, host) = (n1.clone(), sock.dnsname.clone());
        async move {
            let (status, body) = get(&n1, &host, Some(("bob", "open sesame"))).await;
            (status == 200).then_some(body)
        }
    })
    .await;
    assert_eq!(get(&n1, &sock.dnsname, None).await.0, 401);
    assert_eq!(get(&n1, &sock.dnsname, Some(("bob", "wrong"))).await.0, 401);
    assert!(!body.to_lowercase().contains("authorization:"), "credentials leaked to the service: {body}");
    let tid = sock.tunnels[0].tunnel_id.clone();
    let holder = c.api(3).with_token(api.token().unwrap()).tunnel(&sock.socket_id, &tid).await.unwrap().session;
    let first_epoch = holder.expect("the API shows who holds the tunnel").epoch;
    assert_eq!(holder.map(|h| h.node_id), Some(1));

    // A newer connection for the same tunnel, to another node, wins: the first is closed.
    let _second = ssh_forward(&key, &u.user_name, &n2, relay, origin_port);
    eventually(Duration::from_secs(20), "the older SSH session to be closed", || {
        let done = first.0.try_wait().unwrap().is_some();
        async move { done.then_some(()) }
    })
    .await;
    // It was told why, on its session, before the node closed it.
    let told = std::fs::read_to_string(&first_out).unwrap();
    assert!(told.contains("took over this tunnel; closing."), "{told}");
    eventually(Duration::from_secs(20), "the URL to answer through the new holder", || {
        let (n2, host) = (n2.clone(), sock.dnsname.clone());
        async move { (get(&n2, &host, Some(("bob", "open sesame"))).await.0 == 200).then_some(()) }
    })
    .await;
    let view = c.operator(3).cluster().await.unwrap();
    let held: Vec<(u64, usize)> = view.nodes.iter().map(|n| (n.id, n.tunnels.unwrap())).collect();
    assert!(held.contains(&(2, 1)) && held.contains(&(1, 0)), "{held:?}");
    let holder =
        c.api(1).with_token(api.token().unwrap()).tunnel(&sock.socket_id, &tid).await.unwrap().session.unwrap();
    assert_eq!(holder.node_id, 2, "the newer connection's node holds the tunnel");
    assert!(holder.epoch > first_epoch, "a newer claim gets a higher epoch: {holder:?} after {first_epoch}");
    let closed = scrape(n1.clone(), &c.operator_token).await;
    assert_eq!(sample(&closed, r#"mysocket_tunnels_closed_total{reason="superseded"}"#), 1.0);
    assert_eq!(sample(&closed, "mysocket_tunnels_held_here"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_holding_node_releases_its_tunnels() {
    let mut c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "carol").await;
    let sock = api.connect(&SocketCreate { name: "svc".into(), ..Default::default() }).await.unwrap();
    let relay = sock.tunnels[0].local_port;
    let origin_port = origin().await;
    let (n1, n3) = (c.nodes[&1].ip.clone(), c.nodes[&3].ip.clone());

    let first = ssh_forward(&key, &u.user_name, &n3, relay, origin_port);
    eventually(Duration::from_secs(20), "the URL through node 3", || {
        let (n3, host) = (n3.clone(), sock.dnsname.clone());
        async move { (get(&n3, &host, None).await.0 == 200).then_some(()) }
    })
    .await;

    let t0 = std::time::Instant::now();
    c.kill9(3);
    let a1 = c.operator(1);
    eventually(Duration::from_secs(30), "the dead node's tunnel to be released", || {
        let a1 = a1.clone();
        async move {
            let v = a1.cluster().await.ok()?;
            (v.nodes.iter().find(|n| n.id == 3)?.tunnels == Some(0)).then_some(())
        }
    })
    .await;
    eprintln!("tunnel of the killed node released after {:?}", t0.elapsed());
    drop(first);

    let _second = ssh_forward(&key, &u.user_name, &n1, relay, origin_port);
    eventually(Duration::from_secs(20), "the URL through node 1 after the reconnect", || {
        let (n1, host) = (n1.clone(), sock.dnsname.clone());
        async move { (get(&n1, &host, None).await.0 == 200).then_some(()) }
    })
    .await;
    eprintln!("URL answering again through another node {:?} after the kill", t0.elapsed());
}

/// Reads until a whole answer is in: the origin's echo (ends with the echoed head's blank
/// line) or one of our HTML pages.
async fn read_answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let done = |b: &[u8]| {
        let t = String::from_utf8_lossy(b);
        (t.contains("origin saw:") && t.ends_with("\r\n\r\n")) || t.ends_with("</html>\n")
    };
    while !done(&buf) && std::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
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
async fn request(ip: &str, port: u16, tls: Option<(&tokio_rustls::TlsConnector, &str)>, host: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let Ok(tcp) = tokio::net::TcpStream::connect((ip, port)).await else { return String::new() };
    let req = format!("GET /via-{port} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    match tls {
        Some((conn, name)) => {
            let Ok(mut s) = conn.connect(rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(), tcp).await
            else {
                return String::from("tls handshake failed");
            };
            let _ = s.write_all(req.as_bytes()).await;
            read_answer(&mut s).await
        }
        None => {
            let mut s = tcp;
            let _ = s.write_all(req.as_bytes()).await;
            read_answer(&mut s).await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_tcp_and_tls_sockets_answer_through_every_node() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "dave").await;
    let ca = reqwest::get(format!("{}/cluster/ca.pem", c.nodes[&2].api_url())).await.unwrap().text().await.unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let conn = tls_connector(&ca);
    let origin_port = origin().await;
    let mk = |t: &str| SocketCreate { name: t.into(), socket_type: Some(t.into()), ..Default::default() };
    let https = api.connect(&mk("https")).await.unwrap();
    let tcp = api.connect(&mk("tcp")).await.unwrap();
    let tls = api.connect(&mk("tls")).await.unwrap();
    let n1 = c.nodes[&1].ip.clone();
    let _t1 = ssh_forward(&key, &u.user_name, &n1, https.tunnels[0].local_port, origin_port);
    let _t2 = ssh_forward(&key, &u.user_name, &c.nodes[&2].ip, tcp.tunnels[0].local_port, origin_port);
    let _t3 = ssh_forward(&key, &u.user_name, &c.nodes[&3].ip, tls.tunnels[0].local_port, origin_port);

    for id in [1u64, 2, 3] {
        let ip = c.nodes[&id].ip.clone();
        let conn = conn.clone();
        let got = eventually(Duration::from_secs(20), &format!("https through node {id}"), || {
            let (ip, conn, name) = (ip.clone(), conn.clone(), https.dnsname.clone());
            async move {
                let r = request(&ip, 8443, Some((&conn, &name)), &name).await;
                r.starts_with("HTTP/1.1 200").then_some(r)
            }
        })
        .await;
        assert!(got.to_lowercase().contains("x-forwarded-proto: https"), "{got}");
        // HTTP/2 (ALPN h2) with curl, verified against the cluster CA.
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca).unwrap();
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2", "-w", "\nversion=%{http_version}", "--cacert"])
            .arg(&ca_file)
            .args(["--resolve", &format!("{}:8443:{ip}", https.dnsname), &format!("https://{}:8443/h2", https.dnsname)])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("origin saw:") && text.ends_with("version=2"),
            "HTTP/2 through node {id}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = tcp.socket_tcp_ports[0];
        eventually(Duration::from_secs(20), &format!("tcp through node {id}"), || {
            let (ip, name) = (ip.clone(), tcp.dnsname.clone());
            async move { request(&ip, port, None, &name).await.contains("origin saw:").then_some(()) }
        })
        .await;
        let port = tls.socket_tcp_ports[0];
        eventually(Duration::from_secs(20), &format!("tls through node {id}"), || {
            let (ip, conn, name) = (ip.clone(), conn.clone(), tls.dnsname.clone());
            async move { request(&ip, port, Some((&conn, &name)), &name).await.contains("origin saw:").then_some(()) }
        })
        .await;
    }

    // Deleting a socket closes its listeners on every node.
    api.delete_socket(&tcp.socket_id).await.unwrap();
    let port = tcp.socket_tcp_ports[0];
    for id in [1u64, 2, 3] {
        let ip = c.nodes[&id].ip.clone();
        eventually(Duration::from_secs(20), &format!("node {id} to close the tcp listener"), || {
            let ip = ip.clone();
            async move { tokio::net::TcpStream::connect((ip.as_str(), port)).await.is_err().then_some(()) }
        })
        .await;
    }
}

/// An origin speaking real HTTP (hyper): POST answers with the body's size, GET /big streams
/// 100 MiB, and an `Upgrade: websocket` request switches protocols and echoes bytes.
async fn hyper_origin() -> u16 {
    use http_body_util::BodyExt;
    use hyper::body::Bytes;
    use hyper::body::Frame;
    use hyper::service::service_fn;
    type B = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|mut req: hyper::Request<hyper::body::Incoming>| async move {
                    let resp: hyper::Response<B> = if req.headers().contains_key("upgrade") {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = on.await {
                                let mut io = hyper_util::rt::TokioIo::new(up);
                                let (mut r, mut w) = tokio::io::split(&mut io);
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            }
                        });
                        hyper::Response::builder()
                            .status(101)
                            .header("upgrade", "websocket")
                            .header("connection", "upgrade")
                            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                            .body(http_body_util::Empty::new().boxed())
                            .unwrap()
                    } else if req.method() == hyper::Method::POST {
                        let mut n = 0usize;
                        let mut body = req.into_body();
                        while let Some(Ok(f)) = body.frame().await {
                            if let Some(d) = f.data_ref() {
                                n += d.len();
                            }
                        }
                        hyper::Response::new(http_body_util::Full::new(Bytes::from(format!("got {n}"))).boxed())
                    } else {
                        let chunk = Bytes::from(vec![b'x'; 1 << 16]);
                        let frames = futures::stream::iter(
                            (0..1600).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
                        );
                        hyper::Response::builder()
                            .header("content-length", (1600usize << 16).to_string())
                            .body(http_body_util::StreamBody::new(frames).boxed())
                            .unwrap()
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_and_100_mib_bodies_cross_the_relay_intact() {
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "frank").await;
    let sock = api.connect(&SocketCreate { name: "big".into(), ..Default::default() }).await.unwrap();
    let origin_port = hyper_origin().await;
    let _t = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, sock.tunnels[0].local_port, origin_port);
    // Through node 2: relayed to node 1, then the tunnel.
    let n2 = c.nodes[&2].ip.clone();
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(20), "the socket through node 2", || {
        let (client, n2, host) = (client.clone(), n2.clone(), sock.dnsname.clone());
        async move {
            let r = client.post(format!("http://{n2}:8080/up")).header("host", &host).body("ping").send().await.ok()?;
            (r.text().await.ok()? == "got 4").then_some(())
        }
    })
    .await;

    let big = vec![7u8; 100 << 20];
    let r = client.post(format!("http://{n2}:8080/up")).header("host", &sock.dnsname).body(big).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), format!("got {}", 100 << 20), "upload arrived incomplete");
    let r = client.get(format!("http://{n2}:8080/big")).header("host", &sock.dnsname).send().await.unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 1600 << 16, "download arrived incomplete");
    assert!(body.iter().all(|b| *b == b'x'), "download corrupted");

    // WebSocket: the upgrade goes through and bytes are echoed both ways.
    let mut s = tokio::net::TcpStream::connect((n2.as_str(), 8080)).await.unwrap();
    let hs = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        sock.dnsname
    );
    s.write_all(hs.as_bytes()).await.unwrap();
    let head = read_answer_until(&mut s, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"hello over websocket").await.unwrap();
    let echoed = read_answer_until(&mut s, "hello over websocket").await;
    assert!(echoed.contains("hello over websocket"), "{echoed}");
}

async fn read_answer_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&buf).contains(needle) {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_holds_at_most_its_ssh_session_limit_on_a_node() {
    let c = TestCluster::builder().arg("--max-ssh-sessions").arg("2").start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "erin").await;
    let origin_port = origin().await;
    let mut relays = Vec::new();
    for i in 0..3 {
        let s = SocketCreate { name: format!("s{i}"), socket_type: Some("http".into()), ..Default::default() };
        relays.push(api.connect(&s).await.unwrap().tunnels[0].local_port);
    }
    let held_on = |id: u64| {
        let api = c.operator(3);
        async move {
            let view = api.cluster().await.ok()?;
            view.nodes.iter().find(|n| n.id == id).and_then(|n| n.tunnels)
        }
    };
    let n1 = c.nodes[&1].ip.clone();
    let first = ssh_forward(&key, &u.user_name, &n1, relays[0], origin_port);
    let _second = ssh_forward(&key, &u.user_name, &n1, relays[1], origin_port);
    eventually(Duration::from_secs(20), "two sessions to hold their tunnels on node 1", || async {
        (held_on(1).await == Some(2)).then_some(())
    })
    .await;

    // A third session of the same account on the same node is refused.
    let mut third = ssh_forward(&key, &u.user_name, &n1, relays[2], origin_port);
    let status = eventually(Duration::from_secs(20), "the third session to be refused", || {
        let done = third.0.try_wait().unwrap();
        async move { done }
    })
    .await;
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(third.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("Permission denied"), "{err}");
    assert!(c.log(1).contains("session limit"), "the refusal is logged");

    // The limit is per node: the same account connects through node 2.
    let _elsewhere = ssh_forward(&key, &u.user_name, &c.nodes[&2].ip, relays[2], origin_port);
    eventually(Duration::from_secs(20), "node 2 to hold the third tunnel", || async {
        (held_on(2).await == Some(1)).then_some(())
    })
    .await;

    // Closing a session frees its place.
    drop(first);
    eventually(Duration::from_secs(20), "node 1 to release the closed session", || async {
        (held_on(1).await == Some(1)).then_some(())
    })
    .await;
    let _again = ssh_forward(&key, &u.user_name, &n1, relays[0], origin_port);
    eventually(Duration::from_secs(20), "a new session to fit under the limit", || async {
        (held_on(1).await == Some(2)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_is_served_for_https_and_tls_sockets() {
    let pki = tempfile::tempdir().unwrap();
    let (op_ca, cert, key) = test_pki(&["*.example.test".to_string()]);
    let (cert_file, key_file) = (pki.path().join("edge.pem"), pki.path().join("edge.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let c = TestCluster::builder()
        .arg("--domain")
        .arg("example.test")
        .arg("--tls-cert")
        .arg(cert_file.to_str().unwrap())
        .arg("--tls-key")
        .arg(key_file.to_str().unwrap())
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "olga").await;
    let origin_port = origin().await;
    let mk = |t: &str| SocketCreate { name: t.into(), socket_type: Some(t.into()), ..Default::default() };
    let https = api.connect(&mk("https")).await.unwrap();
    let tls = api.connect(&mk("tls")).await.unwrap();
    assert!(https.dnsname.ends_with(".example.test"), "{}", https.dnsname);
    let _t1 = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, https.tunnels[0].local_port, origin_port);
    let _t2 = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, tls.tunnels[0].local_port, origin_port);
    let operator = tls_connector(&op_ca);
    let cluster_ca =
        reqwest::get(format!("{}/cluster/ca.pem", c.nodes[&1].api_url())).await.unwrap().text().await.unwrap();
    let cluster = tls_connector(&cluster_ca);
    for id in [1u64, 2] {
        let ip = c.nodes[&id].ip.clone();
        eventually(Duration::from_secs(20), &format!("https with the operator's certificate via node {id}"), || {
            let (ip, conn, name) = (ip.clone(), operator.clone(), https.dnsname.clone());
            async move { request(&ip, 8443, Some((&conn, &name)), &name).await.starts_with("HTTP/1.1 200").then_some(()) }
        })
        .await;
        let port = tls.socket_tcp_ports[0];
        eventually(Duration::from_secs(20), &format!("tls with the operator's certificate via node {id}"), || {
            let (ip, conn, name) = (ip.clone(), operator.clone(), tls.dnsname.clone());
            async move { request(&ip, port, Some((&conn, &name)), &name).await.contains("origin saw:").then_some(()) }
        })
        .await;
        // The cluster's own CA did not sign what is served.
        let r = request(&ip, 8443, Some((&cluster, &https.dnsname)), &https.dnsname).await;
        assert_eq!(r, "tls handshake failed", "node {id} served a certificate of the cluster CA");
    }
}

/// A tcp socket of a new user whose tunnel `ssh -R` (with a session log, written to the
/// returned path) holds on node 1, to the origin at `origin_port`.
async fn logged_tcp_tunnel(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_log_shows_tcp_connections_taken_by_any_node() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (tcp, _t, out) = logged_tcp_tunnel(&c, dir.path(), "pete", origin().await).await;
    let port = tcp.socket_tcp_ports[0];
    // Node 1 holds the tunnel; node 2 relays to it.
    for id in [1u64, 2] {
        let ip = c.nodes[&id].ip.clone();
        eventually(Duration::from_secs(20), &format!("tcp through node {id}"), || {
            let (ip, name) = (ip.clone(), tcp.dnsname.clone());
            async move { request(&ip, port, None, &name).await.contains("origin saw:").then_some(()) }
        })
        .await;
    }
    let text = eventually(Duration::from_secs(20), "a log line for each connection", || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let closed = text.lines().filter(|l| l.contains("connection closed:")).count();
        async move { (closed >= 2).then_some(text) }
    })
    .await;
    assert!(text.contains("Welcome to mysocket"), "{text}");
    for line in text.lines().filter(|l| l.contains("connection closed:")) {
        // "HH:MM:SS <client ip> connection closed: <n>B in, <m>B out, <t>ms", bytes both ways.
        let nums: Vec<u64> =
            line.split(|ch: char| !ch.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().unwrap()).collect();
        let (sent, got) = (nums[nums.len() - 3], nums[nums.len() - 2]);
        assert!(sent > 0 && got > sent, "{line}");
    }
}

/// A new leader has heard from no follower yet: that is no silence, and it must not release
/// the tunnels of live nodes (it did, on becoming leader, before the first answers came).
/// Tunnels on both followers, the leader killed: whichever follower leads next, both tunnels
/// keep their node and epoch and both clients stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_keeps_the_tunnels_of_live_nodes() {
    let mut c = TestCluster::builder().start().await;
    let leader = c.agreed_leader(Duration::from_secs(20)).await;
    let followers: Vec<u64> = c.running().into_iter().filter(|id| *id != leader).collect();
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), followers[0], "nora").await;
    let origin_port = origin().await;
    let mut held = Vec::new();
    for (i, id) in followers.iter().enumerate() {
        let sock = api.connect(&SocketCreate { name: format!("s{i}"), ..Default::default() }).await.unwrap();
        let ssh = ssh_forward(&key, &u.user_name, &c.nodes[id].ip, sock.tunnels[0].local_port, origin_port);
        held.push((*id, sock.socket_id, ssh));
    }
    let holders = |api: mysocket_api::ApiClient, ids: Vec<String>| async move {
        let mut v = Vec::new();
        for id in &ids {
            let s = api.socket(id).await.ok()?;
            v.push(s.tunnels[0].session.as_ref().map(|h| (h.node_id, h.epoch)));
        }
        Some(v)
    };
    let ids: Vec<String> = held.iter().map(|(_, s, _)| s.clone()).collect();
    let before = eventually(Duration::from_secs(20), "both tunnels claimed on their followers", || {
        let (api, ids, want) = (api.clone(), ids.clone(), followers.clone());
        async move {
            let v = holders(api, ids).await?;
            v.iter().zip(&want).all(|(h, id)| h.is_some_and(|(n, _)| n == *id)).then_some(v)
        }
    })
    .await;

    c.kill9(leader);
    let next = c.agreed_leader(Duration::from_secs(30)).await;
    // Well past the first duty passes of the new leader, short of its liveness timeout for the
    // dead node (which held nothing).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api = c.api(next).with_token(api.token().unwrap());
    let after = holders(api, ids).await.expect("the sockets through the new leader");
    assert_eq!(after, before, "a tunnel of a live node was released or moved when node {next} took over");
    for (id, _, ssh) in &mut held {
        assert!(ssh.0.try_wait().unwrap().is_none(), "the client of the tunnel on node {id} was disconnected");
    }
    assert!(!c.log(next).contains("releasing its tunnels"), "{}", c.log(next));
}

/// A whole-cluster restart is silence to no leader (every node answers the new one at once),
/// so the claims of the processes that died stay in the registry until something releases
/// them. An `ssh -R` client does not come back by itself: its tunnel must not stay "held" by a
/// node that has no session for it. The restarted holder releases it, the API shows it
/// disconnected, and every node answers 503 (no live tunnel), not 502 (a tunnel that refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_releases_the_claims_of_its_previous_process() {
    let mut c = TestCluster::builder().start().await;
    c.agreed_leader(Duration::from_secs(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "otto").await;
    let origin_port = origin().await;
    let sock = api.connect(&SocketCreate { name: "svc".into(), ..Default::default() }).await.unwrap();
    let n2 = c.nodes[&2].ip.clone();
    let ssh = ssh_forward(&key, &u.user_name, &n2, sock.tunnels[0].local_port, origin_port);
    answered(&n2, &sock.dnsname, "the URL through node 2").await;
    let held = api.socket(&sock.socket_id).await.unwrap().tunnels[0].session;
    assert_eq!(held.map(|h| h.node_id), Some(2), "the tunnel is held by node 2");

    for id in c.running() {
        c.kill9(id);
    }
    drop(ssh);
    for id in [1, 2, 3] {
        c.restart(id);
    }
    c.wait_ready().await;
    c.agreed_leader(Duration::from_secs(30)).await;
    let a1 = c.api(1).with_token(api.token().unwrap());
    eventually(Duration::from_secs(20), "the tunnel of node 2's previous process released", || {
        let (a1, id) = (a1.clone(), sock.socket_id.clone());
        async move { a1.socket(&id).await.ok()?.tunnels[0].session.is_none().then_some(()) }
    })
    .await;
    for id in [1, 2, 3] {
        let (status, body) = get(&c.nodes[&id].ip, &sock.dnsname, None).await;
        assert_eq!(status, 503, "through node {id}: {body}");
        assert!(body.contains("no live tunnel"), "through node {id}: {body}");
    }
    assert!(c.log(2).contains("claimed by this node's previous process"), "{}", c.log(2));
    let m = scrape(c.nodes[&2].ip.clone(), &c.operator_token).await;
    assert!(sample(&m, "mysocket_orphan_claims_released_total") >= 1.0);
}

/// A holder that stops answering (paused: alive, its sockets open, but silent) loses its
/// tunnels to the leader's liveness check within a few seconds, the public URL answers 503
/// through the others meanwhile, and once it runs again it learns of the release and closes
/// the client's session, which then reconnects elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_holder_is_released_and_closes_its_tunnel_when_it_wakes() {
    let c = TestCluster::builder().start().await;
    let leader = c.agreed_leader(Duration::from_secs(20)).await;
    let holder = c.running().into_iter().find(|id| *id != leader).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), leader, "quinn").await;
    let origin_port = origin().await;
    let sock = api.connect(&SocketCreate { name: "svc".into(), ..Default::default() }).await.unwrap();
    let mut ssh = ssh_forward(&key, &u.user_name, &c.nodes[&holder].ip, sock.tunnels[0].local_port, origin_port);
    let leader_ip = c.nodes[&leader].ip.clone();
    answered(&leader_ip, &sock.dnsname, "the URL through the leader").await;

    c.pause(holder);
    let t0 = std::time::Instant::now();
    eventually(Duration::from_secs(20), "the silent holder's tunnel released", || {
        let (api, id) = (api.clone(), sock.socket_id.clone());
        async move { api.socket(&id).await.ok()?.tunnels[0].session.is_none().then_some(()) }
    })
    .await;
    eprintln!("the paused holder's tunnel was released after {:?}", t0.elapsed());
    let (status, body) = get(&leader_ip, &sock.dnsname, None).await;
    assert_eq!(status, 503, "{body}");
    assert!(ssh.0.try_wait().unwrap().is_none(), "the paused node cannot have closed the session");

    c.resume(holder);
    eventually(Duration::from_secs(20), "the woken holder to close the released tunnel's session", || {
        let exited = ssh.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let mut said = String::new();
    std::io::Read::read_to_string(&mut ssh.0.stderr.take().unwrap(), &mut said).unwrap();
    // (The release, seen on waking; or, had the pause outlasted the cut-off, its own fence.)
    assert!(said.contains("released") || said.contains("lost contact"), "the client was not told why: {said}");
}

/// A node that loses the majority closes the tunnels it holds, so that their clients, which
/// still reach it, reconnect to a node that can claim them: the leader has released them, and
/// a node cut off cannot learn that. Both ways to be cut off: a follower whose leader and
/// other follower stop answering, and a leader that no follower answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_closes_its_tunnels() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "petra").await;
    let origin_port = origin().await;
    for round in ["follower", "leader"] {
        let leader = c.agreed_leader(Duration::from_secs(30)).await;
        let holder = if round == "leader" { leader } else { c.running().into_iter().find(|id| *id != leader).unwrap() };
        let sock = api.connect(&SocketCreate { name: format!("svc-{round}"), ..Default::default() }).await.unwrap();
        let ip = c.nodes[&holder].ip.clone();
        let mut ssh = ssh_forward(&key, &u.user_name, &ip, sock.tunnels[0].local_port, origin_port);
        answered(&ip, &sock.dnsname, &format!("the URL through node {holder}, the {round}")).await;

        let others: Vec<u64> = c.running().into_iter().filter(|id| *id != holder).collect();
        for id in &others {
            c.pause(*id);
        }
        let t0 = std::time::Instant::now();
        let closed = eventually(Duration::from_secs(30), &format!("the {round} cut off to close its tunnel"), || {
            let exited = ssh.0.try_wait().unwrap();
            async move { exited }
        })
        .await;
        eprintln!("the {round} closed its tunnel {:?} after losing the majority ({closed})", t0.elapsed());
        for id in &others {
            c.resume(*id);
        }
        // OpenSSH prints the server's reason for disconnecting on stderr.
        let mut said = String::new();
        std::io::Read::read_to_string(&mut ssh.0.stderr.take().unwrap(), &mut said).unwrap();
        assert!(said.contains("lost contact with the cluster"), "the client was not told why: {said}");
        assert!(c.log(holder).contains("closing the tunnels held here"), "{}", c.log(holder));
        let m = scrape(ip.clone(), &c.operator_token).await;
        assert!(sample(&m, r#"mysocket_tunnels_closed_total{reason="cut_off"}"#) >= 1.0);
    }
}

/// An HTTP/1.1 origin that keeps its connections open, except after a request whose path
/// starts with `/close`: that answer says `Connection: close` and the origin closes.
async fn sometimes_closing_origin() -> u16 {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = next_head(&mut s, &mut buf).await {
                    let head = String::from_utf8_lossy(&head).to_string();
                    let close = head.split(' ').nth(1).is_some_and(|path| path.starts_with("/close"));
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n{}\r\nok\n",
                        if close { "connection: close\r\n" } else { "" }
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Reads one answer with a three-byte body from `s`: its status line.
async fn one_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "the answer ended early: {}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    let mut body = [0u8; 3];
    s.read_exact(&mut body).await.unwrap();
    String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_string()
}

/// A client that stops reading its session (a terminal paused with Ctrl-S, a pipe nobody
/// drains) loses log lines, not its tunnel: with OpenSSH's output unread, its channel window
/// (2 MiB, some 7,000 lines) and the node's queue fill, and requests go on being answered;
/// a newer connection for the tunnel still closes it; and a client that reads again is told
/// how many log lines were dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_session_keeps_its_tunnel() {
    let c = TestCluster::builder().nodes(1).start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "paused").await;
    let create = SocketCreate { name: "paused".into(), socket_type: Some("http".into()), ..Default::default() };
    let sock = api.connect(&create).await.unwrap();
    let ip = c.nodes[&1].ip.clone();
    let (relay, origin) = (sock.tunnels[0].local_port, origin().await);
    let mut first = ssh_tunnel(&key, &u.user_name, (&ip, 2222), relay, origin, Out::Pipe);
    answered(&ip, &sock.dnsname, "the tunnel").await;
    // A path of 256 characters: a log line of about 300 bytes, the longest a path makes.
    let path = format!("/{}", "p".repeat(255));
    all_answered(&ip, &sock.dnsname, &path, 15_000, 200, "the client's output unread").await;

    // Nothing of the unread session waits inside it to hold back its end.
    let mut ssh = ssh_tunnel(&key, &u.user_name, (&ip, 2222), relay, origin, Out::Pipe);
    eventually(Duration::from_secs(20), "the unread session to be closed by a newer one", || {
        let done = first.0.try_wait().unwrap().is_some();
        async move { done.then_some(()) }
    })
    .await;
    all_answered(&ip, &sock.dnsname, &path, 15_000, 200, "the newer client's output unread").await;

    let seen = read_in_background(ssh.0.stdout.take().unwrap());
    let dropped = eventually(Duration::from_secs(20), "a line saying how many log lines were dropped", || {
        let n = dropped_count(&seen, " log lines dropped: the client did not read them in time)");
        async move { n }
    })
    .await;
    assert!((1..15_000).contains(&dropped), "{dropped} lines dropped");
    let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(text.contains("Welcome to mysocket"), "the banner comes first, through the same window");
    all_answered(&ip, &sock.dnsname, "/after", 10, 200, "the client reading again").await;
}

/// The session log gets a line for every HTTP request, whichever node took it, once its
/// answer is out: on both HTTP paths (HTTP/1.1 here; HTTP/1.0 goes through hyper), when the
/// service closes its connection after the answer, and between two requests of a public
/// connection kept alive. A relaying node sends the line along the relay after the answer,
/// so these are the cases where the relay could be gone, or idle, by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_log_shows_every_http_request_taken_by_any_node() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "lena").await;
    let sock = api
        .connect(&SocketCreate { name: "web".into(), socket_type: Some("http".into()), ..Default::default() })
        .await
        .unwrap();
    let out = dir.path().join("session.out");
    let origin_port = sometimes_closing_origin().await;
    let _ssh = ssh_logged(&key, &u.user_name, &c.nodes[&1].ip, sock.tunnels[0].local_port, origin_port, &out);
    for n in [1u64, 2, 3] {
        answered(&c.nodes[&n].ip, &sock.dnsname, &format!("the URL through node {n}")).await;
    }
    let logged = |path: String| {
        let out = out.clone();
        async move {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            text.lines().any(|l| l.contains(&format!(" GET {path} 200 "))).then_some(())
        }
    };

    // The service closes after each answer: node 1 holds the tunnel, nodes 2 and 3 relay.
    let mut paths = Vec::new();
    for n in [1u64, 2, 3] {
        for version in ["1.1", "1.0"] {
            let path = format!("/close-node{n}-http{version}");
            let mut s = tokio::net::TcpStream::connect(format!("{}:8080", c.nodes[&n].ip)).await.unwrap();
            let head = format!("GET {path} HTTP/{version}\r\nHost: {}\r\n\r\n", sock.dnsname);
            s.write_all(head.as_bytes()).await.unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with(&format!("HTTP/{version} 200")), "{path}: {answer}");
            paths.push(path);
        }
    }
    for path in paths {
        eventually(Duration::from_secs(10), &format!("the line of {path}"), || logged(path.clone())).await;
    }

    // Kept alive, through node 2: the first request's line comes before the second request.
    let mut s = tokio::net::TcpStream::connect(format!("{}:8080", c.nodes[&2].ip)).await.unwrap();
    for path in ["/kept-first", "/kept-second"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", sock.dnsname).as_bytes()).await.unwrap();
        let status = one_answer(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        eventually(Duration::from_secs(10), &format!("the line of {path}, the connection still open"), || {
            logged(path.to_string())
        })
        .await;
    }
}

/// A TCP origin that sends back whatever it receives.
async fn echo_origin() -> u16 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_tcp_connection_carries_megabytes_intact_both_ways() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    // Node 1 holds the tunnel; the client comes in through node 2, which relays.
    let (tcp, _t, out) = logged_tcp_tunnel(&c, dir.path(), "rita", echo_origin().await).await;
    let addr = format!("{}:{}", c.nodes[&2].ip, tcp.socket_tcp_ports[0]);
    let sent: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let got = eventually(Duration::from_secs(20), "an echo through node 2", || {
        let (addr, sent) = (addr.clone(), &sent);
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            let (mut r, mut w) = s.split();
            let write = async {
                w.write_all(sent).await?;
                w.shutdown().await
            };
            let mut got = Vec::with_capacity(sent.len());
            let (wrote, read) = tokio::join!(write, r.read_to_end(&mut got));
            (wrote.is_ok() && read.is_ok() && !got.is_empty()).then_some(got)
        }
    })
    .await;
    assert_eq!(got.len(), sent.len(), "echoed bytes");
    assert!(got == sent, "the echo through the relay differs from what was sent");
    // The holder counts the relayed bytes itself: all of them, both ways.
    let want = format!("{}B in, {}B out", sent.len(), sent.len());
    eventually(Duration::from_secs(20), "the connection's log line with its byte counts", || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let want = want.clone();
        async move { text.lines().any(|l| l.contains("connection closed:") && l.contains(&want)).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_session_opens_at_most_four_session_channels() {
    struct Trusting;
    impl russh::client::Handler for Trusting {
        type Error = russh::Error;
        async fn check_server_key(&mut self, _: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }
    let c = TestCluster::builder().nodes(1).start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, _api) = ssh_user(&c, dir.path(), 1, "quinn").await;
    let key = std::sync::Arc::new(russh::keys::load_secret_key(&key, None).unwrap());
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, (c.nodes[&1].ip.as_str(), 2222), Trusting).await.unwrap();
    let auth =
        h.authenticate_publickey(&u.user_name, russh::keys::PrivateKeyWithHashAlg::new(key, None)).await.unwrap();
    assert!(matches!(auth, russh::client::AuthResult::Success), "{auth:?}");
    let mut open = Vec::new();
    for i in 0..4 {
        open.push(h.channel_open_session().await.unwrap_or_else(|e| panic!("session channel {i}: {e}")));
    }
    assert!(h.channel_open_session().await.is_err(), "a fifth session channel is refused");
    // The session itself goes on: the open channels still get their banner.
    open[0].request_shell(true).await.unwrap();
    let mut banner = String::new();
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(10), open[0].wait()).await.unwrap() {
        if let russh::ChannelMsg::Data { data } = msg {
            banner.push_str(&String::from_utf8_lossy(&data));
            if banner.contains("Welcome to mysocket") {
                break;
            }
        }
    }
    assert!(banner.contains("Welcome to mysocket"), "{banner}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_public_connections_reuse_idle_upstream_connections() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "rita").await;
    let (origin_port, accepted) = counting_origin().await;
    let s = api.connect(&SocketCreate { name: "web".into(), ..Default::default() }).await.unwrap();
    let _t = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, s.tunnels[0].local_port, origin_port);
    // Node 1 holds the tunnel, node 2 relays: both keep their upstream for the next client.
    for id in [1u64, 2] {
        let ip = c.nodes[&id].ip.clone();
        eventually(Duration::from_secs(20), &format!("the socket through node {id}"), || {
            let (ip, host) = (ip.clone(), s.dnsname.clone());
            async move { (get(&ip, &host, None).await.0 == 200).then_some(()) }
        })
        .await;
        let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
        for i in 0..10 {
            // A new public connection each time, which asks to be closed after the answer.
            let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
            let resp = client
                .get(format!("http://{ip}:8080/round-{i}"))
                .header("host", &s.dnsname)
                .header("connection", "close")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.text().await.unwrap().to_ascii_lowercase();
            assert!(body.contains(&format!("get /round-{i} ")), "{body}");
            assert!(!body.contains("connection: close"), "a hop-by-hop header reached the service: {body}");
        }
        let opened = accepted.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert!(opened <= 2, "10 public connections through node {id} opened {opened} connections to the service");
    }
}

/// An origin that answers by path with each framing an HTTP/1.1 answer can have: length,
/// chunked with a trailer, none (HEAD, 204), an informational head first, or to the end of the
/// stream; `/echo` sends back the request body it got (by length, or chunked); after
/// `/then-close` it closes the connection its head said it would keep; after `/drop-next` it
/// closes it when the next request comes, unanswered.
async fn framing_origin() -> u16 {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut drop_next = false;
                loop {
                    let (head_len, method, path, length, chunked) = loop {
                        let mut headers = [httparse::EMPTY_HEADER; 32];
                        let mut req = httparse::Request::new(&mut headers);
                        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                            let field = |name: &str| {
                                req.headers
                                    .iter()
                                    .find(|h| h.name.eq_ignore_ascii_case(name))
                                    .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                            };
                            let length = field("content-length").map_or(0, |v| v.parse::<usize>().unwrap());
                            let chunked = field("transfer-encoding").is_some_and(|v| v.contains("chunked"));
                            let (m, p) = (req.method.unwrap().to_string(), req.path.unwrap().to_string());
                            break (n, m, p, length, chunked);
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    if drop_next {
                        // As a service that closes an idle connection just as a request comes.
                        return;
                    }
                    buf.drain(..head_len);
                    let body: Vec<u8> = if chunked {
                        // Test bodies are small: wait for the last chunk, then take the data.
                        while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5;
                        let raw: Vec<u8> = buf.drain(..end).collect();
                        let text = String::from_utf8_lossy(&raw).into_owned();
                        text.split("\r\n").skip(1).step_by(2).collect::<String>().into_bytes()
                    } else {
                        while buf.len() < length {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..length).collect()
                    };
                    let answer = match path.as_str() {
                        "/chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: yes\r\n\r\n".to_string(),
                        "/len" if method == "HEAD" => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_string(),
                        "/len" => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_string(),
                        "/204" => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
                        "/103" => "HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhints".to_string(),
                        "/hop" => "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-hop\r\nkeep-alive: timeout=5\r\nx-hop: 1\r\nx-end: 2\r\ncontent-length: 2\r\n\r\nok".to_string(),
                        "/drop-next" => {
                            drop_next = true;
                            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext".to_string()
                        }
                        "/then-close" => {
                            // Keep-alive by its head, yet the origin closes after it.
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbye").await;
                            return;
                        }
                        "/echo" => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}", body.len(), String::from_utf8_lossy(&body)),
                        _ => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
                            return;
                        }
                    };
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http1_framing_crosses_a_kept_alive_connection() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "gina").await;
    let sock = api.connect(&SocketCreate { name: "framings".into(), ..Default::default() }).await.unwrap();
    let origin = framing_origin().await;
    let _t = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, sock.tunnels[0].local_port, origin);
    let host = sock.dnsname.clone();
    for id in [1u64, 2] {
        let ip = c.nodes[&id].ip.clone();
        eventually(Duration::from_secs(20), &format!("the socket through node {id}"), || {
            let (ip, host) = (ip.clone(), host.clone());
            async move { (get(&ip, &host, None).await.0 == 200).then_some(()) }
        })
        .await;
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.unwrap();
        let req =
            |method: &str, path: &str, extra: &str| format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
        // One after the other on one connection, each answer whole before the next request.
        let steps = [
            (req("GET", "/chunked", ""), "0\r\nx-trailer: yes\r\n\r\n"),
            (req("HEAD", "/len", ""), "content-length: 5\r\n\r\n"),
            (req("GET", "/204", ""), "204 No Content\r\n\r\n"),
            (req("GET", "/103", ""), "\r\n\r\nhints"),
            (req("POST", "/echo", "content-length: 11\r\n") + "hello world", "\r\n\r\nhello world"),
            // The service's hop-by-hop fields stay on the tunnel's side.
            (req("GET", "/hop", ""), "HTTP/1.1 200 OK\r\nx-end: 2\r\ncontent-length: 2\r\n\r\nok"),
            (req("GET", "/then-close", ""), "\r\n\r\nbye"),
            // The stream through the tunnel closed behind the last answer: a fresh one serves.
            (req("GET", "/len", ""), "\r\n\r\nhello"),
            // It closes under the next request: that request goes again on a fresh one.
            (req("GET", "/drop-next", ""), "\r\n\r\nnext"),
            (req("GET", "/len", ""), "\r\n\r\nhello"),
            // A chunked request body: the connection moves to the general path and goes on.
            (
                req("POST", "/echo", "transfer-encoding: chunked\r\n") + "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                "\r\n\r\nabcde",
            ),
            (req("GET", "/len", ""), "\r\n\r\nhello"),
            // The same on the general path: a stream closed behind the answer or under the
            // next request, and a fresh one serves.
            (req("GET", "/then-close", ""), "\r\n\r\nbye"),
            (req("GET", "/len", ""), "\r\n\r\nhello"),
            (req("GET", "/drop-next", ""), "\r\n\r\nnext"),
            (req("GET", "/len", ""), "\r\n\r\nhello"),
        ];
        for (request, ends) in steps {
            s.write_all(request.as_bytes()).await.unwrap();
            let answer = read_answer_until(&mut s, ends).await;
            assert!(answer.ends_with(ends), "node {id}, {request:?} got {answer:?}");
            if request.starts_with("GET /103") {
                assert!(answer.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{answer:?}");
            }
        }

        // Two requests in one write (pipelined): two answers, in order.
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.unwrap();
        s.write_all((req("GET", "/chunked", "") + &req("GET", "/len", "")).as_bytes()).await.unwrap();
        let answer = read_answer_until(&mut s, "\r\n\r\nhello").await;
        let chunked_at = answer.find(" world\r\n0\r\n").expect("the chunked answer");
        assert!(answer[chunked_at..].contains("content-length: 5\r\n\r\nhello"), "{answer:?}");

        // A head that comes a few bytes at a time (the end of the head split too).
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.unwrap();
        let whole = req("GET", "/len", "");
        for piece in [&whole[..5], &whole[5..20], &whole[20..whole.len() - 1], &whole[whole.len() - 1..]] {
            s.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let answer = read_answer_until(&mut s, "\r\n\r\nhello").await;
        assert!(answer.ends_with("\r\n\r\nhello"), "{answer:?}");

        // A body that ends with the stream ends the public connection too.
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.unwrap();
        s.write_all(req("GET", "/eof", "").as_bytes()).await.unwrap();
        let mut all = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut all)).await.unwrap().unwrap();
        assert!(all.ends_with("\r\n\r\nuntil the end"), "{all:?}");

        // A client that asks to close is told so, and the connection closes after the answer.
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.unwrap();
        s.write_all(req("GET", "/len", "connection: close\r\n").as_bytes()).await.unwrap();
        let mut all = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut all)).await.unwrap().unwrap();
        assert!(all.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{all:?}");
        assert!(all.ends_with("\r\n\r\nhello"), "{all:?}");
    }
}

/// Writes `bytes` to `ip:port` (never closing its side) and reads until the node ends the
/// connection: what came back, or None if it was still open after `within`.
async fn ends_with(ip: &str, port: u16, bytes: &[u8], within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect((ip, port)).await.unwrap();
    // The node may refuse before it has read it all: a failed write is no failure here.
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        // EOF or a reset (the rest of what was sent unread) both end it.
        while let Ok(n @ 1..) = s.read(&mut chunk).await {
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(within, read).await.ok().map(|()| got)
}

/// Garbage on every port a node listens on gets a clear refusal and changes nothing: the API
/// and the public HTTP port answer 400 at once (431 for a head without end), the TLS ports
/// and the SSH and internal ports close; a client that sends nothing, or half a head or an SSH
/// version line and no more, is closed after the header timeout, the login grace or the
/// handshake timeout instead of holding its connection. Afterwards the replicas are as they
/// were and the socket still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silence_on_every_port_are_refused_and_change_nothing() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "gus").await;
    let web = api.connect(&SocketCreate { name: "web".into(), ..Default::default() }).await.unwrap();
    let tls_sock = SocketCreate { name: "tls".into(), socket_type: Some("tls".into()), ..Default::default() };
    let tls = api.connect(&tls_sock).await.unwrap();
    let tls_port = tls.socket_tcp_ports[0];
    let ip = c.nodes[&1].ip.clone();
    let origin_port = origin().await;
    let _t1 = ssh_forward(&key, &u.user_name, &ip, web.tunnels[0].local_port, origin_port);
    let _t2 = ssh_forward(&key, &u.user_name, &ip, tls.tunnels[0].local_port, origin_port);
    answered(&ip, &web.dnsname, "the socket through node 1").await;
    eventually(Duration::from_secs(20), "the tls socket's tunnel", || {
        let api = api.clone();
        let id = tls.socket_id.clone();
        async move { api.socket(&id).await.ok().filter(|s| s.tunnels.iter().any(|t| t.session.is_some())) }
    })
    .await;

    // The silent ones start first and are looked at last: (port, what they say, the timeout
    // that closes them).
    let grace = Duration::from_secs(45);
    let silent: Vec<_> = [
        (7070, &b""[..], 30),
        (7070, b"GET /cluster HTTP/1.1\r\n", 30),
        (8080, b"", 30),
        (8080, b"GET / HTTP/1.1\r\n", 30),
        (8443, b"", 30),
        (2222, b"", 30),
        (2222, b"SSH-2.0-OpenSSH_9.9\r\n", 30),
        (7071, b"", 10),
        (tls_port, b"", 10),
    ]
    .into_iter()
    .map(|(port, said, timeout)| {
        let ip = ip.clone();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            let ended = ends_with(&ip, port, said, grace).await.map(|_| started.elapsed());
            (port, said, Duration::from_secs(timeout), ended)
        })
    })
    .collect();

    let before = c.converged().await;
    // Fixed pseudo-random bytes (xorshift), a TLS ClientHello's start, a head without end.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec();
    let endless = vec![b'A'; 70 * 1024];
    let quick = Duration::from_secs(5);
    for port in [7070, 8080] {
        for (what, bytes, want) in [
            ("junk", &junk, "HTTP/1.1 400 "),
            ("a TLS hello", &hello, "HTTP/1.1 400 "),
            ("an endless head", &endless, "HTTP/1.1 431 "),
        ] {
            let got = ends_with(&ip, port, bytes, quick).await;
            let got = String::from_utf8_lossy(got.as_deref().unwrap_or_else(|| panic!("{what} on {port}: still open")))
                .into_owned();
            assert!(got.starts_with(want), "{what} on {port}: {got:?}");
        }
    }
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", web.dnsname).into_bytes();
    for port in [8443, tls_port, 2222, 7071] {
        for (what, bytes) in [("junk", &junk), ("an endless head", &endless), ("plain HTTP", &request)] {
            let got =
                ends_with(&ip, port, bytes, quick).await.unwrap_or_else(|| panic!("{what} on {port}: still open"));
            // A TLS alert, an SSH version line, an HTTP/2 settings frame: never an answer.
            assert!(!String::from_utf8_lossy(&got).contains("origin saw"), "{what} on {port} reached the service");
        }
    }

    // Nothing changed, and everything still works.
    let after = c.converged().await;
    assert_eq!((before.digest, before.accounts, before.sockets), (after.digest, after.accounts, after.sockets));
    answered(&ip, &web.dnsname, "the socket after the garbage").await;
    assert!(api.socket(&web.socket_id).await.is_ok(), "the API after the garbage");
    for s in silent {
        let (port, said, timeout, ended) = s.await.unwrap();
        let said = String::from_utf8_lossy(said);
        let ended = ended.unwrap_or_else(|| panic!("port {port}, after {said:?}: still open after {grace:?}"));
        assert!(ended >= timeout - Duration::from_secs(2), "port {port}, after {said:?}: closed early ({ended:?})");
    }
}

/// A node's metrics (an operator's call): each sample line `name{labels} value`, by
/// `name{labels}`.
async fn scrape(ip: String, operator_token: &str) -> std::collections::HashMap<String, f64> {
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

fn sample(m: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_dashboard_show_what_each_node_did() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "mia").await;
    let sock = api.connect(&SocketCreate { name: "web".into(), ..Default::default() }).await.unwrap();
    let ip = |n: u64| c.nodes[&n].ip.clone();
    let _ssh = ssh_forward(&key, &u.user_name, &ip(1), sock.tunnels[0].local_port, origin().await);
    answered(&ip(1), &sock.dnsname, "the URL through node 1").await;
    // A login with a user name nobody has, refused by node 1.
    let stranger = Command::new("ssh")
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "LogLevel=ERROR", "-i"])
        .arg(&key)
        .args(["-p", "2222", "-l", "nobody-at-all", &ip(1), "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!stranger.success());
    eventually(Duration::from_secs(10), "node 1 to count the stranger's refused login", || async {
        (sample(&scrape(ip(1), &c.operator_token).await, r#"mysocket_ssh_logins_total{result="refused"}"#) == 1.0)
            .then_some(())
    })
    .await;

    let before: Vec<_> = futures::future::join_all([1, 2, 3].map(|n| scrape(ip(n), &c.operator_token))).await;
    for _ in 0..3 {
        assert_eq!(get(&ip(2), &sock.dnsname, None).await.0, 200);
    }
    assert_eq!(get(&ip(3), "nobody.localhost", None).await.0, 404);
    let after: Vec<_> = futures::future::join_all([1, 2, 3].map(|n| scrape(ip(n), &c.operator_token))).await;
    let delta = |n: usize, k: &str| sample(&after[n - 1], k) - sample(&before[n - 1], k);

    // Node 2 answered three requests, each relayed to node 1, which holds the tunnel.
    assert_eq!(delta(2, r#"mysocket_http_responses_total{scheme="http",code="2xx"}"#), 3.0);
    assert!(delta(2, r#"mysocket_upstreams_total{result="relayed"}"#) >= 1.0);
    assert_eq!(delta(2, r#"mysocket_upstreams_total{result="local"}"#), 0.0);
    assert!(delta(1, r#"mysocket_relays_served_total{result="served"}"#) >= 1.0);
    assert_eq!(delta(1, r#"mysocket_relays_served_total{result="stale_epoch"}"#), 0.0);
    assert_eq!(delta(2, r#"mysocket_connections_accepted_total{listener="http"}"#), 3.0);
    assert_eq!(delta(3, r#"mysocket_http_responses_total{scheme="http",code="4xx"}"#), 1.0);
    assert_eq!(delta(1, r#"mysocket_http_responses_total{scheme="http",code="2xx"}"#), 0.0);
    // Node 1's SSH server: the tunnel's login and claim, and the stranger refused.
    let n1 = &after[0];
    assert_eq!(sample(n1, r#"mysocket_ssh_logins_total{result="accepted"}"#), 1.0);
    assert_eq!(sample(n1, r#"mysocket_ssh_logins_total{result="refused"}"#), 1.0);
    assert_eq!(sample(n1, r#"mysocket_ssh_forwards_total{result="claimed"}"#), 1.0);
    assert_eq!(sample(n1, r#"mysocket_connections_open{listener="ssh"}"#), 1.0);
    assert_eq!(sample(n1, "mysocket_tunnels_held_here"), 1.0);
    assert_eq!(sample(&after[1], "mysocket_tunnels_held_here"), 0.0);
    // One leader, whom every node names; the registry's totals alike everywhere.
    let leaders: Vec<u64> =
        (1..=3).filter(|n| sample(&after[*n as usize - 1], "mysocket_raft_is_leader") == 1.0).collect();
    assert_eq!(leaders.len(), 1, "one node says it leads");
    for m in &after {
        assert_eq!(sample(m, "mysocket_raft_leader"), leaders[0] as f64);
        assert_eq!(sample(m, "mysocket_raft_voters"), 3.0);
        assert_eq!(sample(m, "mysocket_tunnels_connected"), 1.0);
        assert_eq!(sample(m, "mysocket_sockets"), 1.0);
        assert_eq!(sample(m, "mysocket_accounts"), 1.0);
    }

    // The dashboard, for an operator (a browser sends the token as Basic auth's password):
    // every node, the leader, the totals; no account's or socket's name.
    let token = c.operator_token.clone();
    let page = |n: u64| {
        let token = token.clone();
        async move {
            let http = reqwest::Client::new();
            let resp = http.get(format!("http://{}:7070/", ip(n))).basic_auth("ops", Some(token)).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
            resp.text().await.unwrap()
        }
    };
    let html = page(3).await;
    assert!(html.contains(&format!("Leader: node {}", leaders[0])), "{html}");
    for n in [1u64, 2, 3] {
        assert!(html.contains(&format!("<td>{}:7070</td>", ip(n))), "node {n}'s API address: {html}");
    }
    assert!(html.contains("<td>3 (this node)</td>"), "{html}");
    assert!(html.contains("<tr><th>sockets</th><td class=n>1</td></tr>"), "{html}");
    assert!(html.contains("<tr><th>tunnels connected</th><td class=n>1</td></tr>"), "{html}");
    assert!(!html.contains(&sock.dnsname) && !html.contains("mia@example.com") && !html.contains(&u.user_name));
    api.delete_socket(&sock.socket_id).await.unwrap();
    eventually(Duration::from_secs(10), "the dashboard to show the socket gone", || async {
        page(3).await.contains("<tr><th>sockets</th><td class=n>0</td></tr>").then_some(())
    })
    .await;
}

/// The request head the origin saw, from its answer: the request line, then each field as
/// `name: value` with the name lowercased, sorted, less those that only frame the exchange.
fn seen_fields(answer: &str) -> (String, Vec<String>) {
    let head = answer.split("origin saw:\n").nth(1).unwrap_or_else(|| panic!("not the origin's answer: {answer}"));
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap().to_lowercase();
    let mut fields: Vec<String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| format!("{}: {}", n.trim().to_lowercase(), v.trim()))
        .filter(|f| !["connection:", "content-length:", "expect:"].iter().any(|p| f.starts_with(p)))
        .collect();
    fields.sort();
    (request_line, fields)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http_paths_forward_the_same_fields_and_log_no_control_characters() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "nina").await;
    let sock = api.connect(&SocketCreate { name: "web".into(), ..Default::default() }).await.unwrap();
    let (n1, n2) = (c.nodes[&1].ip.clone(), c.nodes[&2].ip.clone());
    let out = dir.path().join("session.out");
    let _ssh = ssh_logged(&key, &u.user_name, &n1, sock.tunnels[0].local_port, origin().await, &out);
    answered(&n1, &sock.dnsname, "the URL").await;
    answered(&n2, &sock.dnsname, "the URL through node 2").await;
    let name = &sock.dnsname;

    // The client tries to take the edge's fields away (naming them in Connection) or forge them.
    let forged = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n\
                  X-Forwarded-Host: evil.example\r\nX-Custom: 1\r\nX-Plain: 2\r\n";
    let strip = "Connection: close, X-Forwarded-For, x-forwarded-proto, X-Forwarded-Host, X-Custom\r\n";
    // Each path: plain HTTP/1.1 (the hand-written path), HTTP/1.0 and a request with Expect
    // (hyper's path).
    let paths = [("HTTP/1.1", ""), ("HTTP/1.0", ""), ("HTTP/1.1", "Expect: 100-continue\r\nContent-Length: 0\r\n")];
    // What the service saw of one request through node `via`'s public HTTP port.
    let through = |via: String, head: String| async move {
        let mut s = tokio::net::TcpStream::connect(format!("{via}:8080")).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains(" 200 OK"), "{head:?} through {via}: {answer}");
        seen_fields(&answer)
    };
    let mut seen: Vec<(String, Vec<String>)> = Vec::new();
    for connection in [strip, "Connection: close\r\n"] {
        let mut per_path = Vec::new();
        // Node 1 holds the tunnel; node 2 relays to it.
        for via in [&n1, &n2] {
            for (version, extra) in paths {
                let head =
                    format!("GET /same HTTP/{}\r\nHost: {name}\r\n{connection}{forged}{extra}\r\n", &version[5..]);
                per_path.push(through(via.clone(), head).await);
            }
        }
        // The same fields on every path, relayed or not (an HTTP/1.0 request stays HTTP/1.0 to
        // the service).
        for (i, p) in per_path.iter().enumerate().skip(1) {
            assert!(p.0.starts_with("get /same http/1."), "{p:?}");
            assert_eq!(p.1, per_path[0].1, "path {i} forwards other fields than the HTTP/1.1 path");
        }
        seen.push(per_path.swap_remove(0));
    }
    let field = |fields: &[String], name: &str| -> Vec<String> {
        fields.iter().filter_map(|f| f.strip_prefix(&format!("{name}: "))).map(str::to_string).collect()
    };
    // Named in Connection: the client's own X-Forwarded-* and X-Custom are gone; the edge's are
    // there, once each, and say what the edge saw.
    let (line, named) = &seen[0];
    assert_eq!(line, "get /same http/1.1");
    let xff = field(named, "x-forwarded-for");
    assert!(xff.len() == 1 && xff[0].parse::<std::net::IpAddr>().is_ok(), "{named:?}");
    let peer = xff[0].clone();
    assert_eq!(field(named, "x-forwarded-proto"), ["http"], "{named:?}");
    assert_eq!(field(named, "x-forwarded-host"), [name.as_str()], "{named:?}");
    assert!(field(named, "x-custom").is_empty() && field(named, "x-plain") == ["2"], "{named:?}");
    // Not named: what proxies before said comes first, in order, then the client as the edge
    // saw it; the forged proto and host are replaced.
    let (_, kept) = &seen[1];
    assert_eq!(field(kept, "x-forwarded-for"), [format!("203.0.113.9, 198.51.100.1, {peer}")], "{kept:?}");
    assert_eq!(field(kept, "x-forwarded-proto"), ["http"], "{kept:?}");
    assert_eq!(field(kept, "x-forwarded-host"), [name.as_str()], "{kept:?}");
    assert_eq!(field(kept, "x-custom"), ["1"], "{kept:?}");
    // Over TLS: HTTP/1.1 (the hand-written path) and HTTP/2 (hyper's), both with curl against
    // the cluster CA the node wrote: the same fields again, and the forged ones replaced.
    let ca = c.data_dir(1).join("ca.pem");
    let mut over_tls = Vec::new();
    for version in ["--http1.1", "--http2"] {
        let out = Command::new("curl")
            .args(["-sS", version, "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("{name}:8443:{n1}"), &format!("https://{name}:8443/same")])
            .args(["-H", "X-Forwarded-For: 203.0.113.9", "-H", "X-Forwarded-For: 198.51.100.1"])
            .args(["-H", "X-Forwarded-Proto: http", "-H", "X-Forwarded-Host: evil.example", "-H", "X-Plain: 2"])
            .output()
            .unwrap();
        over_tls.push(seen_fields(&String::from_utf8_lossy(&out.stdout)).1);
    }
    assert_eq!(over_tls[0], over_tls[1], "HTTP/2 forwards other fields than HTTP/1.1");
    let h2 = &over_tls[1];
    assert_eq!(field(h2, "x-forwarded-for"), [format!("203.0.113.9, 198.51.100.1, {peer}")], "{h2:?}");
    assert_eq!(field(h2, "x-forwarded-proto"), ["https"], "{h2:?}");
    assert_eq!(field(h2, "x-forwarded-host"), [format!("{name}:8443")], "the Host the client gave: {h2:?}");

    // A protected socket: the edge checks the credentials and the service never sees them,
    // on either path, relayed or not; every other field as for an open socket.
    let private = api.connect(&protected_http("private")).await.unwrap();
    let _ssh2 = ssh_forward(&key, &u.user_name, &n1, private.tunnels[0].local_port, origin().await);
    let pname = private.dnsname.clone();
    let basic = {
        use base64::Engine;
        format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(b"bob:open sesame"))
    };
    for via in [&n1, &n2] {
        eventually(Duration::from_secs(20), "the protected socket to answer", || {
            let (via, pname) = (via.clone(), pname.clone());
            async move { (get(&via, &pname, Some(("bob", "open sesame"))).await.0 == 200).then_some(()) }
        })
        .await;
    }
    let mut protected_seen = Vec::new();
    for via in [&n1, &n2] {
        for (version, extra) in paths {
            let head = format!(
                "GET /same HTTP/{}\r\nHost: {pname}\r\nConnection: close\r\n{basic}{forged}{extra}\r\n",
                &version[5..]
            );
            protected_seen.push(through(via.clone(), head).await.1);
        }
    }
    for (i, p) in protected_seen.iter().enumerate() {
        assert!(field(p, "authorization").is_empty(), "path {i} passed the credentials on: {p:?}");
        let host_free = |f: &[String]| -> Vec<String> {
            f.iter().filter(|l| !l.starts_with("host: ") && !l.starts_with("x-forwarded-host: ")).cloned().collect()
        };
        assert_eq!(host_free(p), host_free(kept), "path {i} of the protected socket forwards other fields");
    }

    // A path with a terminal escape (CSI, a C1 control, in UTF-8; the parsers refuse C0 bytes
    // in a target): the session log never shows it as it is.
    for version in ["1.1", "1.0"] {
        let mut s = tokio::net::TcpStream::connect(format!("{n1}:8080")).await.unwrap();
        let mut head = b"GET /esc".to_vec();
        head.extend_from_slice("\u{9b}31m".as_bytes());
        head.extend_from_slice(format!(" HTTP/{version}\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes());
        s.write_all(&head).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
    }
    let text = eventually(Duration::from_secs(10), "the requests' log lines", || {
        let out = out.clone();
        async move { std::fs::read_to_string(&out).ok().filter(|t| t.matches(" GET /same 200 ").count() == 14) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&out).unwrap_or(text);
    let bad: Vec<&str> =
        text.lines().filter(|l| l.trim_end_matches('\r').chars().any(|ch| ch.is_control() && ch != '\t')).collect();
    assert!(bad.is_empty(), "log lines with control characters: {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_answers_gets_504_and_a_trickled_body_is_cut() {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let c = TestCluster::builder().nodes(1).arg("--stall-timeout-secs").arg("2").start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "olga").await;
    let sock = api.connect(&SocketCreate { name: "mute".into(), ..Default::default() }).await.unwrap();
    // A service that takes connections and requests and never answers.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    let n1 = c.nodes[&1].ip.clone();
    let out = dir.path().join("session.out");
    let _ssh = ssh_logged(&key, &u.user_name, &n1, sock.tunnels[0].local_port, mute_port, &out);
    eventually(Duration::from_secs(20), "the tunnel", || {
        let id = sock.socket_id.clone();
        let api = api.clone();
        async move { api.socket(&id).await.ok().filter(|s| s.tunnels[0].session.is_some()).map(|_| ()) }
    })
    .await;
    let name = &sock.dnsname;
    // Both paths: plain HTTP/1.1 (the hand-written one) and HTTP/1.0 (hyper's).
    for version in ["1.1", "1.0"] {
        let mut s = tokio::net::TcpStream::connect(format!("{n1}:8080")).await.unwrap();
        s.write_all(format!("GET /wait HTTP/{version}\r\nHost: {name}\r\n\r\n").as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains(" 504 Gateway Timeout"), "HTTP/{version}: {answer}");
        assert!(started.elapsed() >= Duration::from_millis(1500), "HTTP/{version}: {:?}", started.elapsed());
    }
    // A body that stops coming: the connection is ended, not held.
    let mut s = tokio::net::TcpStream::connect(format!("{n1}:8080")).await.unwrap();
    s.write_all(format!("POST /up HTTP/1.1\r\nHost: {name}\r\nContent-Length: 100\r\n\r\n0123456789").as_bytes())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "a trickled body held its connection");
    eventually(Duration::from_secs(10), "the 504s in the session log", || {
        let out = out.clone();
        async move { std::fs::read_to_string(&out).ok().filter(|t| t.matches(" GET /wait 504 ").count() == 2) }
    })
    .await;
}
