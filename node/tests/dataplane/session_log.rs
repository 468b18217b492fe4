//! The client's SSH session: a log line for every request and connection, whichever node took
//! it; a client that stops reading; at most four session channels.

use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

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
            let head = format!("GET {path} HTTP/{version}\r\nHost: {}\r\n\r\n", sock.dnsname);
            let answer = last_answer(&format!("{}:8080", c.nodes[&n].ip), head.as_bytes()).await.text();
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
        let answer = read_http_answer(&mut s, "GET").await.unwrap().text();
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        eventually(Duration::from_secs(10), &format!("the line of {path}, the connection still open"), || {
            logged(path.to_string())
        })
        .await;
    }
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
        served(&format!("tcp through node {id}"), (&ip, port), None, &tcp.dnsname, |r| r.contains("origin saw:")).await;
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
