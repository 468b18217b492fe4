//! Garbage and silence on every port a node listens on: refused, and nothing changes.

use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

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
