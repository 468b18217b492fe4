//! How visitors' connections reach the service: a PROXY protocol header (v1 and v2) read by
//! HAProxy in front of the service, and gRPC (HTTP/2 without TLS to the service) with Python's
//! grpcio on both ends — each same-node and relayed.

use std::time::Duration;

use mysocket_api::SocketCreate;
use mysocket_testkit::*;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// HAProxy taking PROXY protocol headers (v1 or v2, `accept-proxy`) on a port of its own and
/// passing each request to `origin` with what it learned from the header as fields.
struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy(dir: &std::path::Path, origin: u16) -> (Haproxy, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = format!(
        "global\n  log stderr local0\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend visitors\n  bind 127.0.0.1:{port} accept-proxy\n\
         \x20 http-request set-header X-Proxied-Src %[src]:%[src_port]\n\
         \x20 http-request set-header X-Proxied-Dst %[dst]:%[dst_port]\n\
         \x20 default_backend service\n\
         backend service\n  server origin 127.0.0.1:{origin}\n"
    );
    let file = dir.join(format!("haproxy-{port}.cfg"));
    std::fs::write(&file, cfg).unwrap();
    let bin = if std::path::Path::new("/usr/sbin/haproxy").exists() { "/usr/sbin/haproxy" } else { "haproxy" };
    let child = std::process::Command::new(bin)
        .args(["-db", "-f"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy (scripts/test.sh installs it)");
    (Haproxy(child), port)
}

/// A request through `ip:port` from the visitor address `from`; the answer's text.
async fn from_address(from: &str, ip: &str, port: u16) -> String {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let Ok(mut c) = s.connect(format!("{ip}:{port}").parse().unwrap()).await else { return String::new() };
    let local = c.local_addr().unwrap();
    let req = format!("GET /proxied HTTP/1.1\r\nHost: x\r\nX-Visitor: {local}\r\nConnection: close\r\n\r\n");
    if c.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A tcp socket with `proxy_protocol` v1 and one with v2, their tunnels on node 1, in front of
/// HAProxy: the service sees each visitor's own address and port, and the public address it
/// dialled, through node 1 (same node) and nodes 2 and 3 (relayed). Without the option the
/// service gets the visitor's bytes untouched (HAProxy refuses a connection without a header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_carries_the_visitors_address_same_node_and_relayed() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "pat").await;
    let (_haproxy, hport) = haproxy(dir.path(), origin().await);
    let mut tunnels = Vec::new();
    for version in ["v1", "v2"] {
        let want = SocketCreate {
            name: format!("proxy-{version}"),
            socket_type: Some("tcp".into()),
            proxy_protocol: Some(version.into()),
            ..Default::default()
        };
        let s = api.connect(&want).await.unwrap();
        assert_eq!(s.proxy_protocol.as_deref(), Some(version));
        tunnels.push(ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, s.tunnels[0].local_port, hport));
        let port = s.socket_tcp_ports[0];
        for id in [1u64, 2, 3] {
            let ip = c.nodes[&id].ip.clone();
            let visitor = format!("127.0.0.{}", 70 + id);
            let what = format!("{version} through node {id}");
            let got = eventually(Duration::from_secs(20), &what, || {
                let (visitor, ip) = (visitor.clone(), ip.clone());
                async move {
                    let r = from_address(&visitor, &ip, port).await;
                    r.contains("origin saw:").then_some(r)
                }
            })
            .await
            .to_ascii_lowercase();
            let field = |name: &str| {
                got.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).map(str::trim).unwrap_or("").to_string()
            };
            assert_eq!(field("x-proxied-src"), field("x-visitor"), "{what}: the visitor's address and port\n{got}");
            assert!(field("x-proxied-src").starts_with(&format!("{visitor}:")), "{what}\n{got}");
            assert_eq!(field("x-proxied-dst"), format!("{ip}:{port}"), "{what}: the address dialled\n{got}");
        }
    }
    // Turned off: HAProxy, which requires a header, gets none and closes.
    let plain = api
        .connect(&SocketCreate { name: "plain".into(), socket_type: Some("tcp".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(plain.proxy_protocol, None);
    tunnels.push(ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, plain.tunnels[0].local_port, hport));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = from_address("127.0.0.71", &c.nodes[&1].ip, plain.socket_tcp_ports[0]).await;
    assert!(!r.contains("origin saw:"), "a socket without the option sent a header: {r}");
    // Refused on an http socket (X-Forwarded-For carries the address there), and a bad value.
    let e = api
        .connect(&SocketCreate { name: "web".into(), proxy_protocol: Some("v1".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(422), "{e}");
    assert!(e.to_string().contains("X-Forwarded-For"), "{e}");
    let e = api
        .connect(&SocketCreate {
            name: "t".into(),
            socket_type: Some("tcp".into()),
            proxy_protocol: Some("v3".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(400), "{e}");
}
