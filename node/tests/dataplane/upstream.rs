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

/// The Python with grpcio that scripts/test.sh installs (MYSOCKET_TEST_PYTHON).
fn python() -> String {
    let p =
        std::env::var("MYSOCKET_TEST_PYTHON").unwrap_or_else(|_| "/var/tmp/mysocket-browser-venv/bin/python".into());
    assert!(std::path::Path::new(&p).exists(), "{p} is missing: scripts/test.sh makes it (grpcio from PyPI)");
    p
}

const GRPC_ECHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dataplane/py/grpc_echo.py");

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A gRPC service (grpcio, plain HTTP/2) behind an http socket with `upstream_protocol: h2c`,
/// its tunnel on node 1: a grpcio client calls it through node 1 (same node) and node 2
/// (relayed), over the public HTTP port (h2c with prior knowledge) and the HTTPS port (ALPN
/// h2, the cluster CA): unary and bidirectional streaming calls answer, in order, with their
/// trailers and status codes intact. The same service behind an http1 socket does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_an_h2c_socket_same_node_and_relayed() {
    let c = TestCluster::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let (key, u, api) = ssh_user(&c, dir.path(), 1, "gia").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _service = Child(
        std::process::Command::new(python())
            .args([GRPC_ECHO, "serve", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let h2c = SocketCreate { name: "grpc".into(), upstream_protocol: Some("h2c".into()), ..Default::default() };
    let s = api.connect(&h2c).await.unwrap();
    assert_eq!(s.upstream_protocol.as_deref(), Some("h2c"));
    let _t = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, s.tunnels[0].local_port, port);
    let ca = reqwest::get(format!("{}/cluster/ca.pem", c.nodes[&1].api_url())).await.unwrap().text().await.unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let call = |target: String, tls: bool| {
        let mut cmd = std::process::Command::new(python());
        cmd.args([GRPC_ECHO, "call", &target, &s.dnsname]);
        if tls {
            cmd.arg(&ca_file);
        }
        let out = cmd.output().unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for id in [1u64, 2] {
        let ip = c.nodes[&id].ip.clone();
        for (port, tls) in [(8080, false), (8443, true)] {
            let what = format!("gRPC through node {id} port {port}");
            let out = eventually(Duration::from_secs(20), &what, || {
                let (out, _) = call(format!("{ip}:{port}"), tls);
                async move { out.contains("\"unary\"").then_some(out) }
            })
            .await;
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(v["unary"], "said:hello", "{what}: {v}");
            assert_eq!(v["unary_trailers"]["x-echo-trailer"], "kept", "{what}: {v}");
            assert_eq!(v["unary_code"], "StatusCode.OK", "{what}: {v}");
            assert_eq!(v["stream"], serde_json::json!(["0:a", "1:b", "2:c"]), "{what}: {v}");
            assert_eq!(v["stream_trailers"]["x-echo-count"], "done", "{what}: {v}");
            assert_eq!(v["missing"], "StatusCode.UNIMPLEMENTED", "{what}: the status is a trailer: {v}");
        }
    }
    // The same service behind an HTTP/1.1 socket: no call gets through.
    let h1 = api.connect(&SocketCreate { name: "h1".into(), ..Default::default() }).await.unwrap();
    let _t1 = ssh_forward(&key, &u.user_name, &c.nodes[&1].ip, h1.tunnels[0].local_port, port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cmd = std::process::Command::new(python());
    cmd.args([GRPC_ECHO, "call", &format!("{}:8080", c.nodes[&1].ip), &h1.dnsname]);
    let out = cmd.output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("said:hello"), "an http1 socket passed gRPC");
    // h2c is refused on a tcp socket, and an unknown protocol.
    let e = api
        .connect(&SocketCreate {
            name: "t".into(),
            socket_type: Some("tcp".into()),
            upstream_protocol: Some("h2c".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(422), "{e}");
    let e = api
        .connect(&SocketCreate { name: "w".into(), upstream_protocol: Some("h3".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(400), "{e}");
}
