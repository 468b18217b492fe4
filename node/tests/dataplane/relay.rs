//! Nodes relay to the node that holds a tunnel: over mutual TLS, with whole bodies and upgrades,
//! byte for byte, reusing idle upstream connections.

use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

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
    let plain = mysocket_node::net::peers::Peers::new(&c.secret, None).unwrap();
    let open = mysocket_api::internal::RelayOpen {
        socket_id: sock.socket_id.clone(),
        tunnel_id: sock.tunnels[0].tunnel_id.clone(),
        epoch: 1,
        client_addr: "127.0.0.1:1".into(),
        log_connection: false,
    };
    assert!(
        mysocket_node::net::relay::connect(&plain, &c.node_raft_addr(1), open).await.is_err(),
        "a relay without TLS was accepted by a TLS internal port"
    );
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
    use tokio::io::AsyncReadExt;
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
    let head = read_http_answer(&mut s, "GET").await.unwrap().text();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"hello over websocket").await.unwrap();
    let mut echoed = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echoed)).await.unwrap().unwrap();
    let echoed = String::from_utf8_lossy(&echoed);
    assert!(echoed.contains("hello over websocket"), "{echoed}");
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
