//! The public HTTP path: every HTTP/1 framing across kept-alive connections, the fields both
//! HTTP paths forward, and services that never answer.

use std::process::Command;
use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;

use crate::support::*;

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
            let method = request.split(' ').next().unwrap();
            let answer = read_http_answer(&mut s, method).await.unwrap().text();
            assert!(answer.ends_with(ends), "node {id}, {request:?} got {answer:?}");
            if request.starts_with("GET /103") {
                assert!(answer.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{answer:?}");
            }
        }

        // Two requests in one write (pipelined): two answers, in order.
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.unwrap();
        s.write_all((req("GET", "/chunked", "") + &req("GET", "/len", "")).as_bytes()).await.unwrap();
        let mut answer = read_http_answer(&mut s, "GET").await.unwrap().text();
        answer += &read_http_answer(&mut s, "GET").await.unwrap().text();
        let chunked_at = answer.find(" world\r\n0\r\n").expect("the chunked answer");
        assert!(answer[chunked_at..].contains("content-length: 5\r\n\r\nhello"), "{answer:?}");

        // A head that comes a few bytes at a time (the end of the head split too).
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.unwrap();
        let whole = req("GET", "/len", "");
        for piece in [&whole[..5], &whole[5..20], &whole[20..whole.len() - 1], &whole[whole.len() - 1..]] {
            s.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let answer = read_http_answer(&mut s, "GET").await.unwrap().text();
        assert!(answer.ends_with("\r\n\r\nhello"), "{answer:?}");

        // A body that ends with the stream ends the public connection too.
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await.unwrap();
        s.write_all(req("GET", "/eof", "").as_bytes()).await.unwrap();
        let all = read_http_answer(&mut s, "GET").await.unwrap().text();
        assert!(all.ends_with("\r\n\r\nuntil the end"), "{all:?}");

        // A client that asks to close is told so, and the connection closes after the answer.
        let all =
            last_answer(&format!("{ip}:8080"), req("GET", "/len", "connection: close\r\n").as_bytes()).await.text();
        assert!(all.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{all:?}");
        assert!(all.ends_with("\r\n\r\nhello"), "{all:?}");
    }
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
        let answer = last_answer(&format!("{via}:8080"), head.as_bytes()).await.text();
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
        let mut head = b"GET /esc".to_vec();
        head.extend_from_slice("\u{9b}31m".as_bytes());
        head.extend_from_slice(format!(" HTTP/{version}\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes());
        last_answer(&format!("{n1}:8080"), &head).await;
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
        let answer = tokio::time::timeout(Duration::from_secs(20), read_last_http_answer(&mut s, "GET"));
        let answer = answer.await.unwrap().unwrap().text();
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
