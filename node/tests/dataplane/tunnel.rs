//! `ssh -R` claims a socket's tunnel: strangers and foreign ports refused, any node serves it at
//! once, the address a client dials, newest connection wins, a session limit per node.

use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

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
        let head = format!(
            "GET /named HTTP/{version}\r\nHost: {}\r\nConnection: close, X-Secret, host, Content-Length\r\nX-Secret: 1\r\nKeep-Alive: 300\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n",
            sock.dnsname
        );
        let answer = last_answer(&format!("{n1}:8080"), head.as_bytes()).await.text();
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
        let answer = last_answer(&format!("{n1}:8080"), head.as_bytes()).await.text();
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
    let peers = mysocket_node::net::peers::Peers::new(&c.secret, None).unwrap();
    let stranger = mysocket_node::net::peers::Peers::new("not-the-cluster-secret", None).unwrap();
    let err = mysocket_node::net::relay::connect(&stranger, &holder, open(1)).await.err().expect("stranger refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    // A hello that is no hello gets a clear refusal, and the port goes on serving.
    {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let mut raw = tokio::net::TcpStream::connect(&holder).await.unwrap();
        raw.write_all(mysocket_node::net::relay::MAGIC).await.unwrap();
        raw.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
        let mut head = [0u8; 3];
        raw.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], tonic::Code::InvalidArgument as u8, "an oversized hello part");
    }
    let err = mysocket_node::net::relay::connect(&peers, &holder, open(0)).await.err().expect("stale epoch refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    // The current epoch is accepted, and the relay reaches the service.
    let (mut relay, _) =
        mysocket_node::net::relay::connect(&peers, &holder, open(1)).await.expect("current epoch accepted");
    use tokio::io::AsyncWriteExt;
    relay.write_all(format!("GET /fenced HTTP/1.1\r\nHost: {}\r\n\r\n", sock.dnsname).as_bytes()).await.unwrap();
    relay.shutdown().await.unwrap(); // the origin answers, sees the end of its input and closes
    let answer = read_last_http_answer(&mut relay, "GET").await.unwrap().text();
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
